"""Joins the colour image with depth and camera_info by header stamp (exact or approximate), counting every drop.

Hand-written rather than message_filters for two reasons: message_filters is not on PyPI (the node must also run
from the PyPI ROS wheels), and its ApproximateTime has no drop callback (ros2/message_filters#82), so a sync that
silently never fires (mismatched QoS, unaligned stamps, a missing camera_info) cannot be reported. This one counts
every message it discards, per topic and reason, for /diagnostics.

Policy (the image is the pivot; depth and camera_info are its partners):

* A partner within ``slop`` of the image stamp (``slop = 0`` for exact sync) is matched; the nearest one wins.
* An image waits until every partner is decided: a partner is decided once a message with a stamp at or after the
  image's has arrived on its topic (stamps rise per topic, so nothing nearer can follow), or once the image has
  waited ``timeout`` seconds (wall clock), or a newer image is ``timeout`` seconds of stamps ahead, or the image queue
  is full. An image whose partner is still missing then goes out without it (the node segments it in 2D and says
  why), so a dead depth stream or a missing camera_info never stops the node.
* Partners that can no longer match any image (older than the oldest waiting image minus slop) are dropped and
  counted; so are messages pushed out of a full queue.

Memory is bounded by ``queue_size`` messages per topic. Not thread-safe by itself: the node calls it under a lock.
"""
from __future__ import annotations

import time
from collections import Counter, deque
from dataclasses import dataclass, field
from typing import Any, Callable, Deque, Sequence

__all__ = ["IMAGE", "Matched", "TimeSynchronizer", "stamp_to_ns"]

IMAGE = "image"


def stamp_to_ns(stamp: Any) -> int:
    """builtin_interfaces/Time (rclpy or rosbags: ``sec``, ``nanosec``) → integer nanoseconds."""
    return int(stamp.sec) * 1_000_000_000 + int(stamp.nanosec)


@dataclass
class Matched:
    """One image and the partners found for it (None where none matched)."""

    image: Any
    stamp_ns: int
    # Seconds (time.monotonic) when the image arrived.
    received: float
    partners: dict[str, Any] = field(default_factory=dict)
    # Partner topics that had no message within slop.
    missing: tuple[str, ...] = ()


@dataclass
class _Entry:
    stamp: int
    msg: Any
    arrived: float


class TimeSynchronizer:
    """Image + partner topics (e.g. ``("depth", "camera_info")``) → ``Matched`` records, oldest first."""

    def __init__(self, partners: Sequence[str], mode: str = "approximate", slop: float = 0.02, queue_size: int = 10,
                 timeout: float = 0.25, clock: Callable[[], float] = time.monotonic) -> None:
        if mode not in ("exact", "approximate"):
            raise ValueError(f"mode must be 'exact' or 'approximate', got {mode!r}")
        if queue_size < 1:
            raise ValueError(f"queue_size must be >= 1, got {queue_size}")
        self.partners = tuple(partners)
        if IMAGE in self.partners or len(set(self.partners)) != len(self.partners):
            raise ValueError(f"partner topics must be distinct and not {IMAGE!r}: {self.partners}")
        self.mode = mode
        self.queue_size = queue_size
        self._clock = clock
        self._queues: dict[str, Deque[_Entry]] = {t: deque() for t in (IMAGE, *self.partners)}
        # (topic, reason) → messages dropped; reasons: "unmatched", "queue_full", "out_of_order".
        self.drops: Counter[tuple[str, str]] = Counter()
        # Partner topic → images sent out without it.
        self.missing: Counter[str] = Counter()
        self.matched = 0
        self._last_image: int | None = None
        # Newest stamp seen per topic, queued or already used: a stamp below it means the clock went back.
        self._newest: dict[str, int] = {}
        self.set_tolerances(slop, timeout)

    def set_tolerances(self, slop: float, timeout: float) -> None:
        """Change slop and timeout (seconds) at run time."""
        self.slop_ns = 0 if self.mode == "exact" else int(round(slop * 1e9))
        self.timeout = float(timeout)
        self.timeout_ns = int(round(timeout * 1e9))

    @property
    def dropped_total(self) -> int:
        return sum(self.drops.values())

    def add(self, topic: str, msg: Any, stamp_ns: int) -> list[Matched]:
        """Queue a message; returns the images that are now decided (usually none or one)."""
        queue = self._queues[topic]
        newest = self._newest.get(topic)
        if newest is not None and stamp_ns < newest:
            # Stamps must rise per topic (a bag looping, a clock jump): start that topic over, and forget the last
            # image's stamp, or partners on the new timeline (which often arrive before their image) would be
            # dropped as older than it.
            self.drops[(topic, "out_of_order")] += len(queue)
            queue.clear()
            self._last_image = None
        self._newest[topic] = stamp_ns
        queue.append(_Entry(stamp_ns, msg, self._clock()))
        if topic != IMAGE and len(queue) > self.queue_size:
            queue.popleft()
            self.drops[(topic, "queue_full")] += 1
        return self._process()

    def poll(self) -> list[Matched]:
        """Send out images whose wait has timed out (call periodically)."""
        return self._process()

    def pending(self) -> int:
        return len(self._queues[IMAGE])

    def _process(self) -> list[Matched]:
        out: list[Matched] = []
        images = self._queues[IMAGE]
        now = self._clock()
        while images:
            img = images[0]
            expired = (now - img.arrived >= self.timeout or images[-1].stamp - img.stamp >= self.timeout_ns
                       or len(images) > self.queue_size)
            found: dict[str, _Entry | None] = {}
            for topic in self.partners:
                best, decided = self._candidate(topic, img.stamp)
                if not decided and not expired:
                    self._drop_stale(img.stamp)
                    return out
                found[topic] = best
            images.popleft()
            self._last_image = img.stamp
            missing = tuple(t for t, e in found.items() if e is None)
            for topic in missing:
                self.missing[topic] += 1
            if not missing:
                self.matched += 1
            for topic, entry in found.items():
                if entry is not None:
                    self._consume(topic, entry)
            out.append(Matched(img.msg, img.stamp, img.arrived,
                               {t: (e.msg if e is not None else None) for t, e in found.items()}, missing))
        if self._last_image is not None:
            # Later images have later stamps: partners older than this cannot match any of them.
            self._drop_stale(self._last_image + 1)
        return out

    def _candidate(self, topic: str, stamp: int) -> tuple[_Entry | None, bool]:
        """(nearest message within slop or None, whether that can no longer change)."""
        queue = self._queues[topic]
        best: _Entry | None = None
        for entry in queue:
            gap = abs(entry.stamp - stamp)
            if gap <= self.slop_ns and (best is None or gap < abs(best.stamp - stamp)):
                best = entry
        decided = bool(queue) and queue[-1].stamp >= stamp
        return best, decided

    def _consume(self, topic: str, used: _Entry) -> None:
        """Remove the used partner message and every older one (those count as unmatched)."""
        queue = self._queues[topic]
        while queue and queue[0].stamp <= used.stamp:
            entry = queue.popleft()
            if entry is not used:
                self.drops[(topic, "unmatched")] += 1

    def _drop_stale(self, image_stamp: int) -> None:
        """Drop partner messages too old to match an image stamped ``image_stamp`` or later."""
        limit = image_stamp - self.slop_ns
        for topic in self.partners:
            queue = self._queues[topic]
            while queue and queue[0].stamp < limit:
                queue.popleft()
                self.drops[(topic, "unmatched")] += 1
