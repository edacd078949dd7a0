"""The restart policy of the segmenter's worker threads, free of rclpy (tested without ROS).

A thread that died of a failure outside the per-frame path holds nothing that outlives it: it is restarted, and
/diagnostics says ERROR with the reason for that period. A thread that keeps dying (more than ``MAX_RESTARTS``
deaths within ``RESTART_WINDOW`` seconds) is not fixed by restarting it, and a thread that has not beaten for the
stall limit (a model run that never returns, which no thread can interrupt) cannot be replaced: both end the
process, so that a launch file's ``respawn`` starts a fresh one.
"""
from __future__ import annotations

import time
from collections import deque
from typing import Any, Callable

from seg_node.ros.diagnostics import NodeStats
from seg_node.ros.stages import TwoStagePipeline

__all__ = ["MAX_RESTARTS", "RESTART_WINDOW", "Supervisor"]

# A thread that dies this many times within RESTART_WINDOW seconds is not restarted again: the process exits.
MAX_RESTARTS, RESTART_WINDOW = 5, 60.0


class Supervisor:
    """Checks a TwoStagePipeline's threads; faults go to ``stats`` (the ERROR diagnostic) and ``log_error``."""

    def __init__(self, stats: NodeStats, log_error: Callable[[str], None]) -> None:
        self._stats, self._log_error = stats, log_error
        self._restarts: deque[float] = deque()

    def check(self, stages: TwoStagePipeline[Any, Any, Any], stall_after: float) -> str:
        """Restart the threads that died; returns why the process must end instead ("" while it goes on)."""
        health = stages.health(stall_after)
        if health.ok:
            return ""
        now = time.monotonic()
        while self._restarts and now - self._restarts[0] > RESTART_WINDOW:
            self._restarts.popleft()
        fatal = ""
        for name, seconds in health.stalled.items():
            fatal = (f"{name} has not made progress for {seconds:.0f} s (diagnostics.stall_timeout {stall_after} s): "
                     "a model run that does not return cannot be interrupted; exiting with code 3 for a respawn")
        for name, reason in health.dead.items():
            self._restarts.append(now)
            if len(self._restarts) > MAX_RESTARTS:
                fatal = (f"{name} died again ({reason}): {len(self._restarts)} restarts within {RESTART_WINDOW:.0f} s; "
                         "exiting with code 3 for a respawn")
            else:
                message = f"{name} died outside the per-frame path ({reason}); restarted it"
                self._stats.fault(message)
                self._log_error(message)
        if fatal:
            self._stats.fault(fatal)
            self._log_error(fatal)
            return fatal
        self._stats.add("worker_restarts", len(stages.revive()))
        return ""
