"""VoCo-LLaMA: config, processor layout, the VoCo attention rule, compressed-cache generation and conversion."""

from __future__ import annotations

import copy

import pytest
import torch
from PIL import Image

from visual_token_compression import (
    VoCoLlamaConfig,
    VoCoLlamaForConditionalGeneration,
    VoCoLlamaProcessor,
)
from visual_token_compression.compat import CACHE_NAME
from visual_token_compression.modeling.voco_cache import VoCoCache
from visual_token_compression.modeling.voco_rule import sealing_positions, voco_attention_mask
from visual_token_compression.tools.conversion.voco_llama import convert_state_dict
from visual_token_compression.tools.tiny import build_tiny, byte_tokenizer, tiny_text_config, tiny_vision_config

RED = Image.new("RGB", (40, 30), (220, 30, 30))
BLUE = Image.new("RGB", (30, 30), (20, 40, 200))


@pytest.fixture(scope="module")
def tiny():
    model, processor = build_tiny("voco_llama", num_voco_tokens=2)
    model.generation_config.eos_token_id = None  # always decode the number of tokens asked for
    return model, processor


def one_layer_model(attn_implementation: str):
    tokenizer = byte_tokenizer()
    text_config = tiny_text_config(vocab_size=len(tokenizer))
    text_config.num_hidden_layers = 1
    config = VoCoLlamaConfig(
        vision_config=tiny_vision_config(),
        text_config=text_config,
        image_token_id=tokenizer.convert_tokens_to_ids("<image>"),
    )
    torch.manual_seed(0)
    model = VoCoLlamaForConditionalGeneration(config).eval()
    model.set_attn_implementation({"text_config": attn_implementation, "vision_config": "eager", "": "eager"})
    return model, VoCoLlamaProcessor.from_config(config, tokenizer)


# --- config -------------------------------------------------------------------------------------------------------


def test_config_defaults_and_new_voco_row():
    text_config = tiny_text_config(vocab_size=100)
    config = VoCoLlamaConfig(vision_config=tiny_vision_config(), text_config=text_config, image_token_id=99)
    assert config.num_voco_tokens == 1
    assert config.voco_token_id == 100 and config.text_config.vocab_size == 101
    assert text_config.vocab_size == 100, "the caller's config must not be modified"
    reloaded = VoCoLlamaConfig(**config.to_dict())
    assert reloaded.voco_token_id == 100 and reloaded.text_config.vocab_size == 101
    assert config.image_seq_length == (32 // 4) ** 2


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"num_voco_tokens": 0}, "num_voco_tokens"),
        ({"voco_token_id": 99, "image_token_id": 99}, "share the id 99"),
        ({"voco_token_id": -1}, "must be a token id"),
    ],
)
def test_config_rejects_bad_values(kwargs, message):
    with pytest.raises(ValueError, match=message):
        VoCoLlamaConfig(vision_config=tiny_vision_config(), text_config=tiny_text_config(vocab_size=100), **kwargs)


# --- processor ----------------------------------------------------------------------------------------------------


def test_processor_layout(tiny):
    model, processor = tiny
    ids = processor(images=RED, text="<image>\nWhat?", return_tensors="pt").input_ids[0].tolist()
    n, k = model.config.image_seq_length, model.config.num_voco_tokens
    newline = processor.tokenizer.convert_tokens_to_ids(processor.tokenizer.tokenize("\n"))
    voco = processor.tokenizer.convert_tokens_to_ids("<voco>")
    assert voco == model.config.voco_token_id != model.config.image_token_id
    expected_head = [processor.tokenizer.bos_token_id] + [model.config.image_token_id] * n + newline + [voco] * k
    assert ids[: len(expected_head)] == expected_head
    assert ids[len(expected_head) :] == processor.tokenizer("\nWhat?", add_special_tokens=False).input_ids
    # The image's whole span (placeholders, newline, <voco> tokens) is what serving stacks must reserve.
    marks = processor(images=RED, text="<image>\nWhat?", return_mm_token_type_ids=True)["mm_token_type_ids"][0]
    assert marks == [0] + [1] * (len(expected_head) - 1) + [0] * (len(ids) - len(expected_head))
    assert processor._get_num_multimodal_tokens(image_sizes=[(30, 40)]).num_image_tokens == [n + len(newline) + k]


