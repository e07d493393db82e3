"""QueCC against tensors and behaviour recorded from the original code, for every case in the fixture folder."""

from __future__ import annotations

import pytest
import torch

from tests.golden import assert_index_lists_every_file, cases_of, classify, load_case
from visual_token_compression import QueCCConfig
from visual_token_compression.modeling.layers import GeluMLP
from visual_token_compression.modeling.quecc import QueCCCompressor
from visual_token_compression.modeling.vision import VisionFeatures, select_vision_features
from visual_token_compression.tools.conversion.quecc import convert_state_dict
from visual_token_compression.tools.tiny import byte_tokenizer, tiny_text_config

METHOD = "quecc"
PREFIX = "model.mm_projector.0."
# Original intermediate name -> our submodule whose output it is.
INTERMEDIATES = {
    "text_projection": "text_norm",
    "q_proj": "query_norm",
    "q_downsample": "query_downsample",
    "k_proj": "key_norm",
    "v_proj": "value_norm",
    "clip_attn": "attn",
}


# Files that are not tensor cases, each with the test that reads it.
AUXILIARY = {
    "index": "index",  # test_index_lists_every_file
    "quecc_failure_cases": "failure_cases",  # test_settings_the_original_crashes_on_are_config_errors
    "query_extraction": "query_extraction",  # test_query_extraction_reproduces_original_where_it_is_right
    "scaling_law_fit": "scaling_law",  # tests/test_scaling.py
}


def kind_of(case) -> str:
    if case.name in AUXILIARY:
        return AUXILIARY[case.name]
    names = set(case.tensors)
    if any(name.startswith("inputs.hidden_states.") for name in names):
        return "feature_select"
    if {"inputs.x", "inputs.x_multi", "inputs.text_features"} <= names:
        weights = case.group("weights")
        return "projector" if any(key.startswith("model.mm_projector.") for key in weights) else "quecc"
    raise case.unknown("QueCC")


KINDS = classify(METHOD, kind_of)


def config_for(dims: dict, text_width: int) -> QueCCConfig:
    """Our config at the case's widths: a tower with patch_size 1 gives a grid x grid patch grid."""
    width = dims.get("vision_width_E", dims.get("E(mm_hidden_size)"))
    levels = dims["multi_level_width"] // width
    text_config = tiny_text_config()
    text_config.hidden_size = text_width
    config = QueCCConfig(
        vision_config={
            "model_type": "clip_vision_model",
            "hidden_size": width,
            "image_size": dims["grid"],
            "patch_size": 1,
            "num_hidden_layers": levels,
            "num_attention_heads": 1,
        },
        text_config=text_config,
        multi_level_feature_layers=list(range(1, levels + 1)),
        kernel_size=dims.get("kernel_size", dims.get("kernel")),
        stride=dims["stride"],
        compressor_num_heads=dims.get("num_heads", dims.get("heads")),
    )
    assert config.image_seq_length == dims["num_tokens_out"]
    return config


def load_module(case, config: QueCCConfig, llm_width: int | None = None) -> QueCCCompressor:
    module = QueCCCompressor(config).eval()
    if llm_width is not None:
        # The fixture's query width (48) differs from its LLM width (40); in a real VLM both are the LLM's.
        module.out_mlp = GeluMLP(config.vision_config.hidden_size, llm_width, llm_width)
    weights = case.group("weights")
    if kind_of(case) == "quecc":
        weights = {PREFIX + key: value for key, value in weights.items()}
    converted = {k.removeprefix("model.compressor."): v for k, v in convert_state_dict(weights).items()}
    missing, unexpected = module.load_state_dict(converted, strict=False)
    assert not unexpected
    # The quecc_* cases hold the QueCC module only; the MLP after it is ours alone.
    assert all(key.startswith("out_mlp.") for key in missing) or not missing
    if kind_of(case) == "projector":
        assert not missing
    return module


@pytest.mark.parametrize("name", KINDS)
def test_every_case_has_known_kind(name):
    kind_of(load_case(METHOD, name))


