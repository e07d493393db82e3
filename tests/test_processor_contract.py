"""What every model type's processor keeps to: transformers' kwargs handling, left padding for batched generation,
one BOS on every path, and assistant answers marked in the chat template."""

from __future__ import annotations

import copy
import json
import re
import subprocess
import sys
import textwrap

import jinja2
import pytest
import torch
from transformers import AutoTokenizer, LlamaForCausalLM, pipeline

from tests.helpers import VARIANT_IDS, VARIANTS, sample_image, save_variant, variant_id
from visual_token_compression import MODEL_TYPES
from visual_token_compression.processing.chat_templates import VICUNA_V1, VICUNA_V1_SYSTEM
from visual_token_compression.processing.tokenpacker_hd import TokenPackerImageProcessor
from visual_token_compression.tools.building import compose_vlm
from visual_token_compression.tools.tiny import build_tiny, tiny_text_config, tiny_vision_config, word_tokenizer
from visual_token_compression.tools.training import CompressedVLMDataCollator

QUESTIONS = ("Hi?", "What colour is the object on the far left side?", "Describe it.")


def greedy() -> dict:
    """Pipeline settings, new for each call: some releases' pipelines write into `generate_kwargs`."""
    return {"max_new_tokens": 8, "generate_kwargs": {"do_sample": False}}


@pytest.fixture(scope="module", params=VARIANTS, ids=VARIANT_IDS)
def saved(request, tmp_path_factory):
    """A tiny model of each variant with its processor, also saved to a folder: (model, processor, folder)."""
    return save_variant(request.param, tmp_path_factory)[1:]


def user(question: str, image=None) -> dict:
    picture = {"type": "image"} if image is None else {"type": "image", "image": image}
    return {"role": "user", "content": [picture, {"type": "text", "text": question}]}


def assistant(answer: str) -> dict:
    return {"role": "assistant", "content": [{"type": "text", "text": answer}]}


def prompt(processor, question: str) -> str:
    return processor.apply_chat_template([user(question)], add_generation_prompt=True, tokenize=False)


def bos_positions(processor, ids, mask=None) -> list[int]:
    ids = torch.as_tensor(ids)
    if mask is not None:
        ids = ids[torch.as_tensor(mask).bool()]
    return (ids == processor.tokenizer.bos_token_id).nonzero().flatten().tolist()


# --- transformers' kwargs handling ----------------------------------------------------------------------------


def test_structured_text_kwargs_are_applied(saved):
    _, processor, _ = saved
    images, texts = [sample_image(0), sample_image(1)], [prompt(processor, q) for q in QUESTIONS[:2]]
    longest = processor(images=images, text=texts, return_tensors="pt")["input_ids"].shape[1]
    padded = processor(
        images=images,
        text=texts,
        return_tensors="pt",
        text_kwargs={"padding": "max_length", "max_length": longest + 7},
    )
    assert padded["input_ids"].shape == (2, longest + 7)
    assert isinstance(
        processor(images=images, text=texts, text_kwargs={"return_tensors": "pt"})["input_ids"], torch.Tensor
    )


def test_images_kwargs_are_applied_structured_or_flat(saved):
    _, processor, _ = saved
    text = prompt(processor, "Hi?")

    def pixels(**kwargs):
        return processor(images=sample_image(2), text=text, return_tensors="pt", **kwargs)["pixel_values"]

    unscaled = pixels(images_kwargs={"do_rescale": False})
    torch.testing.assert_close(unscaled, pixels(images_kwargs={"rescale_factor": 1.0}), atol=0, rtol=0)
    torch.testing.assert_close(unscaled, pixels(do_rescale=False), atol=0, rtol=0)
    assert not torch.allclose(unscaled, pixels())


def test_a_kwarg_given_flat_and_structured_is_an_error(saved):
    _, processor, _ = saved
    with pytest.raises(ValueError, match="passed two times"):
        processor(images=sample_image(0), text=prompt(processor, "Hi?"), padding=True, text_kwargs={"padding": True})


