"""What the demo's compression buys at a realistic shape: the same method settings measured by `vtc bench` on one of
its presets (`small` by default: a ViT-B/16-384 tower with 576 patches before SmolLM2-135M's LLM, random weights), in
the same run.

At the demo's own widths (a 2-layer, 64-wide LLM) the tower and the compressor dominate the prefill, so its timings
show no gain; the trained accuracy and this speed-up together are what a user weighs.
"""

from __future__ import annotations

from dataclasses import replace

from .benchmarks.presets import PRESETS
from .benchmarks.runner import BASELINE, Benchmark
from .benchmarks.sweeps import Variant

# Enough rounds for a median; no parts, overhead rounds, decode timing or peak-memory pass: this runs inside
# `make demo`'s 5-minute budget.
TIMED_ROUNDS = 3


def shape_description(preset_name: str) -> str:
    """The preset's widths in words, for the demo's printout; an unknown preset is a `ValueError`."""
    if preset_name not in PRESETS:
        raise ValueError(f"no bench preset {preset_name!r}; choose one of {', '.join(PRESETS)}.")
    preset = PRESETS[preset_name]
    vision, text = preset.vision_config(), preset.text_config()
    patches = (vision.image_size // vision.patch_size) ** 2
    return (
        f"a {vision.num_hidden_layers}-layer {vision.hidden_size}-wide tower on {patches} patches, "
        f"a {text.num_hidden_layers}-layer {text.hidden_size}-wide LLM (`vtc bench --preset {preset_name}`)"
    )


def realistic_rows(model_type: str, config_kwargs: dict, label: str, preset_name: str = "small") -> dict[str, dict]:
    """`vtc bench` rows (its JSON fields: `prefill_speedup`, `kv_cache_bytes`, `visual_tokens`, ...) of LLaVA and of
    `model_type` with `config_kwargs` (the settings given to the demo; the preset's widths otherwise), keyed
    "baseline" and "method"."""
    preset = replace(PRESETS[preset_name], repeats=TIMED_ROUNDS, max_overhead_repeats=TIMED_ROUNDS, decode_repeats=0)
    benchmark = Benchmark(preset)
    variants = [
        Variant(f"llava ({benchmark.grid**2})", BASELINE),
        Variant(label, model_type, model_type, config_kwargs),
    ]
    baseline, method = benchmark.measure(variants, measure_memory=False, progress=False, parts=False)
    return {"baseline": baseline, "method": method}
