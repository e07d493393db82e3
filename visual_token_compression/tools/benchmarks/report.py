"""The benchmark's outputs: JSON rows, a markdown table and a speed-up plot."""

from __future__ import annotations

import json
from pathlib import Path

COLUMNS = (
    ("label", "row", "{}"),
    ("visual_tokens", "visual tok", "{}"),
    ("prefill_tokens", "prefill tok", "{}"),
    ("prefill_ms", "prefill ms (median)", "{:.1f}"),
    ("spread", "min-max ms", "{}"),
    ("prefill_speedup", "speedup", "{:.2f}x"),
    ("ideal_speedup", "ideal", "{:.2f}x"),
    ("efficiency", "measured/ideal", "{:.0%}"),
    ("ideal_speedup_llm", "ideal LLM-only", "{:.2f}x"),
    ("compressor_share", "compressor time", "{:.1%}"),
    ("compressor_flops_share", "compressor FLOPs", "{:.1%}"),
    ("overhead", "overhead (+-95%)", "{}"),
    ("vs_bare_llm", "bare LLM / row", "{:.3f}"),
    ("decode_tokens_per_s", "decode tok/s", "{:.1f}"),
    ("kv_cache_bytes", "KV cache", "{}"),
    ("peak_memory_bytes", "peak mem", "{}"),
)


BYTES_PER_KIB = 1024


def human_bytes(value) -> str:
    """A byte count in B, KiB, MiB or GiB ('-' for none)."""
    if value is None:
        return "-"
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(value) < BYTES_PER_KIB or unit == "GiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= BYTES_PER_KIB


def markdown_table(rows: list[dict]) -> str:
    lines = ["| " + " | ".join(title for _, title, _ in COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    for row in rows:
        cells = []
        for key, _, fmt in COLUMNS:
            if key == "spread":
                cells.append(f"{row['prefill_ms_min']:.1f}-{row['prefill_ms_max']:.1f}")
            elif key == "overhead":
                cells.append(f"{row['overhead']:.3f} +-{row['overhead_spread']:.1%}")
            elif key.endswith("_bytes"):
                cells.append(human_bytes(row[key]))
            elif row.get(key) is None:
                cells.append("-")
            else:
                cells.append(fmt.format(row[key]))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def write_json(rows: list[dict], path: str | Path):
    Path(path).write_text(json.dumps(rows, indent=2) + "\n")


def plot_speedups(rows: list[dict], path: str | Path, title: str = ""):
    """Measured (filled) and FLOPs-ideal (hollow) prefill speed-up against visual tokens, one colour per method."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(8, 5))
    methods = list(dict.fromkeys(row["method"] for row in rows))
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for index, method in enumerate(methods):
        colour = colours[index % len(colours)]
        for cached in (False, True):
            group = sorted(
                (r for r in rows if r["method"] == method and r["cached_image"] == cached),
                key=lambda r: r["visual_tokens"],
            )
            if not group:
                continue
            name = method + (" (cached image)" if cached else "")
            marker = "*" if cached else "o"
            tokens = [max(r["visual_tokens"], 0.5) for r in group]
            axes.plot(tokens, [r["prefill_speedup"] for r in group], marker=marker, color=colour, label=name)
            axes.plot(tokens, [r["ideal_speedup"] for r in group], marker=marker, color=colour, ls=":", mfc="none")
    axes.set_xscale("log", base=2)
    axes.set_yscale("log", base=2)
    axes.set_xlabel("visual tokens in the LLM (cached image: 0, drawn at 0.5)")
    axes.set_ylabel("prefill speed-up vs LLaVA (all patches)")
    axes.set_title(title or "measured (solid) vs FLOPs-ideal (dotted) prefill speed-up")
    axes.grid(True, which="both", alpha=0.3)
    axes.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)
