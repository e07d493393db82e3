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


class PartTimer:
    """Wall time spent inside given modules or methods during one call, via hooks (nothing in the model changes).

    `parts` maps a part name to modules and/or (owner, method name) pairs; one part's time is the sum over them.
    """

    def __init__(self, device: torch.device, parts: dict[str, list]):
        self.device = device
        self.parts = parts
        self.seconds = dict.fromkeys(parts, 0.0)
        self._undo = []

    def _start(self):
        synchronize(self.device)
        return time.perf_counter()

    def _add(self, name, start):
        synchronize(self.device)
        self.seconds[name] += time.perf_counter() - start

    def __enter__(self):
        for name, targets in self.parts.items():
            for target in targets:
                if isinstance(target, torch.nn.Module):
                    starts = []
                    pre = target.register_forward_pre_hook(lambda *_, s=starts: s.append(self._start()))
                    post = target.register_forward_hook(lambda *_, s=starts, n=name: self._add(n, s.pop()))
                    self._undo += [pre.remove, post.remove]
                else:
                    owner, method = target
                    original = getattr(owner, method)

                    def timed(*args, _original=original, _name=name, **kwargs):
                        start = self._start()
                        result = _original(*args, **kwargs)
                        self._add(_name, start)
                        return result

                    setattr(owner, method, timed)
                    self._undo.append(lambda o=owner, m=method: delattr(o, m))
        return self

    def __exit__(self, *exc):
        for undo in reversed(self._undo):
            undo()
        self._undo = []


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
