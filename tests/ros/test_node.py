"""The segmenter node as a separate process over real DDS (loopback only): outputs, headers, bad input, start-up
errors, run-time parameters, diagnostics and shutdown."""
from __future__ import annotations

import signal
import time
from pathlib import Path

import numpy as np
import pytest

from tests.helpers.ros_helpers import (
    SHM_PREFIXES,
    NodeProcess,
    allocate_domain,
    diagnostics_values,
    header,
    paint,
    rectangles_scene,
    ros_env,
)

pytestmark = pytest.mark.ros

rclpy = pytest.importorskip("rclpy")
from sensor_msgs.msg import CompressedImage, Image  # noqa: E402
from seg_msgs.msg import SegmentArray  # noqa: E402
from diagnostic_msgs.msg import DiagnosticArray  # noqa: E402

from seg_node.processing.image_codec import image_to_numpy, numpy_to_compressed, numpy_to_image  # noqa: E402
from seg_node.processing.visualize import overlay  # noqa: E402

NODE = "segmenter"
LABELS, SEGMENTS, COLORS, OVERLAY = f"/{NODE}/labels", f"/{NODE}/segments", f"/{NODE}/colors", f"/{NODE}/overlay"
# The oracle's colour map is the image itself: no resize, no padding.
ORACLE = {"model.processing_resolution": 0, "backend.threads": 1}


def check_labels_agree(labels: np.ndarray, seg_msg) -> None:
    """The label image and the SegmentArray describe the same segments."""
    assert (seg_msg.height, seg_msg.width) == labels.shape
    ids = sorted(int(v) for v in np.unique(labels) if v)
    assert ids == sorted(s.id for s in seg_msg.segments)
    for s in seg_msg.segments:
        ys, xs = np.nonzero(labels == s.id)
        assert s.area == len(ys)
        assert (s.bbox.x_offset, s.bbox.y_offset) == (xs.min(), ys.min())
        assert (s.bbox.width, s.bbox.height) == (xs.max() - xs.min() + 1, ys.max() - ys.min() + 1)
        assert s.centroid_x == pytest.approx(xs.mean() + 0.5, abs=1e-3)
        assert s.centroid_y == pytest.approx(ys.mean() + 0.5, abs=1e-3)
        assert 0.0 <= s.score <= 1.0 and s.age >= 1
        assert not s.has_3d and s.depth_flags == s.DEPTH_NOT_PROVIDED


def check_matches_truth(labels: np.ndarray, truth: np.ndarray) -> None:
    """Every painted object is one segment with exactly its pixels."""
    for k in range(1, int(truth.max()) + 1):
        values = np.unique(labels[truth == k])
        assert len(values) == 1 and values[0] != 0, (k, values)
        assert np.array_equal(labels == values[0], truth == k)


