"""TokenPacker against tensors produced by the original code, for every case found in the fixture folder."""

from __future__ import annotations

import pytest
import torch

from tests.golden import cases_of, classify, load_case
from visual_token_compression import CompressedVLMConfig, TokenPackerConfig
from visual_token_compression.modeling.tokenpacker import TokenPackerCompressor
from visual_token_compression.modeling.vision import VisionFeatures, select_vision_features
from visual_token_compression.tools.conversion.tokenpacker import convert_state_dict
from visual_token_compression.tools.tiny import tiny_text_config

METHOD = "tokenpacker"
# Named by their manifest's `fixture` field; run by test_tokenpacker_hd_parity.
HD_KINDS = ("hd_patch_division", "hd_preprocess_tiles", "hd_sequence_layout")
# Files that are not tensor cases, each with the test that reads it.
AUXILIARY = {"projector_param_counts": "param_counts"}  # tests/test_tokenpacker.py


def kind_of(case) -> str:
    if case.name in AUXILIARY:
        return AUXILIARY[case.name]
    if case.manifest.get("fixture") in HD_KINDS:
        return case.manifest["fixture"]
    names = set(case.tensors)
    if {"inputs.x_single", "inputs.x_multi"} <= names:
        return "projector"
    if any(name.startswith("inputs.hidden_states_") for name in names):
        return "feature_select"
    raise case.unknown("TokenPacker")


KINDS = classify(METHOD, kind_of)


def compressor_for(manifest: dict) -> TokenPackerCompressor:
    """Our module at the case's widths: a tower with patch_size 1 gives a raw_grid x raw_grid patch grid."""
    ctor, dims = manifest["constructor"], manifest["dims"]
    levels = dims["multi_level_width"] // ctor["kv_dim"]
    config = TokenPackerConfig(
        vision_config={
            "model_type": "clip_vision_model",
            "hidden_size": ctor["kv_dim"],
            "image_size": ctor["raw_grid"],
            "patch_size": 1,
            "num_hidden_layers": levels,
            "num_attention_heads": 1,
        },
        text_config=tiny_text_config(),
        multi_level_feature_layers=list(range(1, levels + 1)),
        scale_factor=ctor["scale_factor"],
        compressor_hidden_size=ctor["embed_dim"],
        compressor_num_heads=ctor["num_heads"],
    )
    config.text_config.hidden_size = ctor["hidden_size"]
    return TokenPackerCompressor(config).eval()


@pytest.mark.parametrize("name", KINDS)
def test_every_case_has_known_kind(name):
    kind_of(load_case(METHOD, name))


def test_every_check_has_cases():
    assert {"projector", "feature_select", "param_counts", *HD_KINDS} <= set(KINDS.values()), KINDS


@pytest.mark.parametrize("name", cases_of(KINDS, "projector"))
def test_projector_matches_original(name):
    case = load_case(METHOD, name)
    weights = {f"model.mm_projector.{k}": v for k, v in case.group("weights").items()}
    converted = convert_state_dict(weights)
    module = compressor_for(case.manifest)
    module.load_state_dict({k.removeprefix("model.compressor."): v for k, v in converted.items()}, strict=True)
    inputs = case.group("inputs")
    with torch.no_grad():
        output = module(VisionFeatures(single_level=inputs["x_single"], multi_level=inputs["x_multi"]))
    torch.testing.assert_close(output, case.tensors["outputs.y"], atol=case.atol, rtol=0)


@pytest.mark.parametrize("name", cases_of(KINDS, "feature_select"))
def test_feature_selection_matches_original(name):
    case = load_case(METHOD, name)
    layers = sorted(case.group("inputs"))
    hidden_states = tuple(case.tensors[f"inputs.{layer}"] for layer in layers)
    num_layers = len(hidden_states) - 1
    config = CompressedVLMConfig(
        vision_config={
            "model_type": "clip_vision_model",
            "num_hidden_layers": num_layers,
            "hidden_size": 8,
            "num_attention_heads": 1,
            "image_size": 8,
            "patch_size": 2,
        },
        text_config=tiny_text_config(),
        vision_feature_layer=case.manifest.get("config", {}).get("mm_vision_select_layer", -2),
    )
    expected_single = case.tensors["outputs.image_features"]
    features = select_vision_features(
        hidden_states,
        vision_feature_layer=config.vision_feature_layer,
        num_patches=expected_single.shape[1],
        multi_level_feature_layers=config.multi_level_feature_layers,
    )
    assert config.multi_level_feature_layers == [12, 16, 22, 23]
    torch.testing.assert_close(features.single_level, expected_single, atol=0, rtol=0)
    torch.testing.assert_close(features.multi_level, case.tensors["outputs.image_features_multi"], atol=0, rtol=0)