def test_tokenizer_init_defaults_apply(saved):
    _, processor, folder = saved
    text = prompt(processor, "Hi?")
    length = len(processor(images=sample_image(0), text=text)["input_ids"][0]) + 5
    padded = copy.copy(processor)
    padded.tokenizer = AutoTokenizer.from_pretrained(folder, padding="max_length", max_length=length)
    assert len(padded(images=sample_image(0), text=text)["input_ids"][0]) == length


def test_mm_token_type_ids_mark_each_images_whole_span(saved):
    """The placeholders and the layout text the processor writes with them (TokenPacker-HD's separators, VoCo's
    newline and <voco> tokens), as `_get_num_multimodal_tokens` counts them for serving stacks; nothing else."""
    _, processor, _ = saved
    image = sample_image(0)
    inputs = processor(images=image, text=prompt(processor, "Hi?"), return_mm_token_type_ids=True)
    ids, marks = inputs["input_ids"][0], inputs["mm_token_type_ids"][0]
    marked = [index for index, mark in enumerate(marks) if mark]
    assert marked == list(range(marked[0], marked[-1] + 1)), "one contiguous span"
    span = processor.tokenizer(processor.image_text((image.height, image.width)), add_special_tokens=False)
    assert [ids[index] for index in marked] == span["input_ids"]
    assert ids.count(processor.image_token_id) == sum(ids[index] == processor.image_token_id for index in marked)
    counted = processor._get_num_multimodal_tokens(image_sizes=[(image.height, image.width)]).num_image_tokens
    assert counted == [len(marked)]


def test_quecc_queries_is_a_text_kwarg():
    _, processor = build_tiny("quecc")
    image, text = sample_image(0), prompt(processor, "Hi?")
    queries = ["What is it?"]
    flat = processor(images=image, text=text, queries=queries)["query_input_ids"]
    assert flat != processor(images=image, text=text)["query_input_ids"]
    assert processor(images=image, text=text, text_kwargs={"queries": queries})["query_input_ids"] == flat
    assert processor(images=image, text=text, processor_kwargs={"queries": queries})["query_input_ids"] == flat
    with pytest.raises(ValueError, match="passed two times"):
        processor(images=image, text=text, queries=queries, text_kwargs={"queries": queries})


def test_hd_image_processor_rescales_as_told(tmp_path):
    image_processor = TokenPackerImageProcessor(tile_size=16)
    image = sample_image(0, size=(40, 20))  # 1x2 tiles and a global view

    def pixels(processor=image_processor, **kwargs):
        return processor(image, return_tensors="pt", **kwargs)["pixel_values"]

    unscaled = pixels(do_rescale=False)
    assert not torch.allclose(unscaled, pixels())
    torch.testing.assert_close(pixels(rescale_factor=1.0), unscaled, atol=0, rtol=0)
    TokenPackerImageProcessor(tile_size=16, do_rescale=False).save_pretrained(tmp_path)
    torch.testing.assert_close(pixels(TokenPackerImageProcessor.from_pretrained(tmp_path)), unscaled, atol=0, rtol=0)


# --- batched generation ---------------------------------------------------------------------------------------


def conversations() -> list[list[dict]]:
    """Three questions of different lengths about three images of different sizes."""
    return [[user(question, sample_image(i, size=(40 + 10 * i, 30)))] for i, question in enumerate(QUESTIONS)]


@pytest.mark.parametrize("source", ["in_memory", "folder"])
def test_batched_pipeline_answers_equal_one_by_one(saved, source):
    model, processor, folder = saved
    if source == "in_memory":
        generator = pipeline("image-text-to-text", model=model, processor=processor)
    else:
        generator = pipeline("image-text-to-text", model=str(folder))
    alone = [generator(text=chat, **greedy())[0]["generated_text"][-1]["content"] for chat in conversations()]
    batched = generator(text=conversations(), batch_size=3, **greedy())
    assert [answer[0]["generated_text"][-1]["content"] for answer in batched] == alone


