"""VoCo-LLaMA against tensors produced by the original code, for every case found in the fixture folder.

The fixtures' vision tower is an identity stub fed precomputed features, so the model's tower is bypassed: the
features go straight into the converted `mlp2x_gelu` projector. Logits are compared on non-padding rows only
(the original opens padded query rows fully, bug B7; their outputs are never used).
"""

from __future__ import annotations

import copy

import pytest
import torch
from transformers import LlamaConfig

from tests.fixtures import case_names, load_case
from visual_token_compression import VoCoLlamaConfig, VoCoLlamaForConditionalGeneration
from visual_token_compression.conversion.voco_llama import convert_state_dict
from visual_token_compression.modeling.vision import VisionFeatures
from visual_token_compression.modeling.voco_cache import VoCoCache
from visual_token_compression.modeling.voco_llama import voco_attention_mask
from visual_token_compression.tiny import tiny_vision_config

METHOD = "voco_llama"
CASES = case_names(METHOD)
IMAGE_PLACEHOLDER = -200  # the original's IMAGE_TOKEN_INDEX in text-level ids
BACKENDS = ["eager", "sdpa"]


def kind_of(case) -> str:
    names = set(case.tensors)
    if {"inputs.prefix_input_ids", "inputs.text_input_ids", "outputs.logits_stage2"} <= names:
        return "two_stage"
    if {"inputs.input_ids", "inputs.images", "outputs.logits", "outputs.attention_mask_4d"} <= names:
        return "train_forward"
    raise AssertionError(f"Fixture case {case.name} matches no known VoCo-LLaMA check: {sorted(names)[:8]}...")


def expected(case, name: str) -> torch.Tensor:
    """The corrected reference where the fixture has one (`*_fixed`, the mixed-batch bug B3), else the original's."""
    return case.tensors.get(f"outputs.{name}_fixed", case.tensors.get(f"outputs.{name}"))


def model_for(case, attn_implementation: str) -> VoCoLlamaForConditionalGeneration:
    dims, ids = case.manifest["dims"], case.manifest["special_token_ids"]
    used = {int(i) for key, t in case.tensors.items() if key.endswith("input_ids") for i in t.flatten()}
    # `<image>` is a placeholder the original never embeds; any id the fixture does not use stands for it.
    image_token_id = min(set(range(dims["vocab_size"])) - used)
    text_config = LlamaConfig(
        vocab_size=dims["vocab_size"],
        hidden_size=dims["hidden_size"],
        intermediate_size=dims["intermediate_size"],
        num_hidden_layers=dims["num_hidden_layers"],
        num_attention_heads=dims["num_attention_heads"],
        num_key_value_heads=dims["num_key_value_heads"],
        head_dim=dims["head_dim"],
        max_position_embeddings=dims["max_position_embeddings"],
        rms_norm_eps=dims["rms_norm_eps"],
        rope_theta=dims["rope_theta"],
        tie_word_embeddings=False,
    )
    vision_config = tiny_vision_config()
    vision_config.hidden_size = dims["mm_hidden_size"]
    config = VoCoLlamaConfig(
        vision_config=vision_config,
        text_config=text_config,
        image_token_id=image_token_id,
        voco_token_id=ids["voco(fixture)"],
        num_voco_tokens=dims["num_voco_tokens"],
    )
    model = VoCoLlamaForConditionalGeneration(config).eval()
    model.set_attn_implementation({"text_config": attn_implementation, "vision_config": "eager", "": "eager"})
    converted = convert_state_dict(case.group("weights"))
    missing, unexpected = model.load_state_dict(converted, strict=False)
    assert not unexpected and all(key.startswith("model.vision_tower.") for key in missing), (missing, unexpected)
    # The stub tower of the fixtures: "pixel_values" are already the tower's patch features.
    model.model.get_image_features = lambda pixel_values: model.model.compressor(VisionFeatures(pixel_values))
    return model


def expand(case, text_ids: torch.Tensor, attention_mask: torch.Tensor | None = None):
    """Text-level ids (-200 = image) -> our ids with one placeholder per image token, left-padded like the merge."""
    config_ids = case.manifest["special_token_ids"]
    num_image_tokens = case.manifest["dims"]["num_image_tokens"]
    rows = []
    for row, ids in enumerate(text_ids.tolist()):
        if attention_mask is not None:
            ids = [i for i, keep in zip(ids, attention_mask[row].tolist(), strict=True) if keep]
        rows.append(
            [j for i in ids for j in ([IMAGE_PLACEHOLDER] * num_image_tokens if i == IMAGE_PLACEHOLDER else [i])]
        )
    length = max(map(len, rows))
    pad = config_ids["pad(unk)"]
    input_ids = torch.tensor([[pad] * (length - len(r)) + r for r in rows])
    mask = torch.tensor([[0] * (length - len(r)) + [1] * len(r) for r in rows])
    return input_ids, mask


def with_image_id(model, input_ids: torch.Tensor) -> torch.Tensor:
    return input_ids.masked_fill(input_ids == IMAGE_PLACEHOLDER, model.config.image_token_id)


