"""gen2seg fine-tuning and deployment tools: loss, datasets, trainer, export to ONNX and TensorRT.

Imports torch; the runtime in ``seg_node`` does not depend on this package.
"""
