"""The node's executor: callbacks run in the spinning thread, except those of chosen callback groups."""
from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import Any

import rclpy
from rclpy.executors import ShutdownException, SingleThreadedExecutor, TimeoutException

from seg_node.ros.params import NODE_NAME


class NodeExecutor(SingleThreadedExecutor):
    """Runs callbacks in the spinning thread, except those of the ``offload`` callback groups, which run on one
    background thread: ~/segment_points may wait for an on-demand inference and must not hold up the inputs.

    A MultiThreadedExecutor would allow that too, but it hands every callback to a thread pool, which added 2-5 ms
    to each image's latency on a loaded 2-core machine (bench/bench_node.py). Only public executor API is used
    (wait_for_ready_callbacks and the handler task it returns, as rclpy's own executors do).
    """

    def __init__(self, offload: list[Any], context: Any = None) -> None:
        super().__init__(context=context)
        self._offload = list(offload)
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="segmenter-service")

    def spin_once(self, timeout_sec: float | None = None) -> None:
        try:
            handler, entity, _node = self.wait_for_ready_callbacks(timeout_sec=timeout_sec)
        except (ShutdownException, TimeoutException):
            return
        if getattr(entity, "callback_group", None) in self._offload:
            self._pool.submit(_run_handler, handler)
            return
        handler()
        exception = handler.exception()
        if exception is not None:
            raise exception

    def shutdown(self, timeout_sec: float | None = None) -> bool:
        self._pool.shutdown(wait=False)
        return super().shutdown(timeout_sec=timeout_sec)


def _run_handler(handler: Any) -> None:
    handler()
    exception = handler.exception()
    if exception is not None:
        rclpy.logging.get_logger(NODE_NAME).error(f"~/segment_points failed: {type(exception).__name__}: {exception}")
