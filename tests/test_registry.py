"""Every registered type reaches each tool: the tools' own tables cover the registry, `vtc bench` has its rows,
`vtc convert` its subcommands, the model card its token budget."""

from __future__ import annotations

import pytest

from visual_token_compression import MODEL_TYPES
from visual_token_compression.tools.benchmarks.presets import PRESETS
from visual_token_compression.tools.benchmarks.runner import variants
from visual_token_compression.tools.benchmarks.sweeps import BENCH_SWEEPS, COMPRESSOR_FLOPS, LLM_FLOPS
from visual_token_compression.tools.conversion.cli import build_parser
from visual_token_compression.tools.conversion.converters import CONVERTERS, LLAVA_PROJECTORS
from visual_token_compression.tools.hub import visual_token_budget
from visual_token_compression.tools.tiny import tiny_text_config, tiny_vision_config


@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_every_type_has_bench_rows(preset):
    rows, _ = variants(PRESETS[preset])
    assert {row.model_type for row in rows} >= set(MODEL_TYPES)


TOOL_TABLES = {
    "CONVERTERS": CONVERTERS,
    "LLAVA_PROJECTORS": LLAVA_PROJECTORS,
    "BENCH_SWEEPS": BENCH_SWEEPS,
    "COMPRESSOR_FLOPS": COMPRESSOR_FLOPS,
    "LLM_FLOPS": LLM_FLOPS,
}


@pytest.mark.parametrize("table", sorted(TOOL_TABLES))
def test_each_tool_table_covers_exactly_the_registered_types(table):
    """A type missing from a tool's table would fail in that tool only (a KeyError in `vtc convert` or `vtc bench`);
    a stale key would name a type that no longer exists."""
    assert set(TOOL_TABLES[table]) == set(MODEL_TYPES)


@pytest.mark.parametrize("model_type", sorted(MODEL_TYPES))
def test_every_type_reaches_vtc_convert(model_type):
    """`vtc convert <type>` parses exactly for the types with original checkpoints; `llava-hf` takes every type."""
    parser = build_parser()
    original = [model_type, "--checkpoint", "in", "--vision-tower", "tower", "--output", "out"]
    if CONVERTERS[model_type] is None:
        with pytest.raises(SystemExit):
            parser.parse_args(original)
    else:
        assert parser.parse_args(original).source == model_type
    args = parser.parse_args(["llava-hf", "--llava", "in", "--model-type", model_type, "--output", "out"])
    assert (args.source, args.model_type) == ("llava-hf", model_type)


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
