"""Decoding methods beyond plain greedy `generate`, with images, for every model type: assisted and prompt-lookup
decoding, continuing from a returned cache, beam search, dict outputs, the static cache and compiled decoding."""

from __future__ import annotations

import pytest
import torch
from transformers import CompileConfig

from tests.helpers import VARIANT_IDS, VARIANTS, chat, sample_image
from visual_token_compression.compat import CACHE_NAME
from visual_token_compression.tools.tiny import build_tiny

GREEDY = {"do_sample": False, "max_new_tokens": 8}


@pytest.fixture(scope="module", params=VARIANTS, ids=VARIANT_IDS)
def variant(request):
    """(name, config kwargs, tiny model, processor, one prompt with an image, its plain greedy output)."""
    name, kwargs = request.param
    model, processor = build_tiny(name, **kwargs)
    inputs = processor(images=sample_image(), text=chat(processor, "What is in the picture?"), return_tensors="pt")
    return name, kwargs, model, processor, inputs, model.generate(**inputs, **GREEDY)


def left_padded_batch(processor):
    processor.tokenizer.padding_side = "left"
    images = [sample_image(1), sample_image(2, size=(24, 50))]
    prompts = [chat(processor, "Describe it."), chat(processor, "What colour is the object on the far left side?")]
    return images, prompts, processor(images=images, text=prompts, return_tensors="pt")


def test_assisted_and_prompt_lookup_decoding_equal_greedy(variant):
    """The assistant's own prefill runs as a later iteration of `generate` and still needs the images; prompt lookup
    drafts copy placeholders from the prompt, which must not be taken for image slots."""
    name, kwargs, model, _, inputs, greedy = variant
    other_assistant, _ = build_tiny(name, seed=1, **kwargs)
    methods = {
        "other assistant": {"assistant_model": other_assistant},
        "self assistant": {"assistant_model": model},
        "prompt lookup": {"prompt_lookup_num_tokens": 3},
    }
    for method, method_kwargs in methods.items():
        if name == "voco_llama":
            with pytest.raises(ValueError, match="assisted or prompt-lookup decoding.*cannot be cropped"):
                model.generate(**inputs, **method_kwargs, **GREEDY)
        else:
            assert torch.equal(model.generate(**inputs, **method_kwargs, **GREEDY), greedy), method


def test_continuing_from_a_returned_cache_equals_one_pass(variant):
    """The continuation's mask is the user's own, all ones: SeTok's unfilled image slots must stay masked anyway."""
    _, _, model, _, inputs, _ = variant
    dict_greedy = {**GREEDY, "max_new_tokens": 3, "return_dict_in_generate": True, "output_scores": True}
    first = model.generate(**inputs, **dict_greedy)
    input_ids = torch.cat([first.sequences, torch.tensor([[70, 71]])], dim=1)
    attention_mask = torch.ones_like(input_ids)
    continued = model.generate(
        input_ids=input_ids, attention_mask=attention_mask, **{CACHE_NAME: first[CACHE_NAME]}, **dict_greedy
    )
    one_pass = model.generate(**{**inputs, "input_ids": input_ids, "attention_mask": attention_mask}, **dict_greedy)
    assert torch.equal(continued.sequences, one_pass.sequences)
    for continued_scores, one_pass_scores in zip(continued.scores, one_pass.scores, strict=True):
        torch.testing.assert_close(continued_scores, one_pass_scores, atol=1e-5, rtol=0)


def test_generation_from_inputs_embeds_equals_from_input_ids(variant):
    """`generate` then holds only the new tokens in `input_ids` and drops the all-ones mask: SeTok must still mask
    its unfilled slots over the whole sequence, also with a static cache."""
    name, _, model, _, inputs, greedy = variant
    embeds = {"inputs_embeds": model.get_input_embeddings()(inputs["input_ids"])}
    rest = {key: value for key, value in inputs.items() if key != "input_ids"}
    for cache_implementation in [None] if name == "voco_llama" else [None, "static"]:
        generated = model.generate(**embeds, **rest, cache_implementation=cache_implementation, **GREEDY)
        assert torch.equal(generated, greedy[:, inputs["input_ids"].shape[1] :]), cache_implementation


