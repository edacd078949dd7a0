"""Numpy / OpenCV processing stages of the runtime (no torch)."""