def test_the_training_collator_pads_on_its_own_side(saved):
    _, processor, _ = saved
    records = [
        {
            "image": sample_image(0),
            "conversations": [{"from": "human", "value": f"<image>\n{q}"}, {"from": "gpt", "value": "A"}],
        }
        for q in QUESTIONS[:2]
    ]
    assert processor.tokenizer.padding_side == "left"
    right = CompressedVLMDataCollator(processor)(records)
    assert right["attention_mask"][:, 0].all() and not right["attention_mask"][:, -1].all()
    left = CompressedVLMDataCollator(processor, padding_side="left")(records)
    assert left["attention_mask"][:, -1].all() and not left["attention_mask"][:, 0].all()
    assert right["attention_mask"].sum() == left["attention_mask"].sum()


# --- chat template: assistant markers and BOS -----------------------------------------------------------------

CHATS = [
    [user("What is it?"), assistant("A cat."), {"role": "user", "content": "Colour?"}, assistant("Black.")],
    [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello"},
    ],
    [user("Describe\nit.")],
]


def test_generation_markers_leave_the_rendered_text_unchanged(saved):
    _, processor, _ = saved
    template = processor.chat_template
    assert re.search(r"\{%-?\s*generation\s*-?%\}", template), "TRL's assistant_only_loss needs the markers"
    unmarked = template.replace("{% generation %}", "").replace("{% endgeneration %}", "")
    for chat in CHATS:
        for add_generation_prompt in (False, True):
            settings = {"tokenize": False, "add_generation_prompt": add_generation_prompt}
            rendered = processor.apply_chat_template(chat, **settings)
            assert rendered == processor.apply_chat_template(chat, chat_template=unmarked, **settings)


def test_assistant_mask_marks_exactly_the_answers(saved):
    _, processor, _ = saved
    chat = [
        user("What is it?", sample_image(0)),
        assistant("A cat."),
        {"role": "user", "content": [{"type": "text", "text": "Colour?"}]},
        assistant("Black."),
    ]
    out = processor.apply_chat_template(chat, tokenize=True, return_dict=True, return_assistant_tokens_mask=True)
    ids, mask = out["input_ids"][0], out["assistant_masks"][0]
    runs, current = [], []
    for token, marked in zip(ids, mask, strict=True):
        if marked:
            current.append(token)
        elif current:
            runs.append(current)
            current = []
    runs += [current] if current else []
    eos = processor.tokenizer.eos_token
    assert [processor.tokenizer.decode(run) for run in runs] == [f" A cat.{eos}", f" Black.{eos}"]


def test_trl_accepts_the_template_for_assistant_only_loss(saved):
    from trl.chat_template_utils import has_generation_markers, is_chat_template_stop_token_trained

    _, processor, _ = saved
    assert has_generation_markers(processor.chat_template)
    assert is_chat_template_stop_token_trained(processor)


# The collator's `vicuna_v1` template renders the shared Vicuna chat template; VoCo's processor declares its own.
SHARED_TEMPLATE_VARIANTS = [
    (variant, variant_id)
    for variant, variant_id in zip(VARIANTS, VARIANT_IDS, strict=True)
    if MODEL_TYPES[variant[0]].processor_class.default_chat_template == VICUNA_V1
]


@pytest.mark.parametrize(
    "saved", [v for v, _ in SHARED_TEMPLATE_VARIANTS], ids=[i for _, i in SHARED_TEMPLATE_VARIANTS], indirect=True
)
def test_assistant_mask_is_what_the_collator_supervises(saved):
    _, processor, _ = saved
    assert processor.chat_template == VICUNA_V1
    image = sample_image(0)
    chat = [
        user("What is it?", image),
        assistant("A cat."),
        {"role": "user", "content": [{"type": "text", "text": "Colour?"}]},
        assistant("Black."),
    ]
    record = {
        "image": image,
        "conversations": [
            {"from": "human", "value": "<image>\nWhat is it?"},
            {"from": "gpt", "value": "A cat."},
            {"from": "human", "value": "Colour?"},
            {"from": "gpt", "value": "Black."},
        ],
    }
    batch = CompressedVLMDataCollator(processor, template="vicuna_v1")([record])
    out = processor.apply_chat_template(chat, tokenize=True, return_dict=True, return_assistant_tokens_mask=True)
    assert batch["input_ids"][0].tolist() == out["input_ids"][0]
    assert (batch["labels"][0] != -100).tolist() == [bool(marked) for marked in out["assistant_masks"][0]]


