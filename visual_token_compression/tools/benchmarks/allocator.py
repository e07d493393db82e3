"""Keep the memory a pass frees inside the process, so that no timing pays for page faults.

glibc's malloc hands a large free block back to the kernel (`munmap`, or trimming the heap's top) once it passes
thresholds that glibc adapts as the process runs; the next pass then faults every page in again. How often that
happens depends on which passes ran before: in one process a prefill of SmolLM2-135M's shape over 642 tokens
faulted in 90,000 pages (350 MiB) every time and took 20 % longer than in another whose earlier passes had raised
the thresholds. Fixing both thresholds makes every row of a run pay the same, nothing, whatever ran before it (the
effect PyTorch's CPU performance guide gets by preloading jemalloc or tcmalloc).
"""

from __future__ import annotations

import ctypes
import platform

# mallopt's parameters (malloc.h).
M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
# Blocks up to this size come from the heap: glibc's largest allowed value on 64-bit systems.
MMAP_THRESHOLD_BYTES = 32 << 20
# Free memory at the heap's top is kept up to this size instead of being returned to the kernel.
TRIM_THRESHOLD_BYTES = 1 << 30


def keep_freed_memory() -> str:
    """Fix glibc's malloc thresholds for this process; returns the allocator in words, for the run's header.

    Other C libraries are left as they are, and the words say so.
    """
    if platform.libc_ver()[0] != "glibc":
        return "the C library's malloc, as configured (not glibc: thresholds not fixed)"
    libc = ctypes.CDLL(None)
    for parameter, value in ((M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES), (M_TRIM_THRESHOLD, TRIM_THRESHOLD_BYTES)):
        if not libc.mallopt(parameter, value):
            raise RuntimeError(f"glibc's mallopt refused parameter {parameter} = {value}.")
    return (
        f"glibc malloc, freed memory kept (mmap threshold {MMAP_THRESHOLD_BYTES >> 20} MiB, "
        f"trim threshold {TRIM_THRESHOLD_BYTES >> 20} MiB)"
    )