def test_every_check_has_cases():
    assert set(AUXILIARY.values()) | {"quecc", "projector", "feature_select"} <= set(KINDS.values()), KINDS


@pytest.mark.parametrize("name", cases_of(KINDS, "index"))
def test_index_lists_every_file(name):
    """The index names exactly the folder's files, and each tensor file byte for byte (not the manifests: three
    were edited after the index was written)."""
    assert_index_lists_every_file(METHOD, name, checksummed=lambda file: file.endswith(".safetensors"))


@pytest.mark.parametrize("name", cases_of(KINDS, "quecc"))
def test_module_outputs_intermediates_and_gradients_match_original(name):
    case = load_case(METHOD, name)
    inputs = case.group("inputs")
    module = load_module(case, config_for(case.manifest["dims"], inputs["text_features"].shape[-1]))

    captured = {}
    for original, ours in INTERMEDIATES.items():
        submodule = module.get_submodule(ours)
        submodule.register_forward_hook(lambda _m, _i, out, key=original: captured.__setitem__(key, out))
    leaves = {key: inputs[key].clone().requires_grad_(True) for key in ("x", "x_multi", "text_features")}
    output = module.pack(leaves["x"], leaves["x_multi"], leaves["text_features"].squeeze(1))
    torch.testing.assert_close(output, case.tensors["outputs.output"], atol=case.atol, rtol=0)

    expected_intermediates = case.group("outputs.intermediate")
    for key, expected in expected_intermediates.items():
        torch.testing.assert_close(captured[key].reshape(expected.shape), expected, atol=case.atol, rtol=0)

    loss = (output * inputs["grad_weight_for_loss"]).sum()
    torch.testing.assert_close(loss.reshape(1), case.tensors["outputs.loss"], atol=case.atol * 10, rtol=1e-6)
    loss.backward()
    grads = case.group("grads")
    input_grads = {k.removeprefix("inputs."): v for k, v in grads.items() if k.startswith("inputs.")}
    param_grads = {PREFIX + k: v for k, v in grads.items() if not k.startswith("inputs.")}
    assert param_grads, "the case holds no parameter gradients"
    ours = dict(module.named_parameters())
    for key, expected in convert_state_dict(param_grads).items():
        torch.testing.assert_close(ours[key.removeprefix("model.compressor.")].grad, expected, atol=case.atol, rtol=0)
    for key, expected in input_grads.items():
        torch.testing.assert_close(leaves[key].grad, expected, atol=case.atol, rtol=0)


@pytest.mark.parametrize("name", cases_of(KINDS, "projector"))
def test_projector_with_checkpoint_keys_matches_original(name):
    case = load_case(METHOD, name)
    dims, inputs = case.manifest["dims"], case.group("inputs")
    config = config_for(dims, inputs["text_features"].shape[-1])
    module = load_module(case, config, llm_width=dims["D(llm hidden_size)"])
    features = VisionFeatures(single_level=inputs["x"], multi_level=inputs["x_multi"])
    with torch.no_grad():
        packed = module.pack(inputs["x"], inputs["x_multi"], inputs["text_features"].squeeze(1))
        output = module(features, inputs["text_features"].squeeze(1))
    torch.testing.assert_close(packed, case.tensors["outputs.intermediate.quecc"], atol=case.atol, rtol=0)
    torch.testing.assert_close(output, case.tensors["outputs.output"], atol=case.atol, rtol=0)


@pytest.mark.parametrize("name", cases_of(KINDS, "feature_select"))
def test_feature_selection_matches_original(name):
    case = load_case(METHOD, name)
    hidden_states = tuple(case.tensors[f"inputs.{key}"] for key in sorted(case.group("inputs")))
    config = QueCCConfig(
        vision_config={
            "model_type": "clip_vision_model",
            "num_hidden_layers": len(hidden_states) - 1,
            "hidden_size": 8,
            "num_attention_heads": 1,
            "image_size": 8,
            "patch_size": 2,
        },
        text_config=tiny_text_config(),
        compressor_num_heads=1,
    )
    assert config.multi_level_feature_layers == case.manifest["settings"]["layers (hard-coded default arg)"]
    expected = case.tensors["outputs.image_features"]
    features = select_vision_features(
        hidden_states, config.vision_feature_layer, expected.shape[1], config.multi_level_feature_layers
    )
    torch.testing.assert_close(features.single_level, expected, atol=0, rtol=0)
    torch.testing.assert_close(features.multi_level, case.tensors["outputs.image_features_multi"], atol=0, rtol=0)