def test_every_case_is_checked():
    assert CASES, "no VoCo-LLaMA fixture cases found"
    for name in CASES:
        kind_of(load_case(METHOD, name))


TRAIN_CASES = [n for n in CASES if kind_of(load_case(METHOD, n)) == "train_forward"]
TWO_STAGE_CASES = [n for n in CASES if kind_of(load_case(METHOD, n)) == "two_stage"]


@pytest.mark.parametrize("attn_implementation", BACKENDS)
@pytest.mark.parametrize("name", TRAIN_CASES)
def test_training_forward_matches_original(name, attn_implementation):
    case = load_case(METHOD, name)
    model = model_for(case, attn_implementation)
    input_ids, attention_mask = expand(case, case.tensors["inputs.input_ids"], case.tensors["inputs.attention_mask"])
    input_ids = with_image_id(model, input_ids)
    torch.testing.assert_close(attention_mask, case.tensors["outputs.attention_mask_2d"], atol=0, rtol=0)
    valid = attention_mask.bool()

    with torch.no_grad():
        embeds = model.get_input_embeddings()(input_ids)
        placeholders = model.model.get_placeholder_mask(input_ids, embeds)
        features = model.model.get_image_features(case.tensors["inputs.images"])
        merged = model.model.merge_image_features(embeds, placeholders, features)
        outputs = model(
            input_ids=input_ids,
            pixel_values=case.tensors["inputs.images"],
            attention_mask=attention_mask,
            labels=case.tensors["outputs.labels"],
        )
    torch.testing.assert_close(merged[valid], case.tensors["outputs.inputs_embeds"][valid], atol=case.atol, rtol=0)

    mask, _ = voco_attention_mask(input_ids == model.config.voco_token_id, valid, 0, torch.float32)
    allowed = (mask == 0).to(torch.uint8)
    reference = expected(case, "attention_mask_4d") == 0
    for row in range(input_ids.shape[0]):
        rows = valid[row]
        torch.testing.assert_close(allowed[row, 0][rows], reference[row, 0][rows].to(torch.uint8), atol=0, rtol=0)

    logits = expected(case, "logits")
    torch.testing.assert_close(outputs.logits[valid], logits[valid], atol=case.atol, rtol=0)
    torch.testing.assert_close(outputs.loss.reshape(1), expected(case, "loss").reshape(1), atol=case.atol, rtol=0)
    # The fixture discriminates mask errors: a plain causal mask is far from it.
    control = case.tensors.get("outputs.logits_plain_causal_control")
    if control is not None:
        assert (control[valid] - logits[valid]).abs().max() > 1.0


@pytest.mark.parametrize("attn_implementation", BACKENDS)
@pytest.mark.parametrize("name", TWO_STAGE_CASES)
def test_two_stage_voco_cache_matches_original(name, attn_implementation):
    case = load_case(METHOD, name)
    model = model_for(case, attn_implementation)
    images = case.tensors["inputs.images"]
    full_ids = with_image_id(model, expand(case, case.tensors["inputs.input_ids"])[0])
    prefix_ids = with_image_id(model, expand(case, case.tensors["inputs.prefix_input_ids"])[0])
    text_ids = case.tensors["inputs.text_input_ids"]
    num_voco = model.config.num_voco_tokens

    with torch.no_grad():
        single = model(input_ids=full_ids, pixel_values=images).logits
        prefix = model(input_ids=prefix_ids, pixel_values=images, use_cache=True)
        cache = prefix.past_key_values
        stage2 = model(input_ids=text_ids, past_key_values=copy.deepcopy(cache)).logits
        compact_positions = torch.arange(num_voco, num_voco + text_ids.shape[1])[None]
        compact = model(
            input_ids=text_ids, past_key_values=copy.deepcopy(cache), position_ids=compact_positions
        ).logits

    torch.testing.assert_close(single, case.tensors["outputs.logits_single_pass"], atol=case.atol, rtol=0)
    torch.testing.assert_close(prefix.logits, case.tensors["outputs.logits_stage1_prefix"], atol=case.atol, rtol=0)
    assert isinstance(cache, VoCoCache)
    assert cache.num_kept == num_voco
    assert cache.get_seq_length() == prefix_ids.shape[1]
    assert int(case.tensors["inputs.stage2_position_ids"][0, 0]) == prefix_ids.shape[1]
    for index, layer in enumerate(cache.layers):
        torch.testing.assert_close(
            layer.keys, case.tensors[f"outputs.voco_cache.layer{index}.key"], atol=case.atol, rtol=0
        )
        torch.testing.assert_close(
            layer.values, case.tensors[f"outputs.voco_cache.layer{index}.value"], atol=case.atol, rtol=0
        )
    torch.testing.assert_close(stage2, case.tensors["outputs.logits_stage2"], atol=case.atol, rtol=0)
    torch.testing.assert_close(
        compact, case.tensors["outputs.logits_stage2_compact_positions"], atol=case.atol, rtol=0
    )
