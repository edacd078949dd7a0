"""seg_node.ros.allocator: frame-sized buffers stay on the heap instead of being mapped and unmapped per frame.

Each case runs in its own interpreter: the setting is process-wide. glibc's ``mallinfo2`` says where a live
allocation sits (``hblkhd``: bytes in mmapped blocks), so the checks read the allocator's own accounting.
"""
from __future__ import annotations

import json
import os
import platform
import subprocess
import sys

import pytest

pytestmark = pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="the allocator setting is glibc's")

PROBE = r"""
import ctypes, json, sys
import numpy as np
from seg_node.ros.allocator import keep_frame_buffers

class MallInfo2(ctypes.Structure):
    _fields_ = [(n, ctypes.c_size_t) for n in
                ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks", "keepcost")]

libc = ctypes.CDLL("libc.so.6")
libc.mallinfo2.restype = MallInfo2
said = keep_frame_buffers() if sys.argv[1] == "keep" else ""
before = libc.mallinfo2().hblkhd
frame = np.ones((720, 1280, 3), np.float32)  # an 11 MB colour map, the first of its size in this process
mapped = libc.mallinfo2().hblkhd - before
print(json.dumps({"said": said, "mapped": mapped}))
"""


def probe(mode: str, **env: str) -> dict:
    out = subprocess.run([sys.executable, "-c", PROBE, mode], env={**os.environ, **env}, capture_output=True,
                         text=True, timeout=60, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_frame_buffers_come_from_the_heap_once_kept() -> None:
    frame_bytes = 720 * 1280 * 3 * 4
    env = {"GLIBC_TUNABLES": ""}
    assert probe("default", **env)["mapped"] >= frame_bytes  # glibc's default: a fresh mapping, unmapped on free
    kept = probe("keep", **env)
    assert kept["mapped"] == 0
    assert "32 MiB" in kept["said"]


def test_a_users_own_malloc_tunables_win() -> None:
    kept = probe("keep", GLIBC_TUNABLES="glibc.malloc.mmap_threshold=1048576")
    assert "GLIBC_TUNABLES" in kept["said"]
    assert kept["mapped"] >= 720 * 1280 * 3 * 4  # the user's 1 MiB threshold still maps the frame
