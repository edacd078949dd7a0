"""gen2seg fine-tuning and deployment tools: loss, datasets, trainer, export to ONNX and TensorRT.

Its modules import torch (the package itself imports nothing heavy); the runtime in ``seg_node`` does not depend on it.
"""
