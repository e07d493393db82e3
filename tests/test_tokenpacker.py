"""TokenPacker's config, widths and conversion (the numerics are in tests/parity)."""

from __future__ import annotations

import pytest
import torch

from tests.golden import load_case
from visual_token_compression import TokenPackerConfig
from visual_token_compression.modeling.tokenpacker import TokenPackerCompressor
from visual_token_compression.modeling.vision import VisionFeatures
from visual_token_compression.tools.conversion.tokenpacker import convert_state_dict
from visual_token_compression.tools.tiny import tiny_text_config, tiny_vision_config


def test_defaults_reproduce_the_released_models():
    config = TokenPackerConfig()
    assert config.vision_config.model_type == "clip_vision_model"
    assert (config.vision_config.image_size, config.vision_config.patch_size) == (336, 14)
    assert config.vision_feature_layer == -2
    assert config.multi_level_feature_layers == [12, 16, 22, 23]
    assert (config.compressor_num_heads, config.compressor_head_dim) == (8, 128)
    assert config.compressor_hidden_size == config.vision_config.hidden_size
    assert config.image_seq_length == 144


@pytest.mark.parametrize(("scale_factor", "tokens"), [(2, 144), (3, 64), (4, 36), (6, 16), (24, 1)])
def test_any_scale_that_divides_the_grid(scale_factor, tokens):
    assert TokenPackerConfig(scale_factor=scale_factor).image_seq_length == tokens


@pytest.mark.parametrize("scale_factor", [5, 7, 0])
def test_scale_that_does_not_divide_the_grid_is_refused(scale_factor):
    with pytest.raises(ValueError, match=f"scale_factor={scale_factor} must divide the vision grid of 24"):
        TokenPackerConfig(scale_factor=scale_factor)


def test_heads_must_divide_the_width():
    with pytest.raises(ValueError, match="compressor_num_heads=5 must divide"):
        TokenPackerConfig(compressor_num_heads=5)


def test_unknown_vision_layer_is_refused():
    with pytest.raises(ValueError, match="Vision feature layer 30 does not exist"):
        TokenPackerConfig(multi_level_feature_layers=[12, 30])


@pytest.mark.parametrize("llm_hidden", ["4096", "5120"])
def test_parameter_count_and_keys_match_the_release(llm_hidden):
    reference = load_case("tokenpacker", "projector_param_counts").manifest["by_llm_hidden"][llm_hidden]
    config = TokenPackerConfig(text_config={"model_type": "llama", "hidden_size": int(llm_hidden)})
    with torch.device("meta"):
        module = TokenPackerCompressor(config)
    assert sum(p.numel() for p in module.parameters()) == reference["total"]
    original = {
        f"model.mm_projector.{k}": torch.empty(shape, device="meta") for k, shape in reference["per_key_shape"].items()
    }
    converted = {k.removeprefix("model.compressor."): v.shape for k, v in convert_state_dict(original).items()}
    assert converted == {k: v.shape for k, v in module.state_dict().items()}


def test_no_hard_coded_widths():
    """Odd widths everywhere: tower 24, packer 20 with 5 heads, LLM 40, three levels."""
    config = TokenPackerConfig(
        vision_config={
            "model_type": "clip_vision_model",
            "hidden_size": 24,
            "num_attention_heads": 2,
            "image_size": 36,
            "patch_size": 6,
            "num_hidden_layers": 3,
        },
        text_config={
            **tiny_text_config().to_dict(),
            "hidden_size": 40,
            "num_attention_heads": 5,
            "num_key_value_heads": 5,
        },
        multi_level_feature_layers=[1, 2, 3],
        scale_factor=3,
        compressor_hidden_size=20,
        compressor_num_heads=5,
    )
    module = TokenPackerCompressor(config)
    features = VisionFeatures(torch.randn(2, 36, 24), torch.randn(2, 36, 72))
    assert module(features).shape == (2, 4, 40)


def test_missing_multi_level_features_is_an_error():
    config = TokenPackerConfig(
        vision_config=tiny_vision_config(), text_config=tiny_text_config(), compressor_head_dim=8
    )
    with pytest.raises(ValueError, match="multi-level"):
        TokenPackerCompressor(config)(VisionFeatures(torch.randn(1, 64, 32)))


def test_conversion_refuses_unknown_keys():
    with pytest.raises(KeyError, match="model.mm_projector.extra.weight"):
        convert_state_dict({"model.mm_projector.extra.weight": torch.zeros(1), "lm_head.weight": torch.zeros(1)})