def test_image_in_labels_and_segments_out_with_header_preserved(session_factory, oracle_model: Path) -> None:
    s = session_factory({"model.path": str(oracle_model), **ORACLE, "qos.image.reliability": "reliable"})
    c = s.client
    for topic, kind in ((LABELS, Image), (SEGMENTS, SegmentArray), (COLORS, Image), (OVERLAY, Image)):
        c.subscribe(kind, topic)
    pub = c.publisher(Image, "/image")
    s.node.wait_ready()
    c.wait_matched([pub], [(LABELS, 1), (SEGMENTS, 1)])
    truth = rectangles_scene()
    rgb = paint(truth)
    sent = []
    for i, (encoding, arr) in enumerate((("rgb8", rgb), ("bgr8", rgb[..., ::-1]), ("rgba8", np.dstack([rgb, rgb[..., :1]])))):
        hdr = header(1700000000 + i, 123456789, f"cam_{encoding}")
        pub.publish(numpy_to_image(np.ascontiguousarray(arr), encoding, header=hdr))
        sent.append(hdr)
        assert c.wait_stamp(SEGMENTS, hdr.stamp, 20), s.node.log()
    for hdr in sent:
        labels_msg = c.wait_stamp(LABELS, hdr.stamp, 5)
        seg_msg = c.wait_stamp(SEGMENTS, hdr.stamp, 5)
        assert labels_msg.header == hdr and seg_msg.header == hdr  # stamp and frame_id copied exactly
        assert labels_msg.encoding == "mono16" and (labels_msg.height, labels_msg.width) == truth.shape
        labels = image_to_numpy(labels_msg)
        check_labels_agree(labels, seg_msg)
        check_matches_truth(labels, truth)
    # Tracking (on by default): the same objects keep their ids from frame to frame.
    ids = [sorted(s.id for s in c.wait_stamp(SEGMENTS, h.stamp).segments) for h in sent]
    assert ids[0] == ids[1] == ids[2]
    ages = [sorted(s.age for s in c.wait_stamp(SEGMENTS, h.stamp).segments) for h in sent]
    assert ages == [[1] * 4, [2] * 4, [3] * 4]
    # Colour map and overlay were subscribed, so they were published, with the same header.
    colors = c.wait_stamp(COLORS, sent[0].stamp, 5)
    assert colors.header == sent[0] and np.array_equal(image_to_numpy(colors), rgb)
    over = c.wait_stamp(OVERLAY, sent[0].stamp, 5)
    labels0 = image_to_numpy(c.wait_stamp(LABELS, sent[0].stamp))
    assert np.array_equal(image_to_numpy(over), overlay(rgb, labels0, 0.5))
    # The node keeps frame-sized buffers on the heap (seg_node.ros.allocator) and says so at start-up.
    assert "allocator keeps buffers up to 32 MiB on the heap" in s.node.log()


def test_compressed_input_and_sensor_data_qos(session_factory, oracle_model: Path) -> None:
    # Default QoS: the node subscribes best effort (SensorDataQoS); the driver publishes reliable (REP 2003).
    s = session_factory({"model.path": str(oracle_model), **ORACLE, "input.transport": "compressed"},
                        remaps={"image": "/camera/color/image_raw"})
    c = s.client
    c.subscribe(SegmentArray, SEGMENTS)
    c.subscribe(Image, LABELS)
    pub = c.publisher(CompressedImage, "/camera/color/image_raw/compressed")
    s.node.wait_ready()
    c.wait_matched([pub], [(SEGMENTS, 1)])
    truth = rectangles_scene(240, 320, [(20, 20, 100, 80), (180, 120, 90, 90)])
    hdr = header(42, 7, "cam")
    msg = c.send_until([(pub, numpy_to_compressed(paint(truth), "rgb8", "png", header=hdr))], SEGMENTS, hdr.stamp)
    assert msg is not None, s.node.log()
    assert msg.header == hdr and len(msg.segments) == 2
    check_matches_truth(image_to_numpy(c.wait_stamp(LABELS, hdr.stamp, 5)), truth)


def _bad_image(kind: str) -> Image:
    good = numpy_to_image(paint(rectangles_scene(48, 64, [(5, 5, 20, 20)])), "rgb8")
    if kind == "unsupported_encoding":
        good.encoding = "yuv422"
    elif kind == "8uc3":
        good.encoding = "8UC3"
    elif kind == "step":
        good.step = good.step + 3
    elif kind == "empty":
        good.data = b""
    elif kind == "truncated":
        good.data = bytes(good.data)[:-100]
    elif kind == "zero_size":
        good.width = 0
        good.data = b""
        good.step = 0
    elif kind == "too_large":  # header claims 8K; rejected by size before anything is decoded
        good.width, good.height, good.step = 7680, 4320, 7680 * 3
    return good


