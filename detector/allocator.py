"""The C allocator's settings for inference: the forward pass's buffers reused from the heap, not mapped afresh.

glibc serves an allocation over its mmap threshold with fresh pages from the kernel and gives the heap's free top
back to the kernel once it exceeds the trim threshold. A forward pass of up to PASS_PIXELS (detector.model)
allocates and frees activation buffers of up to 13 MB dozens of times; with glibc's defaults (and its dynamic
threshold, which moves with what was last freed) many of them arrive as new pages the kernel has to fault in and
zero, every pass. Measured on one CPU thread, the model's share of a batch of eight 1024x768 photos cost 27.7 ms
a photo with the defaults and 18.9 ms with these thresholds, the process's peak memory unchanged (810 MB).
Allocations beyond MMAP_THRESHOLD (a decoded photo) are still mapped and unmapped on their own, and at most
TRIM_THRESHOLD of freed heap is kept.
"""

import ctypes

M_TRIM_THRESHOLD = -1  # mallopt parameters, from glibc's malloc.h
M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD = 16 * 2**20
TRIM_THRESHOLD = 64 * 2**20


def reuse_freed_memory() -> bool:
    """Set this process's allocator thresholds (module docstring); whether the C library took them (glibc does;
    elsewhere nothing changes). Process-wide: every later allocation of the process follows them."""
    mallopt = getattr(ctypes.CDLL(None), "mallopt", None)
    if mallopt is None:
        return False
    return bool(mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD))
