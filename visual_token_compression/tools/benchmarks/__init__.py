"""`vtc bench`: measured against ideal prefill speed-up, decode speed, memory and KV cache of every method."""

from .cli import bench_cli

__all__ = ["bench_cli"]
