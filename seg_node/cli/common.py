"""What every command-line tool of the package shares: argument types and the one spelling of a size (HxW)."""
from __future__ import annotations

import argparse
from collections.abc import Callable


def positive(text: str) -> int:
    value = int(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return value


def non_negative(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {text}")
    return value


def hw_parser(minimum: int = 1) -> Callable[[str], tuple[int, int]]:
    """An argparse type for a size written HxW (height first, as every array shape here is), each side >= minimum."""

    def hw(text: str) -> tuple[int, int]:
        try:
            h, w = (int(v) for v in text.lower().split("x"))
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected HxW (height x width), e.g. 240x320, got {text!r}") from None
        if h < minimum or w < minimum:
            raise argparse.ArgumentTypeError(f"size must be at least {minimum}x{minimum} (HxW), got {text}")
        return h, w

    return hw


hw_size = hw_parser()