def test_processor_rejects_literal_voco_and_truncation(tiny):
    _, processor = tiny
    with pytest.raises(ValueError, match="adds the '<voco>' tokens"):
        processor(images=RED, text="<image><voco> hi")
    n = processor.image_seq_length
    with pytest.raises(ValueError, match="truncation kept 1 of its 2 '<voco>' tokens"):
        processor(images=RED, text="<image>\nhi", truncation=True, max_length=1 + n + 1 + 1)
    with pytest.raises(ValueError, match="'<image>' tokens"):
        processor(images=RED, text="<image>\nhi", truncation=True, max_length=n // 2)


def test_chat_template_is_the_original_prompt(tiny):
    _, processor = tiny
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Describe\nit."}]}]
    prompt = processor.apply_chat_template(messages, add_generation_prompt=True)
    assert prompt == (
        "<s><image>\nA chat between a curious user and an artificial intelligence assistant of the image. The assistant "
        "gives helpful, detailed, and polite answers to the user's questions. USER: Describeit. ASSISTANT:"
    )


def test_processor_save_load(tiny, tmp_path):
    _, processor = tiny
    processor.save_pretrained(tmp_path)
    reloaded = VoCoLlamaProcessor.from_pretrained(tmp_path)
    assert (reloaded.num_voco_tokens, reloaded.voco_token_id) == (2, processor.voco_token_id)
    assert reloaded(images=RED, text="<image>\nhi").input_ids == processor(images=RED, text="<image>\nhi").input_ids


# --- attention rule -----------------------------------------------------------------------------------------------


def test_sealing_rule_matches_the_original_formula():
    voco = torch.tensor([[0, 0, 0, 1, 1, 0, 0], [0, 0, 0, 0, 0, 0, 0]], dtype=torch.bool)
    assert sealing_positions(voco).tolist() == [[4, 4, 4, 7, 7, 7, 7], [7] * 7]
    mask, keep = voco_attention_mask(voco, torch.ones(2, 7, dtype=torch.bool), 0, torch.float32)
    allowed = mask[:, 0] == 0
    first, last = 3, 4
    for i in range(7):
        for j in range(7):
            assert allowed[0, i, j] == (j <= i and not (i > last and j < first))
            assert allowed[1, i, j] == (j <= i)
    assert keep.tolist() == [[False, False, False, True, True, True, True], [True] * 7]
    assert mask.dtype == torch.float32 and mask.min() == torch.finfo(torch.float32).min


@pytest.mark.parametrize("attn_implementation", ["eager", "sdpa"])
def test_text_after_voco_cannot_see_the_image(attn_implementation):
    """One decoder layer: text after the VoCo tokens reads only their (image-independent) layer-0 KV, so changing
    the image must leave its logits untouched while the VoCo tokens' own logits change."""
    model, processor = one_layer_model(attn_implementation)
    inputs = processor(images=RED, text="<image>\nWhat colour?", return_tensors="pt")
    other = processor(images=BLUE, text="<image>\nWhat colour?", return_tensors="pt")
    after = int(torch.nonzero(inputs.input_ids[0] == model.config.voco_token_id).max()) + 1
    with torch.no_grad():
        logits = model(**inputs).logits[0]
        perturbed = model(**other).logits[0]
    torch.testing.assert_close(perturbed[after:], logits[after:], atol=1e-6, rtol=0)
    assert (perturbed[after - 1] - logits[after - 1]).abs().max() > 1e-3


def test_eager_and_sdpa_agree(tiny):
    model, processor = tiny
    inputs = processor(images=RED, text="<image>\nWhat colour?", return_tensors="pt")
    with torch.no_grad():
        sdpa = model(**inputs).logits
        model.set_attn_implementation({"text_config": "eager", "vision_config": "eager", "": "eager"})
        eager = model(**inputs).logits
        model.set_attn_implementation({"text_config": "sdpa", "vision_config": "sdpa", "": "sdpa"})
    torch.testing.assert_close(eager, sdpa, atol=1e-5, rtol=0)


def test_flash_attention_is_refused_with_alternatives(tiny):
    model, processor = tiny
    inputs = processor(images=RED, text="<image>\nhi", return_tensors="pt")
    text_config = model.model.language_model.config
    previous = text_config._attn_implementation
    text_config._attn_implementation = "flash_attention_2"
    try:
        with pytest.raises(ValueError, match="flash_attention_2.*'sdpa' or 'eager'"):
            model(**inputs)
    finally:
        text_config._attn_implementation = previous


def test_mixed_text_only_and_image_batch(tiny):
    """Bug B3 of the original: VoCo positions were applied to the wrong row of a mixed batch."""
    model, processor = tiny
    texts = ["A text-only question", "<image>\nWhat colour?"]
    batch = processor(images=[RED], text=texts, padding=True, padding_side="left", return_tensors="pt")
    with torch.no_grad():
        logits = model(**batch).logits
        alone = [
            model(**processor(text=texts[0], return_tensors="pt")).logits[0],
            model(**processor(images=RED, text=texts[1], return_tensors="pt")).logits[0],
        ]
    for row, single in enumerate(alone):
        torch.testing.assert_close(logits[row, -single.shape[0] :], single, atol=1e-5, rtol=0)


def test_missing_voco_tokens_are_refused(tiny):
    model, processor = tiny
    inputs = processor(images=RED, text="<image>\nhi", return_tensors="pt")
    keep = inputs.input_ids[0] != model.config.voco_token_id
    with pytest.raises(
        ValueError, match="1 images or video frames and 0 <voco> tokens, but needs 2 per image or frame"
    ):
        model(input_ids=inputs.input_ids[:, keep], pixel_values=inputs.pixel_values)


def test_training_loss_backward(tiny):
    model, processor = tiny
    inputs = processor(images=RED, text="<image>\nWhat colour? red", return_tensors="pt")
    labels = inputs.input_ids.masked_fill(inputs.input_ids >= model.config.image_token_id, -100)
    model.train()
    try:
        loss = model(**inputs, labels=labels).loss
        loss.backward()
    finally:
        model.eval()
        model.zero_grad()
    assert torch.isfinite(loss)


# --- inference with the compressed cache --------------------------------------------------------------------------


def greedy_single_pass(model, inputs, steps: int) -> torch.Tensor:
    """Reference decoding: the whole masked sequence recomputed at every step, no cache."""
    ids = inputs.input_ids
    with torch.no_grad():
        for _ in range(steps):
            logits = model(input_ids=ids, pixel_values=inputs.pixel_values, use_cache=False).logits
            ids = torch.cat([ids, logits[:, -1:].argmax(-1)], dim=-1)
    return ids


def test_generate_equals_single_pass_masked_decoding(tiny):
    model, processor = tiny
    inputs = processor(images=RED, text="<image>\nWhat colour?", return_tensors="pt")
    generated = model.generate(**inputs, max_new_tokens=6, do_sample=False)
    assert generated.shape[1] == inputs.input_ids.shape[1] + 6
    assert torch.equal(generated, greedy_single_pass(model, inputs, 6))


def test_prefill_keeps_only_voco_and_later_text(tiny):
    model, processor = tiny
    inputs = processor(images=RED, text="<image>\nWhat colour?", return_tensors="pt")
    with torch.no_grad():
        cache = model(**inputs, use_cache=True)[CACHE_NAME]
    voco_end = int(torch.nonzero(inputs.input_ids[0] == model.config.voco_token_id).max())
    text_after = inputs.input_ids.shape[1] - voco_end - 1
    assert isinstance(cache, VoCoCache)
    assert cache.num_kept == model.config.num_voco_tokens + text_after
    assert cache.get_seq_length() == inputs.input_ids.shape[1]


def test_compressed_image_cache_size_and_reuse(tiny):
    model, processor = tiny
    n, k = model.config.image_seq_length, model.config.num_voco_tokens
    prefix = processor(images=RED, text="<image>", return_tensors="pt")
    cache = model.compress_images(prefix.input_ids, prefix.pixel_values)
    with torch.no_grad():
        baseline = model(**prefix, use_cache=False).logits.shape[1]
    # The uncompressed prefix would cache BOS + N image tokens + newline + k VoCo tokens; only the k VoCo stay.
    assert baseline == 1 + n + 1 + k
    assert cache.num_kept == k and all(layer.keys.shape[2] == k for layer in cache.layers)

    for question in ["<image>\nWhat colour?", "<image>\nIs it round?"]:
        inputs = processor(images=RED, text=question, return_tensors="pt")
        reused = model.generate(
            input_ids=inputs.input_ids,
            attention_mask=inputs.attention_mask,
            **{CACHE_NAME: copy.deepcopy(cache)},
            max_new_tokens=4,
            do_sample=False,
        )
        assert torch.equal(reused, model.generate(**inputs, max_new_tokens=4, do_sample=False))


def test_reused_cache_with_another_prefix_is_refused(tiny):
    model, processor = tiny
    prefix = processor(images=RED, text="<image>", return_tensors="pt")
    cache = model.compress_images(prefix.input_ids, prefix.pixel_values)
    unrelated = processor(text="No image here at all, just a long enough text", return_tensors="pt")
    with pytest.raises(ValueError, match="does not start with that prefix"):
        model.generate(**unrelated, **{CACHE_NAME: cache}, max_new_tokens=2)
    with pytest.raises(ValueError, match="end with their VoCo tokens"):
        model.compress_images(unrelated.input_ids, prefix.pixel_values)


def test_voco_tokens_after_the_prefill_are_refused(tiny):
    model, processor = tiny
    inputs = processor(images=RED, text="<image>\nhi", return_tensors="pt")
    with torch.no_grad():
        cache = model(**inputs, use_cache=True)[CACHE_NAME]
        voco = torch.tensor([[model.config.voco_token_id]])
        with pytest.raises(ValueError, match="first forward pass"):
            model(input_ids=voco, cache=cache)


def test_batched_left_padded_generate_equals_one_by_one(tiny):
    model, processor = tiny
    texts = ["<image>\nWhat colour is it?", "A text-only question", "<image>\nHi"]
    images = [RED, BLUE]
    batch = processor(images=images, text=texts, padding=True, padding_side="left", return_tensors="pt")
    generated = model.generate(**batch, max_new_tokens=5, do_sample=False)[:, -5:]
    singles = [
        processor(images=RED, text=texts[0], return_tensors="pt"),
        processor(text=texts[1], return_tensors="pt"),
        processor(images=BLUE, text=texts[2], return_tensors="pt"),
    ]
    for row, inputs in enumerate(singles):
        assert torch.equal(generated[row], model.generate(**inputs, max_new_tokens=5, do_sample=False)[0, -5:])


def test_save_and_load(tiny, tmp_path):
    model, processor = tiny
    inputs = processor(images=RED, text="<image>\nhi", return_tensors="pt")
    model.save_pretrained(tmp_path)
    reloaded = VoCoLlamaForConditionalGeneration.from_pretrained(tmp_path).eval()
    assert reloaded.config.voco_token_id == model.config.voco_token_id
    assert reloaded.config.text_config.vocab_size == model.config.text_config.vocab_size
    with torch.no_grad():
        torch.testing.assert_close(reloaded(**inputs).logits, model(**inputs).logits, atol=0, rtol=0)


# --- conversion ---------------------------------------------------------------------------------------------------


def test_convert_state_dict_renames_and_refuses_unknown_keys():
    original = {
        "model.mm_projector.0.weight": torch.zeros(1),
        "model.mm_projector.2.bias": torch.zeros(1),
        "model.embed_tokens.weight": torch.zeros(1),
        "model.layers.0.self_attn.q_proj.weight": torch.zeros(1),
        "model.norm.weight": torch.zeros(1),
        "lm_head.weight": torch.zeros(1),
    }
    assert sorted(convert_state_dict(original)) == [
        "lm_head.weight",
        "model.compressor.fc1.weight",
        "model.compressor.fc2.bias",
        "model.language_model.embed_tokens.weight",
        "model.language_model.layers.0.self_attn.q_proj.weight",
        "model.language_model.norm.weight",
    ]
    with pytest.raises(KeyError, match="model.image_newline"):
        convert_state_dict({**original, "model.image_newline": torch.zeros(1)})
