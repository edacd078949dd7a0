"""gen2seg networks. ``spec``, ``checkpoints`` and ``onnx_format`` are torch-free; ``sd`` and ``mae`` import torch."""
