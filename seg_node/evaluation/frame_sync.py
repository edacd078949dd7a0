"""Pairs each bag frame with its ground truth, depth and camera info by header stamp, in log-time order, waiting a
bounded window of bag time."""
from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import Any

from seg_node.processing.sync import stamp_to_ns


@dataclass
class Pending:
    seq: int
    log_time: int
    stamp: int
    msg: Any


@dataclass
class Released:
    seq: int
    log_time: int
    stamp: int
    msg: Any
    gt: Any
    depth: Any
    info: Any


class FrameSync:
    """Pairs image frames with ground truth (exact header stamp), depth (nearest stamp within a tolerance) and camera
    info (the latest), waiting up to ``window`` ns of bag time. Frames leave in the order they were logged."""

    def __init__(self, want_gt: bool, want_depth: bool, want_info: bool, window: int, depth_tolerance: int) -> None:
        self.want_gt, self.want_depth, self.want_info = want_gt, want_depth, want_info
        self.window, self.tolerance = window, depth_tolerance
        self.pending: deque[Pending] = deque()
        self.gt: dict[int, deque[tuple[int, Any]]] = {}
        self.depth: deque[tuple[int, int, Any]] = deque()
        self.info: Any = None
        self.now = -(2**63)
        self.seq = 0
        self.gt_messages = 0
        self.gt_unmatched: list[int] = []  # stamps

    def push(self, kind: str, log_time: int, msg: Any) -> list[Released]:
        self.now = max(self.now, log_time)
        if kind == "image":
            self.pending.append(Pending(self.seq, log_time, stamp_to_ns(msg.header.stamp), msg))
            self.seq += 1
        elif kind == "gt":
            self.gt.setdefault(stamp_to_ns(msg.header.stamp), deque()).append((log_time, msg))
            self.gt_messages += 1
        elif kind == "depth":
            self.depth.append((stamp_to_ns(msg.header.stamp), log_time, msg))
        elif kind == "info":
            self.info = msg
        return self._release(False)

    def flush(self) -> list[Released]:
        return self._release(True)

    def _ready(self, f: Pending) -> bool:
        if self.want_gt and f.stamp not in self.gt:
            return False
        if self.want_depth and not (any(abs(s - f.stamp) <= self.tolerance for s, _, _ in self.depth)
                                    and any(s >= f.stamp for s, _, _ in self.depth)):
            return False
        return not (self.want_info and self.info is None)

    def _release(self, final: bool) -> list[Released]:
        out = []
        while self.pending:
            f = self.pending[0]
            if not (final or self._ready(f) or self.now - f.log_time > self.window):
                break
            self.pending.popleft()
            gt = None
            queue = self.gt.get(f.stamp)
            if queue:
                gt = queue.popleft()[1]
                if not queue:
                    del self.gt[f.stamp]
            near = [d for d in self.depth if abs(d[0] - f.stamp) <= self.tolerance]
            depth = min(near, key=lambda d: (abs(d[0] - f.stamp), d[0]))[2] if near else None
            out.append(Released(f.seq, f.log_time, f.stamp, f.msg, gt, depth, self.info))
        horizon = self.now - 2 * self.window
        waiting = {f.stamp for f in self.pending}
        for stamp in list(self.gt):
            queue = self.gt[stamp]
            while queue and (final or (queue[0][0] < horizon and stamp not in waiting)):
                queue.popleft()
                self.gt_unmatched.append(stamp)
            if not queue:
                del self.gt[stamp]
        while self.depth and self.depth[0][1] < horizon:
            self.depth.popleft()
        return out
