"""QueCC behaviour: config geometry, the query path (processor and model), batching and generation."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from visual_token_compression import QueCCConfig, QueCCProcessor
from visual_token_compression.tools.tiny import build_tiny, tiny_text_config, tiny_vision_config
from visual_token_compression.tools.training import CompressedVLMDataCollator

CHATML = (
    "{%- for message in messages -%}{{- '<|im_start|>' + message['role'] + '\\n' -}}"
    "{%- if message['content'] is string -%}{{- message['content'] -}}{%- else -%}"
    "{%- for item in message['content'] -%}{%- if item['type'] == 'image' -%}{{- '<image>' -}}"
    "{%- else -%}{{- item['text'] -}}{%- endif -%}{%- endfor -%}{%- endif -%}{{- '<|im_end|>\\n' -}}"
    "{%- endfor -%}{%- if add_generation_prompt -%}{{- '<|im_start|>assistant\\n' -}}{%- endif -%}"
)


@pytest.fixture(scope="module")
def tiny():
    """The tiny model with compressor weights at unit scale: at the 0.02 init the attention is nearly uniform, so
    the question would barely move the visual tokens and query mix-ups could go unnoticed."""
    model, processor = build_tiny("quecc")
    compressor = model.model.compressor
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for weight in (param for param in compressor.parameters() if param.dim() > 1):
            fan_in = weight[0].numel()
            weight.copy_(torch.randn(weight.shape, generator=generator) * 2 / fan_in**0.5)
    return model, processor


def image(colour) -> Image.Image:
    return Image.new("RGB", (40, 30), colour)


def noise_image(seed: int) -> Image.Image:
    """Patches that differ, so that where a query attends changes the result (a flat image hides it)."""
    pixels = np.random.default_rng(seed).integers(0, 256, size=(30, 40, 3), dtype=np.uint8)
    return Image.fromarray(pixels)


def prompt(processor, question: str, images: int = 1) -> str:
    content = [{"type": "image"}] * images + [{"type": "text", "text": question}]
    return processor.apply_chat_template([{"role": "user", "content": content}], add_generation_prompt=True)


@pytest.mark.parametrize(("stride", "tokens"), [(24, 1), (12, 4), (6, 16), (4, 36), (3, 64), (2, 144), (1, 576)])
def test_token_counts_on_the_released_grid(stride, tokens):
    config = QueCCConfig(text_config=tiny_text_config(), kernel_size=stride, stride=stride)
    assert config.image_seq_length == tokens
    assert config.attention_window == stride


def test_released_defaults():
    config = QueCCConfig()
    assert (config.kernel_size, config.stride, config.compressor_num_heads) == (4, 4, 8)
    assert config.image_seq_length == 36 and config.multi_level_feature_layers == [12, 16, 22, 23]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"kernel_size": None}, "kernel_size must be a positive integer"),
        ({"stride": 0}, "stride must be a positive integer"),
        ({"kernel_size": 3, "stride": 2}, "does not divide"),
        ({"kernel_size": 9, "stride": 9}, "larger than"),
        ({"compressor_num_heads": 5}, "must divide the vision width 32"),
    ],
)
def test_invalid_settings_are_config_errors(kwargs, message):
    with pytest.raises(ValueError, match=message):
        QueCCConfig(vision_config=tiny_vision_config(), text_config=tiny_text_config(), **kwargs)


def test_widths_come_from_the_sub_configs(tiny):
    model, _ = tiny
    compressor = model.model.compressor
    assert compressor.text_proj.in_features == model.config.text_config.hidden_size
    assert compressor.key_mlp.fc1.in_features == 32 * len(model.config.multi_level_feature_layers)
    assert compressor.out_mlp.fc2.out_features == model.config.text_config.hidden_size


def test_processor_returns_one_query_per_image(tiny):
    _, processor = tiny
    texts = [prompt(processor, "What colour?"), prompt(processor, "Compare them.", images=2)]
    batch = processor(images=[[image("red")], [image("blue"), image("green")]], text=texts, return_tensors="pt")
    queries = processor.tokenizer.batch_decode(batch["query_input_ids"], skip_special_tokens=True)
    assert queries == ["What colour?", "Compare them.", "Compare them."]
    assert (
        batch["query_input_ids"][:, 0].eq(processor.tokenizer.bos_token_id).all()
        or processor.tokenizer.padding_side == "left"
    )
    assert batch["query_attention_mask"].shape == batch["query_input_ids"].shape
    assert "query_input_ids" not in processor(text="no image here")


def test_processor_reads_the_turn_end_from_any_chat_template(tiny):
    _, processor = tiny
    chatml = QueCCProcessor(processor.image_processor, processor.tokenizer, chat_template=CHATML, image_seq_length=4)
    assert chatml.turn_end_marker() == "<|im_end|>\n<|im_start|>assistant"
    conversation = [
        {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Where is it?"}]},
        {"role": "assistant", "content": "In a park."},
        {"role": "user", "content": "Is it sunny?"},
    ]
    text = chatml.apply_chat_template(conversation, add_generation_prompt=True)
    assert chatml.extract_queries([text]) == ["Where is it?"]  # the first user turn after the image, no answers
    assert processor.extract_queries(["<image>\nDescribe the image"]) == ["Describe the image"]


def test_processor_explicit_queries_and_count_errors(tiny):
    _, processor = tiny
    batch = processor(images=image("red"), text="<image>\nanything", queries=["my question"], return_tensors="pt")
    assert processor.tokenizer.decode(batch["query_input_ids"][0], skip_special_tokens=True) == "my question"
    with pytest.raises(ValueError, match="2 queries for 1 images"):
        processor(images=image("red"), text="<image>", queries=["a", "b"])


def test_apply_chat_template_tokenized_returns_query_inputs(tiny):
    _, processor = tiny
    messages = [
        {"role": "user", "content": [{"type": "image", "image": image("red")}, {"type": "text", "text": "Hi?"}]}
    ]
    batch = processor.apply_chat_template(
        messages, add_generation_prompt=True, tokenize=True, return_dict=True, return_tensors="pt"
    )
    assert processor.tokenizer.decode(batch["query_input_ids"][0], skip_special_tokens=True) == "Hi?"


def test_training_batches_take_the_query_from_the_prompt_never_the_caption(tiny):
    """`plain` (the stage-1 default of `vtc train` and the demo) has no turn marker after the image: reading the query
    from the whole text gave the compressor the caption it must predict. The original's `plain` query is empty."""
    _, processor = tiny
    tokenizer = processor.tokenizer
    captions = ["a red square", "two blue circles"]
    records = [
        {
            "image": noise_image(seed),
            "conversations": [
                {"from": "human", "value": "<image>\nDescribe the image briefly."},
                {"from": "gpt", "value": caption},
            ],
        }
        for seed, caption in enumerate(captions)
    ]
    stage_1 = CompressedVLMDataCollator(processor, template="plain")(records)
    for row, caption in enumerate(captions):
        query = stage_1["query_input_ids"][row][stage_1["query_attention_mask"][row].bool()].tolist()
        assert query == [tokenizer.bos_token_id], tokenizer.decode(query)
        assert not set(query) & set(tokenizer(caption, add_special_tokens=False)["input_ids"])

    stage_2 = CompressedVLMDataCollator(processor, template="vicuna_v1")(records)
    queries = tokenizer.batch_decode(stage_2["query_input_ids"], skip_special_tokens=True)
    assert queries == ["Describe the image briefly."] * 2


