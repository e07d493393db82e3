"""The demo's comparison: per model, visual tokens, held-out accuracy, prefill time and KV-cache bytes, as a table
and a plot, beside the same method's prefill speed-up and KV cache at a realistic shape (`demo_speed`). Prefills are
timed round-robin over the models (in rotated order) so that a busy machine slows all alike.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass, field
from pathlib import Path

import torch
from PIL import Image

from ..compat import output_cache
from .benchmarks.measure import cache_bytes, timed_call
from .benchmarks.report import human_bytes


@dataclass
class Entry:
    """One trained model of the comparison and what was measured of it."""

    method: str
    model: torch.nn.Module
    processor: object
    accuracy: float = 0.0
    answered: int = 0
    visual_tokens: int = 0
    kv_bytes: int = 0
    prefill_seconds: list[float] = field(default_factory=list)
    # The method's `vtc bench` row at the `small` preset's shapes with random weights (`demo_speed.realistic_rows`).
    realistic: dict | None = None

    @property
    def standard_error(self) -> float:
        return math.sqrt(self.accuracy * (1 - self.accuracy) / self.answered)


def prefill_inputs(entry: Entry, image: Image.Image, question: str) -> dict:
    """The processor's encoding of one question about one image, as the pipeline would prompt it."""
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": question}]}]
    prompt = entry.processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    return dict(entry.processor(images=image, text=prompt, return_tensors="pt").to(entry.model.device))


def measure_prefill(entries: list[Entry], images: list[Image.Image], question: str, repeats: int = 3):
    """Median-ready prefill times (one per image and repeat), visual tokens and KV-cache bytes of every entry."""
    prompts = [[prefill_inputs(entry, image, question) for image in images] for entry in entries]
    with torch.inference_mode():
        for entry, inputs in zip(entries, prompts, strict=True):
            entry.model.eval()
            image_token_id = entry.model.config.image_token_id
            entry.visual_tokens = int((inputs[0]["input_ids"] == image_token_id).sum())
            output = entry.model(**inputs[0], use_cache=True, logits_to_keep=1)  # also warms the model up
            entry.kv_bytes = cache_bytes(output_cache(output))
        for round_index in range(repeats * len(images)):
            for offset in range(len(entries)):
                entry = entries[(round_index + offset) % len(entries)]
                inputs = prompts[entries.index(entry)][round_index % len(images)]
                _, seconds = timed_call(
                    lambda entry=entry, inputs=inputs: entry.model(**inputs, use_cache=True, logits_to_keep=1),
                    entry.model.device,
                )
                entry.prefill_seconds.append(seconds)


def table(entries: list[Entry], chance: float) -> str:
    """A markdown table of the comparison, one row per model: the trained tiny models, then what the same settings
    cost at a realistic shape (random weights)."""
    lines = [
        "| method | visual tokens / image | held-out accuracy (± s.e.) | chance | prefill ms / image (median) "
        "| KV cache | realistic shape, random weights: visual tokens | prefill speed-up | KV cache (realistic) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for entry in entries:
        realistic = entry.realistic
        lines.append(
            f"| {entry.method} | {entry.visual_tokens} | {entry.accuracy:.3f} ± {entry.standard_error:.3f} "
            f"| {chance:.3f} | {1e3 * statistics.median(entry.prefill_seconds):.2f} | {human_bytes(entry.kv_bytes)} "
            f"| {realistic['visual_tokens']} | {realistic['prefill_speedup']:.2f}x "
            f"| {human_bytes(realistic['kv_cache_bytes'])} |"
        )
    return "\n".join(lines) + "\n"


def plot(entries: list[Entry], chance: float, path: str | Path):
    """Accuracy of the trained tiny models (standard errors, chance dashed) against their visual tokens, beside what
    the same settings buy at a realistic shape: prefill speed-up and KV cache against the visual tokens there."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (accuracy, speed, memory) = plt.subplots(1, 3, figsize=(14, 4))
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for index, entry in enumerate(entries):
        colour = colours[index % len(colours)]
        accuracy.errorbar(
            entry.visual_tokens,
            entry.accuracy,
            yerr=entry.standard_error,
            fmt="o",
            color=colour,
            capsize=4,
            label=entry.method,
        )
        tokens = entry.realistic["visual_tokens"]
        speed.plot(tokens, entry.realistic["prefill_speedup"], "o", color=colour)
        memory.plot(tokens, entry.realistic["kv_cache_bytes"] / 2**20, "o", color=colour)
    accuracy.axhline(chance, color="grey", ls="--", label="chance")
    accuracy.set_ylim(0, 1.05)
    accuracy.set_ylabel("held-out accuracy (± 1 s.e.)")
    accuracy.set_xlabel("visual tokens per image (trained tiny models)")
    accuracy.legend(fontsize=8)
    speed.set_ylabel("prefill speed-up over LLaVA")
    speed.set_ylim(bottom=0)
    memory.set_ylabel("KV cache after the prefill (MiB)")
    memory.set_ylim(bottom=0)
    for axes in (speed, memory):
        axes.set_xlabel("visual tokens per image (realistic shape, random weights)")
    for axes in (accuracy, speed, memory):
        axes.set_xscale("log", base=2)
        axes.grid(True, which="both", alpha=0.3)
    figure.suptitle("vtc demo: what compression costs in accuracy (trained, tiny) and buys in speed and memory")
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)
