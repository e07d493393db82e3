"""Measuring one prefill or one generation: latency, per-part time, KV-cache bytes and peak memory."""

from __future__ import annotations

import itertools
import time

import torch
from transformers.generation.streamers import BaseStreamer


def synchronize(device: torch.device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def cache_bytes(cache) -> int:
    """Bytes held by the keys and values of every layer of a transformers `Cache`."""
    return sum(layer.keys.nbytes + layer.values.nbytes for layer in cache.layers if layer.keys is not None)


def timed_call(fn, device: torch.device):
    """(result, seconds) of `fn()` with the device synchronised on both ends."""
    synchronize(device)
    start = time.perf_counter()
    result = fn()
    synchronize(device)
    return result, time.perf_counter() - start


class TokenClock(BaseStreamer):
    """Timestamps of what `generate` streams: the prompt first, then every new token."""

    def __init__(self, device: torch.device):
        self.device = device
        self.times: list[float] = []

    def put(self, value):
        synchronize(self.device)
        self.times.append(time.perf_counter())

    def end(self):
        pass

    def decode_tokens_per_second(self) -> float:
        """Tokens after the first over the time they took: the decode rate without the prefill."""
        new = self.times[1:]
        if len(new) < 2:
            raise ValueError("Decode speed needs at least two new tokens; raise --new-tokens.")
        return (len(new) - 1) / (new[-1] - new[0])


def peak_memory_bytes(fn, device: torch.device) -> int:
    """Peak of memory allocated by `fn()` above what was allocated before it.

    CUDA reads the allocator's peak; on CPU the profiler's allocation/free events are replayed in time order.
    """
    if device.type == "cuda":
        synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
        fn()
        synchronize(device)
        return torch.cuda.max_memory_allocated(device) - before
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    changes = sorted(
        (event.time_range.start, event.cpu_memory_usage if event.name == "[memory]" else event.self_cpu_memory_usage)
        for event in prof.events()
    )
    return max(itertools.accumulate((change for _, change in changes), initial=0))


def _cpu_sdpa_flops(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
    from torch.utils.flop_counter import sdpa_flop_count

    return sdpa_flop_count(query_shape, key_shape, value_shape)


def counted_flops(fn) -> dict[str, int]:
    """FLOPs of `fn()` per module path ('Global' is the total), from `torch.utils.flop_counter`.

    The counter has no formula for the CPU flash-attention kernel SDPA runs on, so it is given the one of the other
    SDPA kernels; otherwise attention would count as free on CPU.
    """
    from torch.utils.flop_counter import FlopCounterMode

    mapping = {torch.ops.aten._scaled_dot_product_flash_attention_for_cpu: _cpu_sdpa_flops}
    with FlopCounterMode(display=False, custom_mapping=mapping) as counter, torch.inference_mode():
        fn()
    return {name: sum(by_op.values()) for name, by_op in counter.get_flop_counts().items()}
