"""numba compilation for the runtime's pixel kernels (instance finding, resampling)."""
from __future__ import annotations

from typing import Callable

from numba import njit


def jit(fn: Callable) -> Callable:
    """Compile ``fn`` without the GIL (the node runs kernels on two threads at once), caching the machine code in
    ``__pycache__`` or the user's cache folder. numba refuses ``cache=True`` where neither is writable (a read-only
    install run without a home): compile per process."""
    try:
        return njit(cache=True, nogil=True, error_model="numpy")(fn)
    except RuntimeError:
        return njit(nogil=True, error_model="numpy")(fn)