def test_beam_search_batch_equals_one_by_one(variant):
    _, _, model, processor, _, _ = variant
    images, prompts, batch = left_padded_batch(processor)
    beams = {**GREEDY, "max_new_tokens": 5, "num_beams": 2}
    batched = model.generate(**batch, **beams)
    for row, (image, prompt) in enumerate(zip(images, prompts, strict=True)):
        alone = model.generate(**processor(images=image, text=prompt, return_tensors="pt"), **beams)
        assert batched[row, -5:].tolist() == alone[0, -5:].tolist()


def test_dict_outputs_hold_the_greedy_tokens_their_scores_and_the_cache(variant):
    _, _, model, _, inputs, greedy = variant
    outputs = model.generate(**inputs, **GREEDY, return_dict_in_generate=True, output_scores=True)
    assert torch.equal(outputs.sequences, greedy)
    new_tokens = outputs.sequences[:, inputs["input_ids"].shape[1] :]
    assert len(outputs.scores) == new_tokens.shape[1]
    assert torch.equal(torch.stack(outputs.scores, dim=1).argmax(-1), new_tokens)
    assert outputs[CACHE_NAME].get_seq_length() == outputs.sequences.shape[1] - 1


def test_static_cache_equals_dynamic_and_decoding_compiles_fullgraph(variant):
    """Batched and left-padded, so that the static cache's 4-D masks carry padding (and SeTok's unfilled slots).
    The backend runs the traced graph as it is, which keeps the test fast: `fullgraph=True` fails at tracing already
    (inductor's code generation was checked by hand: same tokens)."""
    name, _, model, processor, _, _ = variant
    _, _, batch = left_padded_batch(processor)
    if name == "voco_llama":
        with pytest.raises(ValueError, match="cache_implementation='static'"):
            model.generate(**batch, cache_implementation="static", **GREEDY)
        return
    graphs = []
    compile_config = compile_config_counting(graphs)
    dynamic = model.generate(**batch, **GREEDY)
    assert torch.equal(model.generate(**batch, cache_implementation="static", **GREEDY), dynamic)
    compiled = model.generate(**batch, cache_implementation="static", compile_config=compile_config, **GREEDY)
    assert graphs, "generate did not compile the decoding step"
    assert torch.equal(compiled, dynamic)
    assert type(model)._can_compile_fullgraph


def test_beams_and_return_sequences_expand_each_samples_views(variant):
    """Image inputs hold one row per view (several per image for TokenPacker-HD, none per sample): expanding for
    beams and `num_return_sequences` must repeat each sample's block of views, not each view."""
    _, _, model, processor, _, _ = variant
    processor.tokenizer.padding_side = "left"
    images = [sample_image(1), sample_image(2, size=(24, 50))]
    prompts = [chat(processor, "Describe it."), chat(processor, "What colour is the object on the far left side?")]
    batch = processor(images=images, text=prompts, return_tensors="pt")
    alone = [
        processor(images=image, text=prompt, return_tensors="pt")
        for image, prompt in zip(images, prompts, strict=True)
    ]
    image_names = [name for name in ("pixel_values", *model.model_class.compressor_input_names) if name in batch]

    _, expanded = model._expand_inputs_for_generation(expand_size=2, **batch)  # pixel_values: one row per view
    views = [inputs["pixel_values"].shape[0] for inputs in alone]
    starts = [sum(views[:row]) for row in range(len(views))]
    index = [
        start + view for start, count in zip(starts, views, strict=True) for _ in range(2) for view in range(count)
    ]
    for name in image_names:  # the batch's own rows, as the query inputs are padded over the batch
        assert torch.equal(expanded[name], batch[name][index]), name
    pixel_blocks = [inputs["pixel_values"] for inputs in alone for _ in range(2)]
    torch.testing.assert_close(expanded["pixel_values"], torch.cat(pixel_blocks), rtol=0, atol=0)

    settings = {"num_beams": 2, "num_return_sequences": 2, "do_sample": False, "max_new_tokens": 4}
    dict_settings = {**settings, "return_dict_in_generate": True, "output_scores": True}
    batched = model.generate(**batch, **dict_settings)
    for row, inputs in enumerate(alone):
        single = model.generate(**inputs, **dict_settings)
        assert batched.sequences[2 * row : 2 * row + 2, -4:].tolist() == single.sequences[:, -4:].tolist()
        # A sample alone is expanded too, so its beams must also read its views in order: the first step's scores
        # of every copy equal those of one plain forward pass (the tiny models' image features are small, the
        # tokens alone barely show a wrong view).
        with torch.no_grad():
            first_scores = model(**inputs).logits[:, -1].log_softmax(-1)
        for copy in range(2):
            torch.testing.assert_close(batched.scores[0][2 * row + copy], first_scores[0], atol=1e-5, rtol=0)
            torch.testing.assert_close(single.scores[0][copy], first_scores[0], atol=1e-5, rtol=0)


