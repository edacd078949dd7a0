"""The segmenter's bookkeeping for /diagnostics, free of rclpy (tested without ROS).

``NodeStats`` counts frames (received, processed, dropped), bad frames by reason, latencies per stage and faults of
the worker threads, rate-limits the warnings, and sums it all up as (level, message, values) once per period.
``InputLossMonitor`` reads the input images' header stamps: gaps that the publisher's own rate does not explain mean
frames were lost before they reached the node (typically camera-sized frames over UDP without the Fast DDS profile).
"""
from __future__ import annotations

import statistics
import threading
import time
from collections import Counter, deque
from typing import Callable

__all__ = ["FASTDDS_ADVICE", "InputLossMonitor", "NodeStats", "OK", "WARN", "ERROR", "STAGES"]

OK, WARN, ERROR = "OK", "WARN", "ERROR"
# Latency stages reported in /diagnostics, in order (the Segmenter's own stages come from its timings). "transport" and
# "end_to_end" compare the wall clock with the image stamp: meaningful when the camera stamps with this machine's clock.
STAGES = ("transport", "wait", "decode", "preprocess", "network", "postprocess", "instances", "geometry", "tracking",
          "publish", "total", "end_to_end")
# Bad-frame reasons that mean the node itself, not the input, failed.
_ERROR_REASONS = ("inference_error", "internal_error")
FASTDDS_ADVICE = ("large frames need the Fast DDS profile config/fastdds_large_images.xml (share/seg_node/config/ "
                  "when installed) in the environment of the camera driver and of this node: "
                  "FASTRTPS_DEFAULT_PROFILES_FILE (Fast DDS 2.x: Humble, Jazzy) and FASTDDS_DEFAULT_PROFILES_FILE "
                  "(3.x: Kilted); the launch files set both (README, 'The segmenter node')")


