"""The node survives hostile input over real DDS: forged compressed headers (PNG, JPEG, BMP declaring huge sizes),
truncated data, wrong encodings and wrong step/size; afterwards it still answers and /diagnostics counted every
bad frame by reason. Also: lossy input (gaps in the header stamps) is reported with the profile to use, and the node
runs out of the box (the shipped model) or stops naming what a profile needs."""
from __future__ import annotations

import struct
import zlib
from pathlib import Path

import cv2
import numpy as np
import pytest

from tests.helpers.ros_helpers import (REPO, NodeProcess, allocate_domain, diagnostics_values, header, paint,
                                      rectangles_scene, ros_env)
from tests.ros.test_node import ORACLE, SEGMENTS

pytestmark = pytest.mark.ros

rclpy = pytest.importorskip("rclpy")
from diagnostic_msgs.msg import DiagnosticArray  # noqa: E402
from sensor_msgs.msg import CompressedImage, Image  # noqa: E402
from seg_msgs.msg import SegmentArray  # noqa: E402

from seg_node.model_settings import recommended_settings  # noqa: E402
from seg_node.processing.image_codec import numpy_to_compressed, numpy_to_image  # noqa: E402
from seg_node.ros.params import NODE_NAME  # noqa: E402


def _png_declaring(width: int, height: int) -> bytes:
    """A 157-byte-class PNG whose IHDR declares width x height (the IDAT holds almost nothing)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\x00" * 64)) + chunk(b"IEND", b"")


def _jpeg_declaring(side: int) -> bytes:
    """A valid 640x480 JPEG with its SOF0 size patched to side x side."""
    data = bytearray(cv2.imencode(".jpg", np.zeros((480, 640, 3), np.uint8))[1].tobytes())
    sof = data.index(b"\xff\xc0")
    data[sof + 5 : sof + 9] = struct.pack(">HH", side, side)
    return bytes(data)


def _bmp_declaring(side: int) -> bytes:
    data = bytearray(cv2.imencode(".bmp", np.zeros((8, 8, 3), np.uint8))[1].tobytes())
    data[18:26] = struct.pack("<ii", side, side)
    return bytes(data)


def _malformed_batch() -> list[tuple[str, object]]:
    """(what, message): compressed and raw frames no decoder should turn into a frame."""
    good_png = bytes(numpy_to_compressed(paint(rectangles_scene(48, 64, [(5, 5, 20, 20)])), "rgb8", "png").data)
    compressed = {
        "png_100000x100000": ("png", _png_declaring(100000, 100000)),
        "png_65535x65535": ("png", _png_declaring(65535, 65535)),
        "jpeg_sof_65500": ("jpeg", _jpeg_declaring(65500)),
        "jpeg_sof_40000": ("jpeg", _jpeg_declaring(40000)),
        "bmp_100000": ("bmp", _bmp_declaring(100000)),
        "png_truncated": ("png", good_png[: len(good_png) // 2]),
        "random_bytes": ("jpeg", bytes(np.random.default_rng(0).integers(0, 256, 300, dtype=np.uint8))),
    }
    batch: list[tuple[str, object]] = [(k, CompressedImage(format=f, data=d)) for k, (f, d) in compressed.items()]
    rgb = paint(rectangles_scene(48, 64, [(5, 5, 20, 20)]))
    wrong_encoding = numpy_to_image(rgb, "rgb8")
    wrong_encoding.encoding = "yuv422_yuy2x"
    wrong_step = numpy_to_image(rgb, "rgb8")
    wrong_step.step = 7
    short = numpy_to_image(rgb, "rgb8")
    short.data = bytes(short.data)[:100]
    huge_dims = numpy_to_image(rgb, "rgb8")
    huge_dims.width, huge_dims.height = 100000, 100000
    batch += [("raw_wrong_encoding", wrong_encoding), ("raw_wrong_step", wrong_step), ("raw_truncated", short),
              ("raw_100000x100000", huge_dims)]
    return batch


@pytest.mark.parametrize("transport", ["compressed", "raw"])
def test_a_batch_of_malformed_frames_never_stops_the_node(transport: str, session_factory, oracle_model: Path) -> None:
    s = session_factory({"model.path": str(oracle_model), **ORACLE, "input.transport": transport,
                         "qos.image.reliability": "reliable", "diagnostics.period": 0.2,
                         "diagnostics.warn_period": 0.0})
    c = s.client
    c.subscribe(SegmentArray, SEGMENTS)
    c.subscribe(DiagnosticArray, "/diagnostics")
    msg_type = CompressedImage if transport == "compressed" else Image
    pub = c.publisher(msg_type, "/image/compressed" if transport == "compressed" else "/image")
    s.node.wait_ready()
    c.wait_matched([pub], [(SEGMENTS, 1), ("/diagnostics", 1)])

    def values() -> dict:
        msgs = c.messages("/diagnostics")
        return diagnostics_values(msgs[-1]) if msgs else {}

    batch = [(what, m) for what, m in _malformed_batch() if isinstance(m, msg_type)]
    for i, (what, msg) in enumerate(batch):
        msg.header = header(100 + i)
        pub.publish(msg)
        # One at a time, so none is replaced in the mailbox before it is looked at.
        assert c.wait_for(lambda: values().get("frames_bad") == str(i + 1), 15), (what, values(), s.node.log())
    good = header(300, 0, "after_the_batch")
    rgb = paint(rectangles_scene())
    pub.publish(numpy_to_compressed(rgb, "rgb8", "png", header=good) if transport == "compressed"
                else numpy_to_image(rgb, "rgb8", header=good))
    answer = c.wait_stamp(SEGMENTS, good.stamp, 20)
    assert answer is not None and len(answer.segments) == 4, s.node.log()
    assert c.wait_for(lambda: values().get("frames_processed") == "1", 10), values()
    v = values()
    by_reason = {k: int(n) for k, n in v.items() if k.startswith("bad.")}
    # Every bad frame is counted once under a reason that names it (which reason depends on where the decoder
    # refuses a forged header: before decoding as too_large, or while decoding); none was a node failure.
    assert sum(by_reason.values()) == len(batch) == int(v["frames_bad"]), v
    assert "bad.internal_error" not in by_reason and "bad.inference_error" not in by_reason, v
    assert v["worker_restarts"] == "0" and v["worker_last_fault"] == "none", v
    if transport == "compressed":
        assert by_reason.get("bad.too_large", 0) >= 5, v  # the five forged headers
    else:
        assert by_reason == {"bad.unsupported_encoding": 1, "bad.malformed_image": 2, "bad.too_large": 1}, v


def test_lossy_input_is_reported_with_the_profile_to_use(session_factory, oracle_model: Path) -> None:
    s = session_factory({"model.path": str(oracle_model), **ORACLE, "qos.image.reliability": "reliable",
                         "diagnostics.period": 0.2})
    c = s.client
    c.subscribe(DiagnosticArray, "/diagnostics")
    pub = c.publisher(Image, "/image")
    s.node.wait_ready()
    c.wait_matched([pub], [("/diagnostics", 1)])
    small = numpy_to_image(paint(rectangles_scene(48, 64, [(5, 5, 20, 20)])), "rgb8")
    # A 30 Hz camera of which every third frame reaches the node: stamps 33 ms apart with gaps of 67 ms.
    period_ns = 33_333_333
    for k in range(90):
        if k % 3 == 1:
            continue
        t = 1_000_000_000 + k * period_ns
        small.header = header(t // 1_000_000_000, t % 1_000_000_000)
        pub.publish(small)
        c.wait_for(lambda: False, 0.01)
    assert s.node.wait_for_log("input_lossy", 15), s.node.log()
    assert "FASTRTPS_DEFAULT_PROFILES_FILE" in s.node.log() and "fastdds_large_images.xml" in s.node.log()
    missing = lambda: int(diagnostics_values(c.messages("/diagnostics")[-1]).get("input_frames_missing", 0))  # noqa: E731
    # 30 frames never came; those before the publisher's period is known (10 intervals) are not counted.
    assert c.wait_for(lambda: missing() >= 20, 10), missing()


@pytest.mark.parametrize("profile", [None, "cpu_onnx.yaml"], ids=["no_params_file", "cpu_onnx_alone"])
def test_out_of_the_box_the_shipped_model_runs_from_any_directory(profile: str | None, session_factory,
                                                                  tmp_path: Path) -> None:
    params_file = REPO / "config" / profile if profile else None
    s = session_factory({"qos.image.reliability": "reliable"}, params_file=params_file, cwd=tmp_path)
    c = s.client
    c.subscribe(SegmentArray, SEGMENTS)
    pub = c.publisher(Image, "/image")
    s.node.wait_ready()
    assert "running the shipped default model" in s.node.log() and "engines/default/model.onnx" in s.node.log()
    c.wait_matched([pub], [(SEGMENTS, 1)])
    hdr = header(7, 0, "default_model")
    answer = c.send_until([(pub, numpy_to_image(paint(rectangles_scene()), "rgb8", header=hdr))], SEGMENTS, hdr.stamp)
    assert answer is not None and answer.header == hdr, s.node.log()
    # The model's recommended post-processing runs, and the node's parameters say so.
    recommended = recommended_settings(REPO / "engines" / "default" / "model.onnx")
    names = ["model.refine_radius", "instances.min_area", "instances.background_threshold"]
    assert c.get_parameters(NODE_NAME, names) == {n: recommended[n] for n in names}


def test_a_users_parameter_wins_over_the_models_recommendation(session_factory, tmp_path: Path) -> None:
    s = session_factory({"instances.min_area": 55}, params_file=REPO / "config" / "cpu_onnx.yaml", cwd=tmp_path)
    s.node.wait_ready()
    recommended = recommended_settings(REPO / "engines" / "default" / "model.onnx")
    got = s.client.get_parameters(NODE_NAME, ["instances.min_area", "model.refine_radius"])
    assert got == {"instances.min_area": 55, "model.refine_radius": recommended["model.refine_radius"]}
    assert "recommended post-processing" in s.node.log()


@pytest.mark.parametrize("profile", ["cuda_torch.yaml", "jetson_tensorrt.yaml"])
def test_profiles_that_need_your_weights_stop_naming_the_parameter_and_the_readme(profile: str, tmp_path: Path) -> None:
    lease = allocate_domain()
    try:
        node = NodeProcess(ros_env(lease.domain, tmp_path / "log"), tmp_path / "node.log",
                           params_file=REPO / "config" / profile, cwd=tmp_path)
        rc = node.wait_exit(60)
        log = node.log()
        node.stop()
    finally:
        lease.release()
    assert rc == 2, log
    assert "model.path is empty" in log and "Using the published checkpoints" in log, log