def compile_config_counting(graphs: list) -> CompileConfig:
    """`fullgraph=True` compilation whose backend records each traced graph and runs it as it is (fast on CPU)."""

    def count_graphs(graph_module, example_inputs):
        graphs.append(graph_module)
        return graph_module.forward

    compile_config = CompileConfig(fullgraph=True, backend=count_graphs, mode=None)
    compile_config._compile_all_devices = True  # transformers' switch to compile on CPU too, as its own tests do
    return compile_config


DECODING = {
    "greedy": {},
    "beam search": {"num_beams": 2},
    "prompt lookup": {"prompt_lookup_num_tokens": 3},
    "compiled static cache": {"cache_implementation": "static"},
}


@pytest.mark.parametrize("method", sorted(DECODING))
def test_generate_returns_every_steps_attentions_and_hidden_states(variant, method):
    """`generate` encodes the images before the prefill and takes away from the language model every argument that
    `get_image_features` names; if that were `output_attentions` / `output_hidden_states`, every step's entries
    would be None (and prompt lookup's loop would crash on them). They must be what a plain forward returns."""
    name, _, model, _, inputs, _ = variant
    settings = dict(DECODING[method])
    graphs = []
    if method == "compiled static cache":
        settings["compile_config"] = compile_config_counting(graphs)
    flags = {"output_attentions": True, "output_hidden_states": True, "return_dict_in_generate": True}
    if name == "voco_llama" and method in ("prompt lookup", "compiled static cache"):
        with pytest.raises(ValueError, match="assisted or prompt-lookup decoding|cache_implementation='static'"):
            model.generate(**inputs, **GREEDY, **settings, **flags)
        return
    model.set_attn_implementation("eager")  # the only backend that returns attention weights
    try:
        outputs = model.generate(**inputs, **GREEDY, **settings, **flags)
        with torch.no_grad():
            forward = model(**inputs, output_attentions=True, output_hidden_states=True)
    finally:
        model.set_attn_implementation("sdpa")
    assert bool(graphs) == (method == "compiled static cache")
    text_config = model.config.text_config
    assert len(outputs.attentions) == len(outputs.hidden_states) >= 1
    for step_attentions, step_hidden in zip(outputs.attentions, outputs.hidden_states, strict=True):
        assert len(step_attentions) == text_config.num_hidden_layers
        assert len(step_hidden) == text_config.num_hidden_layers + 1
        assert all(isinstance(tensor, torch.Tensor) for tensor in (*step_attentions, *step_hidden))
    # The prefill's entries are the forward pass's, over the whole prompt (its first row: beams repeat the sample).
    prompt_length = inputs["input_ids"].shape[1]
    first_attention, first_hidden = outputs.attentions[0][-1], outputs.hidden_states[0][-1]
    assert first_hidden.shape[1] == prompt_length
    torch.testing.assert_close(first_hidden[:1], forward.hidden_states[-1], atol=1e-5, rtol=0)
    # A static cache's attention rows span the whole cache, the forward's only the prompt.
    torch.testing.assert_close(first_attention[:1, ..., :prompt_length], forward.attentions[-1], atol=1e-5, rtol=0)
