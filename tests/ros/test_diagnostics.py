"""The node's diagnostics bookkeeping without rclpy: a worker fault turns the level to ERROR with its reason (and
stays visible afterwards), bad frames are counted by reason, and frames missing by their stamps are found."""
from __future__ import annotations

from seg_node.ros.diagnostics import ERROR, OK, WARN, InputLossMonitor, NodeStats


def _stats() -> tuple[NodeStats, list[str]]:
    logged: list[str] = []
    return NodeStats(10, lambda: 60.0, logged.append), logged


def test_a_worker_fault_is_error_with_its_reason_for_that_period_and_then_kept_as_the_last_fault() -> None:
    stats, _ = _stats()
    stats.add("received")
    assert stats.summary("/image")[0] == OK
    stats.fault("segmenter-worker died outside the per-frame path (OSError: gone); restarted it")
    stats.add("worker_restarts")
    level, message, values = stats.summary("/image")
    assert level == ERROR and "OSError: gone" in message
    assert dict(values)["worker_restarts"] == "1"
    level, _, values = stats.summary("/image")
    assert level == OK and "OSError: gone" in dict(values)["worker_last_fault"]


def test_bad_frames_are_counted_by_reason_and_warnings_rate_limited() -> None:
    stats, logged = _stats()
    stats.add("received", 3)
    for _ in range(3):
        stats.warn("decode_error", "image frame skipped: the decoder failed: error: pixels <= CV_IO_MAX_IMAGE_PIXELS")
    level, message, values = stats.summary("/image")
    assert level == WARN and "decode_error" in message
    assert dict(values)["bad.decode_error"] == "3" and dict(values)["frames_bad"] == "3"
    assert len(logged) == 1 and "(1 so far)" in logged[0]
    stats.warn("internal_error", "frame dropped")
    assert stats.summary("/image")[0] == ERROR


def test_input_loss_by_stamps() -> None:
    period = 33_333_333
    steady, lossy = InputLossMonitor(), InputLossMonitor()
    for k in range(90):
        jitter = (k * 7919) % 2_000_000  # up to 2 ms of stamp jitter is no loss
        steady.add(k * period + jitter)
        if k % 3 != 1:
            lossy.add(k * period + jitter)
    assert not steady.lossy() and steady.missing_total == 0
    assert lossy.lossy() and lossy.missing_total >= 25
    missing, expected = lossy.loss()
    assert 0.25 < missing / expected < 0.4
    lossy.add(0)  # a clock jump back starts over
    assert lossy.loss() == (0, 0)
