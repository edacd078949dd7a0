"""Inference backends behind one interface (``base.Backend``); see ``create_backend``."""
