"""The worker threads' restart policy without rclpy: a dead thread is restarted and reported; one that keeps dying,
or one stuck in a model run, is reported as the reason the process must end."""
from __future__ import annotations

import threading
import time

from seg_node.ros.diagnostics import ERROR, NodeStats
from seg_node.ros.stages import TwoStagePipeline
from seg_node.ros.supervisor import MAX_RESTARTS, Supervisor


class Harness:
    """A real pipeline whose worker dies applying a configuration (a failure outside the per-frame path) while
    ``broken``, and whose model run blocks while ``gate`` is clear."""

    def __init__(self) -> None:
        self.broken = False
        self.gate = threading.Event()
        self.gate.set()
        self.errors: list[str] = []
        self.stats = NodeStats(10, lambda: 0.0, lambda message: None)
        self.supervisor = Supervisor(self.stats, self.errors.append)
        self.pipeline: TwoStagePipeline[int, int, int] = TwoStagePipeline(
            self.prepare, lambda frame: frame, frame_of=lambda done: done, on_demand=lambda: False,
            config_pending=lambda: self.broken, apply_config=self.apply, warn=lambda reason, msg: None,
            failure=lambda: "")

    def prepare(self, frame: int) -> int:
        self.gate.wait(5)
        return frame

    def apply(self) -> None:
        if self.broken:
            raise OSError("config store gone")

    def diagnostics(self) -> tuple[str, str, dict[str, str]]:
        level, message, values = self.stats.summary("image")
        return level, message, dict(values)


def _until(cond, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.005)


def test_a_dead_thread_is_restarted_and_one_that_keeps_dying_ends_the_process() -> None:
    h = Harness()
    h.pipeline.start()
    try:
        assert h.supervisor.check(h.pipeline, stall_after=60.0) == ""  # healthy: nothing to do
        h.broken = True
        for restart in range(1, MAX_RESTARTS + 1):
            h.pipeline.offer(restart)
            _until(lambda: not h.pipeline.health(60.0).ok)
            assert h.supervisor.check(h.pipeline, stall_after=60.0) == ""
            assert h.pipeline.health(60.0).ok  # restarted
            level, message, values = h.diagnostics()
            assert level == ERROR and "segmenter-worker died outside the per-frame path" in message
            assert "OSError: config store gone" in message and values["worker_restarts"] == str(restart)
        h.pipeline.offer(0)
        _until(lambda: not h.pipeline.health(60.0).ok)
        fatal = h.supervisor.check(h.pipeline, stall_after=60.0)
        assert f"died again (OSError: config store gone): {MAX_RESTARTS + 1} restarts" in fatal
        assert "exiting with code 3" in fatal and h.errors[-1] == fatal
        level, message, values = h.diagnostics()
        assert level == ERROR and message == fatal and values["worker_restarts"] == str(MAX_RESTARTS)
    finally:
        assert h.pipeline.stop(2.0)


def test_a_model_run_that_never_returns_ends_the_process() -> None:
    h = Harness()
    h.pipeline.start()
    try:
        h.gate.clear()
        h.pipeline.offer(1)
        _until(lambda: h.pipeline.health(stall_after=1.0).stalled)
        fatal = h.supervisor.check(h.pipeline, stall_after=1.0)
        assert fatal.startswith("segmenter-worker has not made progress") and "diagnostics.stall_timeout 1.0 s" in fatal
        level, message, _ = h.diagnostics()
        assert level == ERROR and message == fatal and h.errors == [fatal]
    finally:
        h.gate.set()
        assert h.pipeline.stop(2.0)