def test_one_bos_at_the_start_on_every_inference_path(saved):
    _, processor, _ = saved
    bos = processor.tokenizer.bos_token
    rendered = prompt(processor, "Hi?")
    assert rendered.startswith(bos) and rendered.count(bos) == 1
    # What TRL tokenizes: the rendered text without special tokens.
    assert bos_positions(processor, processor.tokenizer(rendered, add_special_tokens=False)["input_ids"]) == [0]
    assert bos_positions(processor, processor(images=sample_image(0), text=rendered)["input_ids"][0]) == [0]
    chat = [user("Hi?", sample_image(0))]
    ids = processor.apply_chat_template(chat, add_generation_prompt=True, tokenize=True, return_dict=True)["input_ids"]
    assert bos_positions(processor, ids[0]) == [0]

    texts = [prompt(processor, question) for question in QUESTIONS]
    batch = processor(images=[sample_image(i) for i in range(3)], text=texts, return_tensors="pt")
    for row, mask in zip(batch["input_ids"], batch["attention_mask"], strict=True):
        assert bos_positions(processor, row, mask) == [0]  # after the left padding
    for row, mask in zip(batch.get("query_input_ids", []), batch.get("query_attention_mask", []), strict=True):
        assert bos_positions(processor, row, mask) == [0]  # QueCC's questions, read from the rendered chat


def test_a_batch_mixing_rendered_and_raw_texts_must_say_how_to_tokenize(saved):
    _, processor, _ = saved
    rendered = prompt(processor, "Hi?")
    texts = [rendered, rendered.removeprefix(processor.tokenizer.bos_token)]
    images = [sample_image(0), sample_image(1)]
    with pytest.raises(ValueError, match="Some texts start with"):
        processor(images=images, text=texts)
    batch = processor(images=images, text=texts, add_special_tokens=False, return_tensors="pt")
    rows = zip(batch["input_ids"], batch["attention_mask"], strict=True)
    assert [bos_positions(processor, ids, mask) for ids, mask in rows] == [[0], []]


@pytest.mark.parametrize("template", ["plain", "vicuna_v1"])
def test_one_bos_at_the_start_in_training(saved, template):
    _, processor, _ = saved
    record = {
        "image": sample_image(0),
        "conversations": [{"from": "human", "value": "<image>\nHi?"}, {"from": "gpt", "value": "Hello"}],
    }
    batch = CompressedVLMDataCollator(processor, template=template)([record])
    assert bos_positions(processor, batch["input_ids"][0]) == [0]


def test_demo_tokenizer_pads_left_and_gives_one_bos(tmp_path):
    """The demo's path: a word-level tokenizer saved as the LLM's, loaded again and composed into a VLM."""
    question = "What colour is the shape?"
    word_tokenizer(
        [VICUNA_V1_SYSTEM, "USER: ASSISTANT:", ",", question, "red"], extra_special_tokens=()
    ).save_pretrained(tmp_path)
    tokenizer = AutoTokenizer.from_pretrained(tmp_path)
    llm = LlamaForCausalLM(tiny_text_config(vocab_size=len(tokenizer)))
    _, processor = compose_vlm("tokenpacker", tiny_vision_config(), llm, tokenizer, compressor_head_dim=8)
    assert processor.tokenizer.padding_side == "left"
    chat = [user(question, sample_image(0)), assistant("red")]
    out = processor.apply_chat_template(chat, tokenize=True, return_dict=True, return_assistant_tokens_mask=True)
    assert bos_positions(processor, out["input_ids"][0]) == [0]
    record = {
        "image": sample_image(0),
        "conversations": [{"from": "human", "value": f"<image>\n{question}"}, {"from": "gpt", "value": "red"}],
    }
    batch = CompressedVLMDataCollator(processor, template="vicuna_v1")([record])
    assert batch["input_ids"][0].tolist() == out["input_ids"][0]
    assert (batch["labels"][0] != -100).tolist() == [bool(marked) for marked in out["assistant_masks"][0]]


# --- videos and audio: taken, or refused, never dropped -----------------------------------------------------------


