"""Keep frame-sized buffers in the process instead of handing them back to the kernel after every frame (glibc).

glibc serves blocks above its mmap threshold with a fresh ``mmap`` and unmaps them on ``free``, and trims freed heap
top above its trim threshold. Its dynamic threshold adapts only to the freeing thread's pattern, so in a node where
DDS, rclpy and numpy allocate and free a few MB per frame on several threads, every 1280×720 frame was page-faulted
and zeroed anew: about 2000 faults and 4 ms of CPU per frame received and published, half the node's CPU at 125 Hz
(bench/bench_node.py). Raising both thresholds makes those blocks come from, and return to, the heap.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import os
import platform

# mallopt parameters (malloc.h).
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
# glibc's ceiling for M_MMAP_THRESHOLD on 64-bit (HEAP_MAX_SIZE / 2): a 4K rgb8 frame or a 1080p float32 colour
# map is below it.
MMAP_THRESHOLD = 32 << 20
# glibc's own rule when it raises the threshold dynamically: trim at twice it.
TRIM_THRESHOLD = 2 * MMAP_THRESHOLD


def keep_frame_buffers() -> str:
    """Raise glibc's mmap and trim thresholds for this process; says what was done (for the start-up log).

    Left alone where the C library is not glibc, or where ``GLIBC_TUNABLES`` already sets malloc options.
    """
    if platform.libc_ver()[0] != "glibc":
        return "allocator left as is (not glibc)"
    if "glibc.malloc." in os.environ.get("GLIBC_TUNABLES", ""):
        return "allocator left as is (GLIBC_TUNABLES sets malloc options)"
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    if not (libc.mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD) and libc.mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD)):
        return "allocator left as is (mallopt refused the thresholds)"
    return f"allocator keeps buffers up to {MMAP_THRESHOLD >> 20} MiB on the heap (glibc mallopt)"
