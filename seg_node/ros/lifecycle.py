"""``segmenter_lifecycle``: the segmenter as a managed (lifecycle) node, for robot stacks that bring perception up
and down with their lifecycle managers (Nav2, MoveIt task pipelines).

The same parts as ``segmenter`` (``seg_node.ros.node.SegmenterCore``), driven by transitions:

=============  =====================================================================================================
``configure``  reads and validates the parameters, loads and warms the model; fails (back to unconfigured) with
               the parameter or file and the reason in the log. Start-up-only parameters (``model.*``,
               ``backend.*``, topics, QoS) may be changed while unconfigured, so a failed configure can be retried.
``activate``   creates the subscriptions, publishers, ~/segment_points, the timers and the worker threads
``deactivate`` stops the worker threads and removes the topics; the model stays loaded
``cleanup``    frees the model (back to unconfigured)
``shutdown``   frees everything, from any state
=============  =====================================================================================================

Only ``rclpy.lifecycle`` API that Humble, Jazzy and Kilted share is used (LifecycleNode, LifecycleState,
TransitionCallbackReturn).
"""
from __future__ import annotations

import sys
from typing import Any

from rclpy.lifecycle import LifecycleNode, LifecycleState, TransitionCallbackReturn

from seg_node.ros.node import SegmenterCore
from seg_node.ros.params import NODE_NAME
from seg_node.ros.process import run
from seg_node.ros.startup import StartupError

__all__ = ["ManagedSegmenterNode", "main"]


class ManagedSegmenterNode(SegmenterCore, LifecycleNode):
    def __init__(self, **node_kwargs: Any) -> None:
        LifecycleNode.__init__(self, NODE_NAME, **node_kwargs)
        self.init_groups()
        self._configured = False
        self.get_logger().info("segmenter (managed) waiting for configure")

    def on_configure(self, state: LifecycleState) -> TransitionCallbackReturn:
        try:
            self.load(startup_locked=lambda: self._configured)
        except StartupError as exc:
            self.get_logger().error(f"configure failed: {exc}")
            self.unload()
            return TransitionCallbackReturn.FAILURE
        self._configured = True
        self.get_logger().info(f"configured: model loaded ({self.segmenter.backend.describe()})")
        return TransitionCallbackReturn.SUCCESS

    def on_activate(self, state: LifecycleState) -> TransitionCallbackReturn:
        self.wire()
        return TransitionCallbackReturn.SUCCESS

    def on_deactivate(self, state: LifecycleState) -> TransitionCallbackReturn:
        self.unwire()
        self.get_logger().info("deactivated: topics removed, model kept")
        return TransitionCallbackReturn.SUCCESS

    def on_cleanup(self, state: LifecycleState) -> TransitionCallbackReturn:
        self.unload()
        self._configured = False
        self.get_logger().info("cleaned up: model released")
        return TransitionCallbackReturn.SUCCESS

    def on_shutdown(self, state: LifecycleState) -> TransitionCallbackReturn:
        self.unwire()
        self.unload()
        self._configured = False
        self.get_logger().info("shut down")
        return TransitionCallbackReturn.SUCCESS

    def on_error(self, state: LifecycleState) -> TransitionCallbackReturn:
        self.unwire()
        self.unload()
        self._configured = False
        return TransitionCallbackReturn.SUCCESS


def main(argv: list[str] | None = None) -> int:
    return run(ManagedSegmenterNode, argv)


if __name__ == "__main__":
    sys.exit(main())