def video_chat(frames) -> list[dict]:
    return [
        {"role": "user", "content": [{"type": "video", "video": frames}, {"type": "text", "text": "What happens?"}]}
    ]


def test_videos_are_taken_or_refused_never_dropped(saved):
    """A processor whose model takes no videos used to return the text alone for `videos=` or a video chat item:
    the model then answered about a video it never saw. Now only a processor with a video token takes them."""
    _, processor, _ = saved
    frames = [sample_image(i) for i in range(2)]
    if processor.video_token_id is not None:  # VoCo-LLaMA
        out = processor.apply_chat_template(
            video_chat(frames), add_generation_prompt=True, tokenize=True, return_dict=True, return_tensors="pt"
        )
        assert out["video_num_frames"].tolist() == [2] and len(out["pixel_values_videos"]) == 2
        assert (out["input_ids"] == processor.video_token_id).sum() == 2 * processor.image_seq_length
        return
    with pytest.raises(ValueError, match="takes no videos"):
        processor(images=sample_image(0), text=prompt(processor, "Hi?"), videos=[frames])
    for tokenize in (False, True):
        with pytest.raises(ValueError, match="takes no videos"):
            processor.apply_chat_template(video_chat(frames), add_generation_prompt=True, tokenize=tokenize)
    with pytest.raises(ValueError, match="takes no videos"):
        processor._get_num_multimodal_tokens(video_sizes=[(2, 30, 40)])


def test_audio_is_refused_never_dropped(saved):
    _, processor, _ = saved
    audio = [0.0] * 1600
    with pytest.raises(ValueError, match="takes no audio"):
        processor(images=sample_image(0), text=prompt(processor, "Hi?"), audio=audio)
    chat = [{"role": "user", "content": [{"type": "audio", "audio": audio}, {"type": "text", "text": "Hi?"}]}]
    for tokenize in (False, True):
        with pytest.raises(ValueError, match="takes no audio"):
            processor.apply_chat_template(chat, add_generation_prompt=True, tokenize=tokenize)


@pytest.mark.parametrize("kind", ["video", "audio"])
def test_the_saved_chat_template_refuses_what_its_model_cannot_see(saved, kind):
    """Serving stacks and TRL render the saved template without this processor: the template itself raises on
    content its model cannot see (transformers' `raise_exception`), rather than rendering a prompt without it."""
    _, processor, _ = saved
    chat = [{"role": "user", "content": [{"type": kind}, {"type": "text", "text": "Hi?"}]}]

    def render():
        return processor.tokenizer.apply_chat_template(chat, chat_template=processor.chat_template, tokenize=False)

    if kind == "video" and processor.video_token_id is not None:  # VoCo-LLaMA's template renders it
        assert render().count(processor.video_token) == 1
        return
    with pytest.raises(jinja2.exceptions.TemplateError, match=f"no {kind} input"):
        render()


# --- loading -------------------------------------------------------------------------------------------------------


def test_saved_processors_load_without_a_deprecation_warning(tmp_path_factory):
    """5.x warns once per process for a processor that names its sub-processor classes (`image_processor_class`):
    a fresh interpreter loads every variant's saved processor, with transformers' warnings on, and must stay quiet.
    (The same load as remote code: tests/test_hub.py::test_remote_code_loads_without_a_deprecation_warning.)"""
    folders = {variant_id(variant): str(save_variant(variant, tmp_path_factory)[3]) for variant in VARIANTS}
    script = textwrap.dedent(
        """
        import json, sys
        from transformers import AutoProcessor
        from transformers.utils import logging
        import visual_token_compression  # registers the model types

        logging.set_verbosity_warning()
        loaded = {name: type(AutoProcessor.from_pretrained(folder)).__name__ for name, folder in json.loads(sys.argv[1]).items()}
        print(json.dumps(loaded))
        """
    )
    result = subprocess.run(
        [sys.executable, "-c", script, json.dumps(folders)], capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr[-3000:]
    loaded = json.loads(result.stdout.strip().splitlines()[-1])
    expected = {variant_id(variant): MODEL_TYPES[variant[0]].processor_class.__name__ for variant in VARIANTS}
    assert loaded == expected
    assert "deprecated" not in result.stderr, result.stderr