@pytest.mark.parametrize("name", cases_of(KINDS, "failure_cases"))
def test_settings_the_original_crashes_on_are_config_errors(name):
    results = load_case(METHOD, name).manifest["results"]
    for result in results:
        if "grid" not in result:
            if "kernel/stride" in result["case"]:
                for field in ("kernel_size", "stride"):
                    with pytest.raises(ValueError, match=field):
                        QueCCConfig(text_config=tiny_text_config(), **{field: None})
            elif "text dim" in result["case"]:
                # Our query width is the LLM's width, read from text_config: it cannot be left unset.
                assert "text_embedding_size" not in QueCCConfig.__init__.__code__.co_varnames
            else:
                raise AssertionError(f"Unknown failure case {result['case']!r}")
            continue
        dims = {
            "vision_width_E": result["E"],
            "multi_level_width": 4 * result["E"],
            "grid": result["grid"],
            "kernel_size": result["kernel"],
            "stride": result["stride"],
            "num_heads": result["heads"],
            "num_tokens_out": result["conv_out_grid"] ** 2,
        }
        if not result["ok"]:
            with pytest.raises(ValueError, match="compressor_num_heads|does not divide"):
                config_for(dims, 48)
            continue
        module = QueCCCompressor(config_for(dims, 48)).eval()
        grid, width = result["grid"], result["E"]
        with torch.no_grad():
            output = module.pack(
                torch.randn(1, grid**2, width), torch.randn(1, grid**2, 4 * width), torch.randn(1, 48)
            )
        assert list(output.shape) == result["out_shape"]
        assert module.window == result["window"]


def _row_text(pieces: list[str]) -> str:
    """The original's token pieces as our text: BOS comes from the tokenizer, everything else is literal."""
    return "".join(piece for piece in pieces if piece != "<s>")


# Rows where we deliberately differ from the original (see docs/quecc.md, "Deviations").
DELIBERATE = {
    # No turn marker: the whole rest is the question. The original gives "" (pass queries=[""] for plain captions).
    "plain_template_pretraining": ["a dog running on the beach"],
    # The original's find("ASSISTANT") == -1 drops the last character.
    "no_assistant_marker": ["Describe the image"],
    "no_newline_no_assistant": ["Describe the image"],
    # One query per image, aligned; the original emits two copies and shifts every later row's query.
    "two_image_tokens_one_row": ["first\nCompare them.", "Compare them."],
}


@pytest.mark.parametrize("name", cases_of(KINDS, "query_extraction"))
def test_query_extraction_reproduces_original_where_it_is_right(name):
    fixture = load_case(METHOD, name).manifest
    from visual_token_compression.processing.base import build_image_processor
    from visual_token_compression.processing.quecc import QueCCProcessor

    processor = QueCCProcessor(
        build_image_processor(QueCCConfig().vision_config), byte_tokenizer(), image_seq_length=1
    )
    rows = fixture["row_pieces"]
    original_by_row = {
        r["rows"][0]: r["query_text_passed_to_encode_images"] for r in fixture["results"] if r["batch_size"] == 1
    }
    for result in fixture["results"]:
        expected = []
        for row in result["rows"]:
            if "<image>" not in rows[row]:
                assert result["query_text_passed_to_encode_images"][result["rows"].index(row)] == "image"
                continue  # text-only rows have no image, hence no query (the original encodes a zero image)
            expected += DELIBERATE[row] if row in DELIBERATE else original_by_row[row]
        ours = processor.extract_queries([_row_text(rows[row]) for row in result["rows"]])
        assert ours == expected, result["rows"]
    for row, ours in DELIBERATE.items():
        if row in original_by_row:
            assert original_by_row[row] != ours  # each listed difference is a real difference
