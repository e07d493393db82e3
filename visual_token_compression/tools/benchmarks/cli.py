"""`vtc bench`: prefill/decode speed, memory and KV cache of every method against transformers' LLaVA."""

from __future__ import annotations

import argparse
import dataclasses
import platform
import sys
from pathlib import Path

import torch

from .presets import PRESETS
from .report import markdown_table, plot_speedups, write_json
from .runner import Benchmark

DTYPES = ("float32", "bfloat16", "float16")


def add_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    parser.add_argument("--preset", default="small", choices=sorted(PRESETS), help="geometry (tiny: seconds, CPU)")
    parser.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    parser.add_argument("--dtype", default=None, choices=DTYPES, help="default: float32 on CPU, bfloat16 on GPU")
    parser.add_argument("--repeats", type=int, default=None, help="timed prefill rounds (default: the preset's)")
    parser.add_argument("--decode-repeats", type=int, default=None, help="timed generate rounds")
    parser.add_argument(
        "--max-overhead-repeats",
        type=int,
        default=None,
        help="prefill rounds a row may get in all until its overhead is known to +-1.5%% or clearly within or over "
        "the 3%% budget (default: the preset's)",
    )
    parser.add_argument("--output", default=None, help="JSON file of the rows (default: bench_<preset>.json)")
    parser.add_argument("--markdown", default=None, help="also write the table here (it is always printed)")
    parser.add_argument("--plot", default=None, help="PNG of speed-up vs visual tokens (default: next to --output)")
    parser.add_argument("--no-memory", action="store_true", help="skip the peak-memory pass")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    return parser


def bench_cli(argv: list[str] | None = None) -> int:
    """Run the benchmark; returns the process exit code."""
    args = add_arguments(argparse.ArgumentParser(prog="vtc bench", description=__doc__)).parse_args(argv)
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    dtype = getattr(torch, args.dtype or ("float32" if device == "cpu" else "bfloat16"))
    if args.threads:
        torch.set_num_threads(args.threads)
    preset = PRESETS[args.preset]
    overrides = {
        "repeats": args.repeats,
        "decode_repeats": args.decode_repeats,
        "max_overhead_repeats": args.max_overhead_repeats,
    }
    preset = dataclasses.replace(preset, **{key: value for key, value in overrides.items() if value is not None})
    if preset.repeats < 1:
        raise SystemExit("--repeats must be at least 1.")

    benchmark = Benchmark(preset, device=device, dtype=dtype)
    rows = benchmark.run(measure_memory=not args.no_memory)
    output = Path(args.output or f"bench_{preset.name}.json")
    write_json(rows, output)
    table = markdown_table(rows)
    machine = f"{device} ({torch.cuda.get_device_name() if device.startswith('cuda') else platform.processor() or platform.machine()})"
    header = (
        f"preset `{preset.name}`, {machine}, {str(dtype).removeprefix('torch.')}, {torch.get_num_threads()} threads, "
        f"{preset.repeats} prefill rounds, {preset.decode_repeats} generate rounds of {preset.new_tokens} tokens\n"
        f"allocator: {benchmark.allocator}\n"
    )
    if benchmark.skipped:
        header += "skipped: " + "; ".join(benchmark.skipped) + "\n"
    print("\n" + header + "\n" + table)
    if args.markdown:
        Path(args.markdown).write_text(header + "\n" + table)
    plot = Path(args.plot) if args.plot else output.with_suffix(".png")
    plot_speedups(rows, plot, title=f"prefill speed-up, preset {preset.name} on {device}")
    print(f"wrote {output}, {plot}" + (f", {args.markdown}" if args.markdown else ""))
    return 0


if __name__ == "__main__":
    sys.exit(bench_cli())