class NodeStats:
    """Thread-safe counters of the node; ``log_warning`` receives the (rate-limited) warnings."""

    def __init__(self, window: int, warn_period: Callable[[], float], log_warning: Callable[[str], None]) -> None:
        self._lock = threading.Lock()
        self._warn_period, self._log = warn_period, log_warning
        self.counts: Counter[str] = Counter()
        self.bad: Counter[str] = Counter()
        self._last_warn: dict[str, float] = {}
        self._warned_once: set[str] = set()
        self._latency = {s: deque(maxlen=window) for s in STAGES}
        self._period_start = time.monotonic()
        self._period: Counter[str] = Counter()
        # Worker faults: the last one stays in /diagnostics; ``fault_now`` makes this period's level ERROR.
        self.last_fault = ""
        self._fault_now = ""

    def add(self, key: str, n: int = 1) -> None:
        """Count a frame event ("received", "processed", "dropped")."""
        with self._lock:
            self.counts[key] += n
            self._period[key] += n

    def count(self, reason: str) -> int:
        """Count a bad frame (or another problem) by reason; returns the total so far."""
        with self._lock:
            self.bad[reason] += 1
            self._period["bad:" + reason] += 1
            return self.bad[reason]

    def warn(self, reason: str, message: str) -> None:
        """Count ``reason`` and log ``message``, at most once per warn period per reason."""
        total = self.count(reason)
        now = time.monotonic()
        with self._lock:
            last = self._last_warn.get(reason)
            due = last is None or now - last >= self._warn_period()
            if due:
                self._last_warn[reason] = now
        if due:
            self._log(f"[{reason}] {message} ({total} so far)")

    def warn_once(self, key: str, message: str) -> None:
        with self._lock:
            if key in self._warned_once:
                return
            self._warned_once.add(key)
        self._log(message + " (warned once)")

    def fault(self, message: str) -> None:
        """A worker thread failed or stalled: ERROR in this period's diagnostics, with the reason."""
        with self._lock:
            self.last_fault = self._fault_now = message

    def frame_done(self, stages_ms: dict[str, float], segments: int) -> None:
        with self._lock:
            self.counts["processed"] += 1
            self._period["processed"] += 1
            self.counts["segments"] = segments
            for stage, ms in stages_ms.items():
                if stage in self._latency:
                    self._latency[stage].append(ms)

    def summary(self, input_topic: str, extra: list[tuple[str, object]] = ()) -> tuple[str, str, list[tuple[str, str]]]:
        """(level, message, key/values) for the period since the last call; ``extra`` values are appended."""
        now = time.monotonic()
        with self._lock:
            dt = max(now - self._period_start, 1e-6)
            period, self._period = self._period, Counter()
            self._period_start = now
            counts, bad = Counter(self.counts), Counter(self.bad)
            latency = {s: list(v) for s, v in self._latency.items() if v}
            fault_now, self._fault_now = self._fault_now, ""
            last_fault = self.last_fault
        values: list[tuple[str, object]] = [
            ("input_rate_hz", f"{period['received'] / dt:.2f}"),
            ("output_rate_hz", f"{period['processed'] / dt:.2f}"),
            ("frames_received", counts["received"]),
            ("frames_processed", counts["processed"]),
            ("frames_dropped", counts["dropped"]),
            ("frames_bad", sum(bad.values())),
            ("segments_last_frame", counts["segments"]),
            ("worker_restarts", counts["worker_restarts"]),
            ("worker_last_fault", last_fault or "none"),
        ]
        values += list(extra)
        values += [(f"bad.{reason}", n) for reason, n in sorted(bad.items())]
        for stage in STAGES:
            if stage in latency:
                v = latency[stage]
                values += [(f"latency_ms.{stage}.median", f"{statistics.median(v):.3f}"),
                           (f"latency_ms.{stage}.max", f"{max(v):.3f}")]
        bad_now = sorted(k[4:] for k in period if k.startswith("bad:"))
        level, message = OK, "ok"
        if bad_now:
            level, message = WARN, f"problems this period: {', '.join(bad_now)}"
        if any(r in bad_now for r in _ERROR_REASONS):
            level = ERROR
        if counts["received"] == 0:
            level, message = WARN, f"no image received yet on {input_topic}"
        if fault_now:
            level, message = ERROR, fault_now
        return level, message, [(k, str(v)) for k, v in values]


class InputLossMonitor:
    """Frames missing from the input by its header stamps.

    The publisher's period is estimated as a low percentile of the recent stamp intervals (robust to the gaps being
    measured); an interval of ``k`` periods means ``k - 1`` frames never arrived. ``lossy`` says whether the loss over
    the window exceeds ``threshold``; ``missing_total`` counts from when the period is known (``min_intervals``). A
stamp that goes back (a clock jump, a bag loop) starts over.
    """

    def __init__(self, window: int = 60, threshold: float = 0.05, min_intervals: int = 10) -> None:
        self._intervals: deque[int] = deque(maxlen=window)
        self._last: int | None = None
        self.threshold, self.min_intervals = threshold, min_intervals
        self.missing_total = 0

    def add(self, stamp_ns: int) -> None:
        last, self._last = self._last, stamp_ns
        if last is None or stamp_ns <= last:
            if last is not None and stamp_ns < last:
                self._intervals.clear()
            return
        self._intervals.append(stamp_ns - last)
        period = self.period_ns()
        if period:
            self.missing_total += max(0, round((stamp_ns - last) / period) - 1)

    def period_ns(self) -> int | None:
        if len(self._intervals) < self.min_intervals:
            return None
        ordered = sorted(self._intervals)
        return ordered[len(ordered) // 10]

    def loss(self) -> tuple[int, int]:
        """(frames missing, frames expected) over the recent window."""
        period = self.period_ns()
        if not period:
            return 0, 0
        missing = sum(max(0, round(i / period) - 1) for i in self._intervals)
        return missing, missing + len(self._intervals)

    def lossy(self) -> bool:
        missing, expected = self.loss()
        return expected > 0 and missing / expected > self.threshold