def test_bad_raw_frames_are_reported_and_skipped(session_factory, oracle_model: Path) -> None:
    s = session_factory({"model.path": str(oracle_model), **ORACLE, "qos.image.reliability": "reliable",
                         "diagnostics.period": 0.2, "diagnostics.warn_period": 0.0})
    c = s.client
    c.subscribe(SegmentArray, SEGMENTS)
    c.subscribe(DiagnosticArray, "/diagnostics")
    pub = c.publisher(Image, "/image")
    s.node.wait_ready()
    c.wait_matched([pub], [(SEGMENTS, 1), ("/diagnostics", 1)])
    kinds = {"unsupported_encoding": "unsupported_encoding", "8uc3": "unsupported_encoding", "step": "malformed_image",
             "empty": "malformed_image", "truncated": "malformed_image", "zero_size": "malformed_image",
             "too_large": "too_large"}

    def counts() -> dict:
        msgs = c.messages("/diagnostics")
        return diagnostics_values(msgs[-1]) if msgs else {}

    for i, kind in enumerate(kinds):
        msg = _bad_image(kind)
        msg.header = header(100 + i)
        pub.publish(msg)
        # One at a time (none is dropped as stale before it is looked at).
        assert c.wait_for(lambda: counts().get("frames_bad") == str(i + 1), 10), (kind, counts())
    good = header(200, 0, "after_bad_frames")
    pub.publish(numpy_to_image(paint(rectangles_scene()), "rgb8", header=good))
    answer = c.wait_stamp(SEGMENTS, good.stamp, 20)
    assert answer is not None and len(answer.segments) == 4, s.node.log()
    assert all(int(m.header.stamp.sec) == 200 for m in c.messages(SEGMENTS))  # no output for a bad frame
    expected = {}
    for reason in kinds.values():
        expected[reason] = expected.get(reason, 0) + 1
    assert all(counts().get(f"bad.{r}") == str(n) for r, n in expected.items()), counts()
    log = s.node.log()
    for needle in ("yuv422", "8UC3", "step", "bytes", "max_pixels"):
        assert needle in log, needle
    assert int(counts()["frames_bad"]) == len(kinds)


def test_bad_compressed_frames(session_factory, oracle_model: Path) -> None:
    s = session_factory({"model.path": str(oracle_model), **ORACLE, "input.transport": "compressed",
                         "qos.image.reliability": "reliable", "diagnostics.period": 0.2,
                         "input.max_pixels": 4096 * 4096})
    c = s.client
    c.subscribe(SegmentArray, SEGMENTS)
    c.subscribe(DiagnosticArray, "/diagnostics")
    pub = c.publisher(CompressedImage, "/image/compressed")
    s.node.wait_ready()
    c.wait_matched([pub], [(SEGMENTS, 1), ("/diagnostics", 1)])
    good = numpy_to_compressed(paint(rectangles_scene(48, 64, [(5, 5, 20, 20)])), "rgb8", "png")
    corrupt = CompressedImage(header=header(1), format="rgb8; png compressed bgr8", data=bytes(good.data)[:40] + b"x" * 50)
    garbage = CompressedImage(header=header(2), format="jpeg", data=b"\x00\x01not an image" * 10)
    empty = CompressedImage(header=header(3), format="png", data=b"")
    depth_fmt = CompressedImage(header=header(4), format="16UC1; compressedDepth png", data=bytes(good.data))
    # A real 8K PNG (a black frame compresses to a few kB): rejected from its header, never decoded.
    huge = numpy_to_compressed(np.zeros((4320, 7680), np.uint8), "mono8", "png", header=header(5))
    def counts() -> dict:
        msgs = c.messages("/diagnostics")
        return diagnostics_values(msgs[-1]) if msgs else {}

    for i, msg in enumerate((corrupt, garbage, empty, depth_fmt, huge)):
        pub.publish(msg)
        assert c.wait_for(lambda: counts().get("frames_bad") == str(i + 1), 10), (i, counts(), s.node.log())
    ok = header(9, 0, "after")
    pub.publish(numpy_to_compressed(paint(rectangles_scene()), "rgb8", "jpeg", header=ok))
    answer = c.wait_stamp(SEGMENTS, ok.stamp, 20)
    assert answer is not None and answer.header == ok, s.node.log()

    want = {"bad.corrupt_compressed": "3", "bad.unsupported_encoding": "1", "bad.too_large": "1"}
    assert all(counts().get(k) == v for k, v in want.items()), counts()
    assert "7680x4320" in s.node.log() and "compressedDepth" in s.node.log()


