"""Measuring one prefill or one generation: latency, per-part time, KV-cache bytes and peak memory."""

from __future__ import annotations

import gc
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
    """(result, seconds) of `fn()` with the device synchronised on both ends and, as `timeit` does, Python's garbage
    collector held off during it (the runner collects before each round of a row), so that no timing pays for a
    collection of the whole heap at a random point."""
    gc.disable()
    try:
        synchronize(device)
        start = time.perf_counter()
        result = fn()
        synchronize(device)
        return result, time.perf_counter() - start
    finally:
        gc.enable()


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


def _attended_sdpa_flops(query, key, value, dropout_p=0.0, is_causal=False, *, attn_mask=None, out_val=None, **_):
    """SDPA's scores and weighted values over the (query, key) pairs attended: all of them, the lower triangle with
    `is_causal` (top-left aligned, as SDPA's), or those a boolean or additive mask lets through."""
    batch, heads, queries, head_dim = query.shape
    keys, value_dim = key.shape[-2], value.shape[-1]
    if is_causal:  # query i sees keys 0..i
        pairs = batch * heads * sum(min(row + 1, keys) for row in range(queries))
    elif attn_mask is not None:
        attended = attn_mask if attn_mask.dtype == torch.bool else attn_mask > float("-inf")
        pairs = int(attended.expand(batch, heads, queries, keys).sum())
    else:
        pairs = batch * heads * queries * keys
    return 2 * pairs * (head_dim + value_dim)


_attended_sdpa_flops._get_raw = True  # called with the tensors (the mask's values), not only their shapes


def counted_flops(fn) -> dict[str, int]:
    """FLOPs of `fn()` per module path ('Global' is the total), from `torch.utils.flop_counter`.

    The CPU flash-attention kernel that SDPA runs on has no formula in the counter (attention would count as free),
    so it is given one that counts the pairs attended, the convention of `flops.attention`; the counter's own
    formulas for the other kernels count the whole (query x key) rectangle.
    """
    from torch.utils.flop_counter import FlopCounterMode

    mapping = {torch.ops.aten._scaled_dot_product_flash_attention_for_cpu: _attended_sdpa_flops}
    with FlopCounterMode(display=False, custom_mapping=mapping) as counter, torch.inference_mode():
        fn()
    return {name: sum(by_op.values()) for name, by_op in counter.get_flop_counts().items()}
