"""The node's two-stage pipeline without rclpy: frames flow prepare → finish on two threads, the mailbox keeps the
newest frame, on-demand requests see the frame they asked about, and a configuration change waits for both stages."""
from __future__ import annotations

import threading
import time

import pytest

from seg_node.ros.stages import TwoStagePipeline, Unavailable


class Harness:
    def __init__(self, on_demand: bool = False, fail: set[int] = frozenset(), raise_on: set[int] = frozenset()) -> None:
        self.on_demand, self.fail, self.raise_on = on_demand, set(fail), set(raise_on)
        self.warnings: list[tuple[str, str]] = []
        self.apply_error: Exception | None = None
        self.prepared: list[int] = []
        self.finished: list[int] = []
        self.pending = False
        self.applied = 0
        self.gate = threading.Event()
        self.gate.set()
        self.threads: set[str] = set()
        self.pipeline: TwoStagePipeline[int, int, int] = TwoStagePipeline(
            self.prepare, self.finish, frame_of=lambda done: done, on_demand=lambda: self.on_demand,
            config_pending=lambda: self.pending, apply_config=self.apply,
            warn=lambda reason, msg: self.warnings.append((reason, msg)),
            failure=lambda: "frame refused")

    def prepare(self, frame: int) -> int | None:
        self.gate.wait(5)
        self.threads.add(threading.current_thread().name)
        if frame in self.fail:
            return None
        if frame in self.raise_on:  # what cv2.imdecode does with a forged header, say
            raise RuntimeError(f"decoder blew up on frame {frame}")
        self.prepared.append(frame)
        return frame

    def finish(self, frame: int) -> int:
        self.threads.add(threading.current_thread().name)
        self.finished.append(frame)
        return frame

    def apply(self) -> None:
        if self.apply_error is not None:  # a failure outside the per-frame path
            error, self.apply_error = self.apply_error, None
            raise error
        if self.pending:
            self.pending = False
            self.applied += 1


def _until(cond, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.005)


def test_streaming_runs_both_stages_on_their_threads_and_keeps_the_newest_frame() -> None:
    h = Harness()
    h.pipeline.start()
    try:
        h.gate.clear()  # the worker waits in prepare(1) while frames 2 and 3 arrive
        assert not h.pipeline.offer(1)
        _until(lambda: h.pipeline._slot is None)
        assert not h.pipeline.offer(2)
        assert h.pipeline.offer(3)  # 2 was never processed: replaced
        h.gate.set()
        _until(lambda: h.finished[-1:] == [3])
        assert h.finished == [1, 3] and h.pipeline.latest == 3
        assert h.threads == {"segmenter-worker", "segmenter-finisher"}
        h.pending = True
        h.pipeline.offer(4)
        _until(lambda: h.finished[-1:] == [4])
        assert h.applied == 1
    finally:
        assert h.pipeline.stop(2.0)


def test_on_demand_segments_the_requested_frame_once() -> None:
    h = Harness(on_demand=True)
    h.pipeline.start()
    try:
        with pytest.raises(Unavailable, match="no image received"):
            h.pipeline.request(1.0)
        h.pipeline.offer(7)
        time.sleep(0.05)
        assert h.finished == []  # nothing runs until asked
        assert h.pipeline.request(2.0) == 7
        assert h.pipeline.request(2.0) == 7 and h.prepared == [7]  # the same frame is not segmented twice
    finally:
        assert h.pipeline.stop(2.0)


def test_a_refused_frame_answers_the_request_with_the_reason() -> None:
    h = Harness(on_demand=True, fail={5})
    h.pipeline.start()
    try:
        h.pipeline.offer(5)
        with pytest.raises(Unavailable, match="could not be segmented: frame refused"):
            h.pipeline.request(2.0)
    finally:
        assert h.pipeline.stop(2.0)


def test_any_exception_from_a_frame_is_counted_and_the_next_frame_is_served() -> None:
    h = Harness(raise_on={1})
    h.pipeline.start()
    try:
        h.pipeline.offer(1)
        _until(lambda: h.warnings)
        h.pipeline.offer(2)
        _until(lambda: h.finished == [2])
        assert h.warnings == [("internal_error", "frame dropped by an unexpected error: RuntimeError: decoder blew up on frame 1")]
        assert h.pipeline.health(stall_after=60.0).ok
    finally:
        assert h.pipeline.stop(2.0)


def test_a_thread_ended_outside_the_frame_path_is_reported_with_its_reason_and_revived() -> None:
    h = Harness()
    h.pipeline.start()
    try:
        h.apply_error = OSError("config store gone")
        h.pending = True
        h.pipeline.offer(1)  # the worker applies the pending config first, and dies of it
        _until(lambda: not h.pipeline.health(60.0).ok)
        health = h.pipeline.health(60.0)
        assert health.dead == {"segmenter-worker": "OSError: config store gone"} and not health.stalled
        assert h.finished == []
        assert h.pipeline.revive() == ["segmenter-worker"] and h.pipeline.restarts == 1
        assert h.pipeline.health(60.0).ok
        h.pipeline.offer(2)
        _until(lambda: h.finished == [2])  # serving again, with the config applied
        assert h.applied == 1
    finally:
        assert h.pipeline.stop(2.0)


def test_a_model_run_that_never_returns_shows_as_a_stall() -> None:
    h = Harness()
    h.pipeline.start()
    try:
        assert h.pipeline.health(stall_after=1.0).ok  # idle threads beat while they wait
        h.gate.clear()
        h.pipeline.offer(1)
        _until(lambda: h.pipeline.health(stall_after=1.0).stalled)
        health = h.pipeline.health(stall_after=1.0)
        assert list(health.stalled) == ["segmenter-worker"] and not health.dead
        assert h.pipeline.revive() == []  # a hung thread cannot be replaced: the node exits (see supervisor.py)
        h.gate.set()
        _until(lambda: h.finished == [1])
        _until(lambda: h.pipeline.health(stall_after=1.0).ok)
    finally:
        assert h.pipeline.stop(2.0)