@pytest.mark.parametrize("case", ["missing_model", "corrupt_model", "bad_value", "unknown_param", "empty_path_needs_own_weights",
                                  "bad_params_file"])
def test_startup_errors_exit_fast_naming_the_problem(case: str, tmp_path: Path, oracle_model: Path) -> None:
    params = {"model.path": str(oracle_model)}
    params_file = None
    needle = ""
    if case == "missing_model":
        params["model.path"] = str(tmp_path / "nope.onnx")
        needle = "nope.onnx"
    elif case == "corrupt_model":
        bad = tmp_path / "corrupt.onnx"
        bad.write_bytes(b"\x08\x07garbage" * 100)
        params["model.path"] = str(bad)
        needle = "corrupt.onnx"
    elif case == "bad_value":
        params["instances.min_area"] = -5
        needle = "instances.min_area"
    elif case == "unknown_param":
        params["instances.min_aera"] = 5
        needle = "instances.min_aera"
    elif case == "empty_path_needs_own_weights":  # the CUDA and Jetson profiles: no shipped model for torch
        params["model.path"] = "''"
        params["backend.name"] = "torch"
        needle = "model.path is empty, but backend.name torch needs your own weights"
    elif case == "bad_params_file":
        params_file = tmp_path / "broken.yaml"
        params_file.write_text("segmenter:\n  ros__parameters:\n    sync: {mode: sometimes}\n")
        needle = "sync.mode must be one of exact, approximate, got 'sometimes' (params file: " + str(params_file)
    lease = allocate_domain()
    try:
        node = NodeProcess(ros_env(lease.domain, tmp_path / "log"), tmp_path / "node.log", params, params_file)
        rc = node.wait_exit(30)
        took = time.monotonic() - node.started
        log = node.log()
        node.stop()
    finally:
        lease.release()
    assert rc == 2, log
    assert "cannot start" in log and needle in log, log
    print(f"{took:.1f} s: {log.strip().splitlines()[-1]}")


def test_runtime_parameters(session_factory, oracle_model: Path) -> None:
    s = session_factory({"model.path": str(oracle_model), **ORACLE, "qos.image.reliability": "reliable"})
    c = s.client
    c.subscribe(SegmentArray, SEGMENTS)
    pub = c.publisher(Image, "/image")
    s.node.wait_ready()
    c.wait_matched([pub], [(SEGMENTS, 1)])
    truth = rectangles_scene()
    areas = sorted(int(np.count_nonzero(truth == k)) for k in range(1, 5))
    hdr = header(1)
    pub.publish(numpy_to_image(paint(truth), "rgb8", header=hdr))
    assert len(c.wait_stamp(SEGMENTS, hdr.stamp, 20).segments) == 4
    # A threshold changes at run time; the next frame uses it.
    (res,) = c.set_parameters(NODE, {"instances.min_area": areas[1] + 1})
    assert res.successful, res.reason
    hdr = header(2)
    pub.publish(numpy_to_image(paint(truth), "rgb8", header=hdr))
    assert sorted(seg.area for seg in c.wait_stamp(SEGMENTS, hdr.stamp, 20).segments) == areas[2:]
    # Unsafe and invalid changes are rejected with the reason.
    (res,) = c.set_parameters(NODE, {"model.path": "/other.onnx"})
    assert not res.successful and "model.path" in res.reason and "restart" in res.reason
    (res,) = c.set_parameters(NODE, {"instances.min_area": -3})
    assert not res.successful and "instances.min_area" in res.reason
    (res,) = c.set_parameters(NODE, {"sync.slop": "wide"})
    assert not res.successful and "sync.slop" in res.reason
    assert c.get_parameters(NODE, ["instances.min_area", "model.path"]) == {
        "instances.min_area": areas[1] + 1, "model.path": str(oracle_model)}
    # Tracking can be switched off at run time: ids are then the per-frame ranks by area.
    results = c.set_parameters(NODE, {"tracking.enabled": False, "instances.min_area": 30})
    assert all(r.successful for r in results), [r.reason for r in results]
    hdr = header(3)
    pub.publish(numpy_to_image(paint(truth), "rgb8", header=hdr))
    segs = c.wait_stamp(SEGMENTS, hdr.stamp, 20).segments
    assert [seg.id for seg in sorted(segs, key=lambda x: -x.area)] == [1, 2, 3, 4]


