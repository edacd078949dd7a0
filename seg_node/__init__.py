"""seg_node: category-agnostic instance masks and grasp-ready segments from the gen2seg models.

Importing this package (and everything outside ``seg_node.models`` and ``seg_node.backends.torch_backend``)
never imports torch, so the runtime runs on a robot with only numpy, OpenCV and an inference backend.
"""

__version__ = "0.1.0"
