"""The documented public path of ``mask_from_points`` (DESIGN: ``seg_node.prompting.mask_from_points``)."""
from seg_node.processing.prompting import PromptParams, mask_from_points

__all__ = ["PromptParams", "mask_from_points"]