def test_query_vector_is_the_final_normed_state_of_the_last_real_token(tiny):
    model, processor = tiny
    tokenizer = processor.tokenizer
    right = tokenizer(["a", "a longer question"], padding=True, padding_side="right", return_tensors="pt")
    left = tokenizer(["a", "a longer question"], padding=True, padding_side="left", return_tensors="pt")
    embeds_right = model.model.get_query_embeds(right["input_ids"], right["attention_mask"])
    embeds_left = model.model.get_query_embeds(left["input_ids"], left["attention_mask"])
    torch.testing.assert_close(embeds_left, embeds_right, atol=1e-5, rtol=1e-5)
    for row, text in enumerate(["a", "a longer question"]):
        ids = tokenizer(text, return_tensors="pt")["input_ids"]
        with torch.no_grad():
            expected = model.model.language_model(input_ids=ids).last_hidden_state[0, -1]
        torch.testing.assert_close(embeds_right[row], expected, atol=1e-5, rtol=1e-5)


def test_empty_questions_give_defined_vectors(tiny):
    model, processor = tiny
    with torch.no_grad():
        bos = model.model.language_model(
            input_ids=torch.tensor([[processor.tokenizer.bos_token_id]])
        ).last_hidden_state
    batch = processor(images=image("red"), text="<image>", queries=[""], return_tensors="pt")
    torch.testing.assert_close(
        model.model.get_query_embeds(batch["query_input_ids"], batch["query_attention_mask"])[0], bos[0, 0]
    )
    # A row without any token (a tokenizer without BOS) gets the zero vector, not a crash or NaN.
    embeds = model.model.get_query_embeds(torch.tensor([[0, 5], [0, 0]]), torch.tensor([[0, 1], [0, 0]]))
    assert torch.equal(embeds[1], torch.zeros_like(embeds[1])) and embeds[0].abs().sum() > 0


