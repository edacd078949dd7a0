"""seg_node.processing.sync.TimeSynchronizer: exact and approximate matching, waiting, timeouts, and drop accounting."""
from __future__ import annotations

import pytest

from seg_node.processing.sync import TimeSynchronizer, stamp_to_ns

MS = 1_000_000


class Clock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


def make(mode: str = "approximate", slop: float = 0.01, timeout: float = 0.2, queue_size: int = 5,
         partners=("depth", "camera_info")):
    clock = Clock()
    return TimeSynchronizer(partners, mode, slop, queue_size, timeout, clock=clock), clock


def test_exact_match_in_any_arrival_order() -> None:
    sync, _ = make("exact")
    assert sync.add("depth", "d1", 100 * MS) == []
    assert sync.add("image", "i1", 100 * MS) == []
    (m,) = sync.add("camera_info", "c1", 100 * MS)
    assert (m.image, m.partners, m.missing, m.stamp_ns) == ("i1", {"depth": "d1", "camera_info": "c1"}, (), 100 * MS)
    assert sync.matched == 1 and sync.dropped_total == 0


def test_exact_does_not_match_near_stamps_and_counts_it() -> None:
    sync, _ = make("exact")
    sync.add("image", "i1", 100 * MS)
    sync.add("camera_info", "c1", 100 * MS)
    (m,) = sync.add("depth", "d1", 101 * MS)  # after the image: depth for 100 ms can no longer come
    assert m.partners["depth"] is None and m.missing == ("depth",)
    assert sync.missing["depth"] == 1


def test_approximate_picks_the_nearest_within_slop() -> None:
    sync, _ = make(slop=0.01)
    sync.add("depth", "d_early", 92 * MS)
    sync.add("depth", "d_near", 98 * MS)
    sync.add("camera_info", "c", 100 * MS)
    assert sync.add("image", "i", 100 * MS) == []  # depth newer than the image may still come
    (m,) = sync.add("depth", "d_late", 104 * MS)
    assert m.partners["depth"] == "d_near"
    # d_early was older than the one used: dropped as unmatched; d_late stays for the next image.
    assert sync.drops[("depth", "unmatched")] == 1
    assert sync.add("camera_info", "c2", 105 * MS) == [] and sync.add("image", "i2", 105 * MS) == []
    (m2,) = sync.add("depth", "d_next", 112 * MS)  # now no depth nearer to 105 ms can come
    assert m2.partners == {"depth": "d_late", "camera_info": "c2"}


def test_image_waits_then_times_out_without_a_partner() -> None:
    sync, clock = make(timeout=0.2)
    sync.add("image", "i", 100 * MS)
    sync.add("depth", "d", 100 * MS)
    assert sync.poll() == [] and sync.pending() == 1
    clock.t = 0.25
    (m,) = sync.poll()
    assert m.partners == {"depth": "d", "camera_info": None} and m.missing == ("camera_info",)
    assert sync.missing["camera_info"] == 1 and sync.pending() == 0


def test_newer_images_end_the_wait_by_stamp() -> None:
    sync, _ = make(timeout=0.2, partners=("depth",))
    assert sync.add("image", "i1", 0) == []
    assert sync.add("image", "i2", 100 * MS) == []
    out = sync.add("image", "i3", 250 * MS)  # 250 ms of stamps ahead of i1 and 150 of i2
    assert [m.image for m in out] == ["i1"] and out[0].missing == ("depth",)


def test_stale_partners_are_dropped_and_queues_are_bounded() -> None:
    sync, _ = make(queue_size=3, partners=("depth",))
    for i in range(6):
        sync.add("depth", f"d{i}", i * MS)
    assert sync.drops[("depth", "queue_full")] == 3
    # No depth within slop of the image yet, but one may still come: the image waits, and the depth messages too
    # old for it (or any later image) are dropped as unmatched.
    assert sync.add("image", "i", 500 * MS) == []
    assert sync.drops[("depth", "unmatched")] == 3
    (m,) = sync.add("depth", "d_500", 505 * MS)
    assert m.partners["depth"] == "d_500" and sync.dropped_total == 6


def test_out_of_order_stamps_restart_that_topic() -> None:
    sync, _ = make(partners=("depth",))
    sync.add("depth", "d1", 500 * MS)
    sync.add("depth", "d0", 100 * MS)  # a bag loop or a clock jump
    assert sync.drops[("depth", "out_of_order")] == 1
    (m,) = sync.add("image", "i", 100 * MS)
    assert m.partners["depth"] == "d0"


def test_run_time_tolerances_and_validation() -> None:
    sync, _ = make(slop=0.001, partners=("depth",))
    sync.set_tolerances(0.02, 0.5)
    sync.add("depth", "d", 115 * MS)
    (m,) = sync.add("image", "i", 100 * MS)
    assert m.partners["depth"] == "d"
    with pytest.raises(ValueError, match="mode"):
        TimeSynchronizer(("depth",), "sometimes")
    with pytest.raises(ValueError, match="distinct"):
        TimeSynchronizer(("depth", "depth"))


def test_stamp_to_ns() -> None:
    class T:
        sec, nanosec = 12, 345

    assert stamp_to_ns(T) == 12_000_000_345


@pytest.mark.parametrize("jump_to", [0, 3_000_000 * MS], ids=["stamp_zero", "minus_one_hour"])
def test_backwards_clock_jump_keeps_partners_that_arrive_before_the_image(jump_to: int) -> None:
    """After a clock jump back (a bag restarting, a camera resetting its clock), depth and camera_info with the
    image's new stamp often arrive before the image: they must match it, not be dropped as older than the last
    image seen before the jump."""
    sync, _ = make("exact")
    before = 3_600_000 * MS + jump_to
    for t in (before, before + 33 * MS):
        sync.add("depth", f"d{t}", t)
        sync.add("camera_info", f"c{t}", t)
        (m,) = sync.add("image", f"i{t}", t)
        assert not m.missing
    assert sync.add("depth", "d_new", jump_to) == []
    assert sync.add("camera_info", "c_new", jump_to) == []
    (m,) = sync.add("image", "i_new", jump_to)
    assert m.missing == () and m.partners == {"depth": "d_new", "camera_info": "c_new"}
    assert sync.drops[("depth", "unmatched")] == 0