def test_diagnostics_report_rates_drops_and_latency(session_factory, oracle_model: Path) -> None:
    s = session_factory({"model.path": str(oracle_model), **ORACLE, "diagnostics.period": 0.5,
                         "diagnostics.publish_latency": True})
    c = s.client
    c.subscribe(DiagnosticArray, "/diagnostics")
    c.subscribe(DiagnosticArray, f"/{NODE}/latency")
    c.subscribe(SegmentArray, SEGMENTS)
    pub = c.publisher(Image, "/image")
    s.node.wait_ready()
    c.wait_matched([pub], [(SEGMENTS, 1), ("/diagnostics", 1)])
    rgb = paint(rectangles_scene())
    t_end = time.monotonic() + 2.0
    n = 0
    while time.monotonic() < t_end:  # ~250 Hz: faster than the node segments, so frames are dropped
        pub.publish(numpy_to_image(rgb, "rgb8", header=header(10, n * 1000)))
        n += 1
        time.sleep(0.004)
    assert c.wait_for(lambda: len(c.messages(SEGMENTS)) > 0, 10)
    time.sleep(1.2)
    values = diagnostics_values(c.messages("/diagnostics")[-1])
    print({k: v for k, v in values.items() if "median" in k or "rate" in k or "frames" in k})
    # Best effort at ~250 Hz: the reader's queue (depth 5) may overflow while the executor is busy, so how many
    # arrive is the transport's business; what the node reports about them must add up.
    assert 0 < int(values["frames_received"]) <= n
    assert int(values["frames_processed"]) + int(values["frames_dropped"]) <= int(values["frames_received"])
    assert int(values["frames_dropped"]) > 0
    assert int(values["frames_processed"]) == len(c.messages(SEGMENTS))
    for stage in ("decode", "network", "instances", "geometry", "publish", "total"):
        assert float(values[f"latency_ms.{stage}.median"]) >= 0.0
    assert "input_rate_hz" in values and "output_rate_hz" in values and values["sync_dropped"] == "0"
    # ~/latency: one message per processed frame, header copied from its image.
    lat = c.messages(f"/{NODE}/latency")
    assert lat and {int(m.header.stamp.sec) for m in lat} == {10}
    assert {kv.key for kv in lat[0].status[0].values} >= {"network", "total", "end_to_end"}


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_clean_shutdown(sig: int, session_factory, oracle_model: Path) -> None:
    s = session_factory({"model.path": str(oracle_model), **ORACLE})
    c = s.client
    c.subscribe(SegmentArray, SEGMENTS)
    pub = c.publisher(Image, "/image")
    s.node.wait_ready()
    c.wait_matched([pub], [(SEGMENTS, 1)])
    rgb = paint(rectangles_scene())
    for i in range(5):  # busy while the signal comes
        pub.publish(numpy_to_image(rgb, "rgb8", header=header(1, i)))
        time.sleep(0.01)
    shm = s.node.shm_files()
    assert shm, "the node should use Fast DDS shared memory"
    ours = {line.split()[-1] for line in Path("/proc/self/maps").read_text().splitlines() if any(p in line for p in SHM_PREFIXES)}
    rc, elapsed = s.node.stop(sig)
    assert rc == 0, (rc, elapsed, s.node.log())  # None: it had to be killed (NodeProcess.stop)
    # Its own segments are gone (port files are shared between processes and may stay while others use them).
    own = {f for f in shm - ours if "_port" not in f}
    assert own and not [f for f in own if Path(f).exists()], own
    assert "Traceback" not in s.node.log()
