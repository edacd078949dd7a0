"""The process around a segmenter node (``segmenter`` and ``segmenter_lifecycle``): the Fast DDS profile and the
frame-buffer allocator setting before DDS starts, rclpy without its own signal handlers, the node spun until SIGINT,
SIGTERM or its ``exit_code``, then the worker stopped, the node destroyed and rclpy shut down (which removes the
process's Fast DDS shared-memory files). Exit codes: 0, ``EXIT_STARTUP`` (bad parameter, model or ROS arguments),
or the node's ``exit_code`` (``EXIT_WORKER``).
"""
from __future__ import annotations

import signal
import sys
import threading
from typing import Any, Callable

import rclpy

from seg_node.ros.allocator import keep_frame_buffers
from seg_node.ros.executor import NodeExecutor
from seg_node.ros.params import NODE_NAME
from seg_node.ros.startup import EXIT_STARTUP, StartupError, apply_fastdds_profile

__all__ = ["run"]


def _init_rclpy(args: list[str]) -> None:
    """rclpy.init without rclpy's own signal handlers (this module installs its own), where the rclpy has them."""
    try:
        from rclpy.signals import SignalHandlerOptions

        rclpy.init(args=args, signal_handler_options=SignalHandlerOptions.NO)
    except (ImportError, TypeError):
        rclpy.init(args=args)


def run(make_node: Callable[[], Any], argv: list[str] | None = None) -> int:
    """Start rclpy, build the node with ``make_node`` (a ``SegmenterCore`` node: ``service_group``, ``exit_code``,
    ``close``) and spin it until SIGINT/SIGTERM or its ``exit_code``."""
    args = list(sys.argv if argv is None else argv)
    profile = apply_fastdds_profile()  # before DDS starts
    # Before rclpy and DDS allocate their first frame buffers.
    allocator = keep_frame_buffers()
    try:
        _init_rclpy(args)
    except Exception as exc:  # rcl rejects malformed --ros-args (e.g. "-p name:=" without a value)
        print(f"[FATAL] [{NODE_NAME}]: cannot start: invalid ROS arguments: {exc}", file=sys.stderr)
        return EXIT_STARTUP
    stop = threading.Event()

    def on_signal(signum: int, _frame: Any) -> None:
        stop.set()

    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, on_signal)
    node: Any = None
    executor: NodeExecutor | None = None
    try:
        try:
            node = make_node()
        except StartupError as exc:
            rclpy.logging.get_logger(NODE_NAME).fatal(f"cannot start: {exc}")
            return EXIT_STARTUP
        node.get_logger().info(allocator)
        if profile is not None:
            node.get_logger().info(f"Fast DDS profile {profile} (FASTRTPS_/FASTDDS_DEFAULT_PROFILES_FILE were unset)")
        executor = NodeExecutor(offload=[node.service_group])
        executor.add_node(node)
        while not stop.is_set() and rclpy.ok() and node.exit_code is None:
            executor.spin_once(timeout_sec=0.1)
    except KeyboardInterrupt:
        pass
    finally:
        if node is not None:
            node.close()
        if executor is not None:
            executor.shutdown(timeout_sec=0.5)
        if node is not None:
            node.destroy_node()
        if rclpy.ok():
            rclpy.shutdown()
    return (node.exit_code if node is not None else None) or 0