def test_the_question_changes_the_visual_tokens_without_gradient_into_the_llm(tiny):
    model, processor = tiny
    pixels = processor(images=noise_image(0), text="<image>", return_tensors="pt")["pixel_values"]
    queries = processor.tokenizer(["What colour?", "How many?"], padding=True, return_tensors="pt")
    features = model.model.get_compressed_image_features(
        pixels.expand(2, -1, -1, -1),
        query_input_ids=queries["input_ids"],
        query_attention_mask=queries["attention_mask"],
    )
    assert (features[0] - features[1]).abs().max() > 0.05 * features.abs().max()
    with torch.enable_grad():
        model.train()
        try:
            features = model.model.get_compressed_image_features(
                pixels, query_input_ids=queries["input_ids"][:1], query_attention_mask=queries["attention_mask"][:1]
            )
            features.sum().backward()
        finally:
            model.eval()
    assert model.model.compressor.text_proj.weight.grad is not None
    assert all(param.grad is None for param in model.model.language_model.parameters())
    model.zero_grad(set_to_none=True)


def test_missing_or_mismatched_queries_are_errors(tiny):
    model, processor = tiny
    batch = processor(images=image("red"), text="<image>\nQ", return_tensors="pt")
    with pytest.raises(ValueError, match="pass query_input_ids"):
        model(input_ids=batch["input_ids"], pixel_values=batch["pixel_values"])
    with pytest.raises(ValueError, match="2 query_input_ids rows for 1 images"):
        model(**{**batch, "query_input_ids": batch["query_input_ids"].repeat(2, 1)})


def test_batched_generation_equals_one_by_one(tiny):
    model, processor = tiny
    samples = [
        ([noise_image(1)], prompt(processor, "What is the colour of this?")),
        ([noise_image(2), noise_image(3)], prompt(processor, "Which differs?", images=2)),
        ([noise_image(1)], prompt(processor, "Hi")),
    ]
    settings = {"max_new_tokens": 6, "do_sample": False}
    singles = []
    for images, text in samples:
        out = model.generate(**processor(images=images, text=text, return_tensors="pt"), **settings)
        singles.append(processor.tokenizer.decode(out[0], skip_special_tokens=True))
    batch = processor(
        images=[images for images, _ in samples],
        text=[t for _, t in samples],
        padding_side="left",
        return_tensors="pt",
    )
    outputs = model.generate(**batch, **settings)
    assert processor.tokenizer.batch_decode(outputs, skip_special_tokens=True) == singles

    # The check can fail: handing the images each other's questions changes the next-token logits.
    order = torch.tensor([3, 1, 2, 0])
    swapped = {**batch, "query_input_ids": batch["query_input_ids"][order]}
    swapped["query_attention_mask"] = batch["query_attention_mask"][order]
    with torch.no_grad():
        logits, swapped_logits = model(**batch).logits[:, -1], model(**swapped).logits[:, -1]
    assert (logits - swapped_logits).abs().max() > 1e-3 * logits.abs().max()


def test_processor_round_trip(tiny, tmp_path):
    _, processor = tiny
    processor.save_pretrained(tmp_path)
    loaded = QueCCProcessor.from_pretrained(tmp_path)
    assert loaded.image_seq_length == processor.image_seq_length
    assert loaded.extract_queries([prompt(loaded, "Why?")]) == ["Why?"]
