"""The registry owns every per-method fact: each registered type reaches `vtc bench`, `vtc convert` and the model
card without any of them naming it."""

from __future__ import annotations

import argparse

import pytest

from visual_token_compression import MODEL_TYPES
from visual_token_compression.benchmarks.presets import PRESETS
from visual_token_compression.benchmarks.runner import variants
from visual_token_compression.conversion.cli import build_parser
from visual_token_compression.hub import visual_token_budget
from visual_token_compression.tiny import tiny_text_config, tiny_vision_config


@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_every_type_has_bench_rows(preset):
    rows, _ = variants(PRESETS[preset])
    assert {row.model_type for row in rows} >= set(MODEL_TYPES)


def test_every_type_reaches_vtc_convert():
    parser = build_parser()
    sources = next(action for action in parser._actions if isinstance(action, argparse._SubParsersAction)).choices
    llava_hf = sources["llava-hf"].format_help()
    for name, entry in MODEL_TYPES.items():
        assert name in llava_hf
        assert (name in sources) == (entry.converter is not None)


@pytest.mark.parametrize("model_type", sorted(MODEL_TYPES))
def test_every_type_states_its_token_budget(model_type):
    entry = MODEL_TYPES[model_type]
    token_ids = {field: 3 + index for index, field in enumerate(entry.special_tokens)}
    config = entry.config_class(
        vision_config=tiny_vision_config(),
        text_config=tiny_text_config(),
        image_token_id=2,
        **token_ids,
        **entry.tiny_config_kwargs,
    )
    budget = visual_token_budget(config)
    assert str(config.image_seq_length) in budget["tokens_per_image"]
    assert budget["compression_ratio"].endswith(")") and "token_note" in budget
