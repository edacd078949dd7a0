"""gen2seg networks. ``spec`` and ``checkpoints`` are torch-free; ``sd`` and ``mae`` import torch."""
