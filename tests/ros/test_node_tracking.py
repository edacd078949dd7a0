"""Stable ids over a moving-object sequence (with a brief occlusion), ~/segment_points on the latest frame, and the
on-demand mode; the node is a separate process on real DDS (loopback)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from tests.helpers.ros_helpers import (
    NodeProcess,
    RosClient,
    allocate_domain,
    camera_info,
    header,
    moving_sequence,
    paint,
    rectangles_scene,
    ros_env,
)
from tests.helpers.oracle_model import make_oracle_onnx
from tests.helpers.scenes import K, OBJECTS, render

pytestmark = pytest.mark.ros

pytest.importorskip("rclpy")
from geometry_msgs.msg import Point  # noqa: E402
from sensor_msgs.msg import CameraInfo, Image  # noqa: E402
from seg_msgs.msg import SegmentArray  # noqa: E402
from seg_msgs.srv import SegmentPoints  # noqa: E402

from seg_node.processing.image_codec import image_to_numpy, numpy_to_image  # noqa: E402

NODE = "segmenter"
SEGMENTS, LABELS = f"/{NODE}/segments", f"/{NODE}/labels"
SERVICE = f"/{NODE}/segment_points"
BASE = {"model.processing_resolution": 0, "backend.threads": 1, "qos.image.reliability": "reliable"}


@pytest.fixture(scope="module")
def oracle_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_oracle_onnx(tmp_path_factory.mktemp("models") / "oracle.onnx")


@pytest.fixture
def session(tmp_path: Path, oracle_model: Path):
    opened = []

    def start(params: dict):
        lease = allocate_domain()
        node = NodeProcess(ros_env(lease.domain, tmp_path / "log"), tmp_path / "node.log",
                           {"model.path": str(oracle_model), **BASE, **params})
        client = RosClient(lease.domain)
        opened.append((lease, node, client))
        client.subscribe(SegmentArray, SEGMENTS)
        client.subscribe(Image, LABELS)
        node.wait_ready()
        return node, client

    yield start
    for lease, node, client in opened:
        client.close()
        node.stop()
        lease.release()


def ids_by_object(labels: np.ndarray, truth: np.ndarray) -> dict[int, int]:
    out = {}
    for k in (int(v) for v in np.unique(truth) if v):
        values = np.unique(labels[truth == k])
        assert len(values) == 1 and values[0] != 0, (k, values)
        assert np.array_equal(labels == values[0], truth == k)
        out[k] = int(values[0])
    return out


@pytest.mark.parametrize("tracking", [True, False], ids=["tracking", "no_tracking"])
def test_ids_stable_over_a_moving_sequence_with_occlusion(session, tracking: bool) -> None:
    node, c = session({"tracking.enabled": tracking})
    pub = c.publisher(Image, "/image")
    c.wait_matched([pub], [(SEGMENTS, 1)])
    frames = moving_sequence(14, occlude=(6, 7))  # object 2 hidden for two frames
    history = []
    for t, truth in enumerate(frames):
        hdr = header(50, t * 33_000_000)
        pub.publish(numpy_to_image(paint(truth), "rgb8", header=hdr))
        seg = c.wait_stamp(SEGMENTS, hdr.stamp, 15)  # lockstep: every frame is segmented
        assert seg is not None, node.log()
        labels = image_to_numpy(c.wait_stamp(LABELS, hdr.stamp, 5))
        ids = ids_by_object(labels, truth)
        ages = {s.id: s.age for s in seg.segments}
        history.append((ids, {k: ages[i] for k, i in ids.items()}))
    print([h[0] for h in history])
    if tracking:
        first = history[0][0]
        for t, (ids, ages) in enumerate(history):
            assert all(ids[k] == first[k] for k in ids), (t, ids, first)  # same id per object, through the gap
        assert [h[1][1] for h in history] == list(range(1, 15))
        assert [h[1].get(2) for h in history] == [1, 2, 3, 4, 5, 6, None, None, 1, 2, 3, 4, 5, 6]
    else:
        # Without tracking ids are per-frame ranks by area, so they change when the areas' order changes.
        assert len({tuple(sorted(h[0].items())) for h in history}) > 1
        assert all(set(h[1].values()) == {1} for h in history)


def test_segment_points_on_the_latest_frame_with_depth(session) -> None:
    node, c = session({"input.use_depth": True, "qos.depth_image.reliability": "reliable",
                       "qos.camera_info.reliability": "reliable"})
    pubs = [c.publisher(Image, "/depth"), c.publisher(CameraInfo, "/camera_info"), c.publisher(Image, "/image")]
    c.wait_matched(pubs, [(SEGMENTS, 1)])
    # Before any frame: a clear failure, not a hang.
    resp = c.call(SegmentPoints, SERVICE, SegmentPoints.Request(points=[Point(x=1.0, y=1.0)], labels=[1]))
    assert not resp.success and "no frame" in resp.message
    scene = render(20.0)
    hdr = header(77, 1, "camera_color_optical_frame")
    msgs = [numpy_to_image(scene.depth, "32FC1", header=hdr), camera_info(hdr, K.width, K.height, K.fx, K.fy, K.cx, K.cy),
            numpy_to_image(paint(scene.labels), "rgb8", header=hdr)]
    assert c.send_until(list(zip(pubs, msgs)), SEGMENTS, hdr.stamp), node.log()

    def centre(k: int) -> Point:
        ys, xs = np.nonzero(scene.labels == k)
        i = np.argmin((xs - xs.mean()) ** 2 + (ys - ys.mean()) ** 2)
        return Point(x=float(xs[i]), y=float(ys[i]), z=0.0)

    # Object 7 = objects 1 and 3 (two positives); object 2 = object 2 with a negative point on object 4.
    req = SegmentPoints.Request(points=[centre(1), centre(3), centre(2), centre(4)], labels=[1, 1, 1, 0],
                                object_ids=[7, 7, 2, 2])
    resp = c.call(SegmentPoints, SERVICE, req)
    assert resp.success, resp.message
    assert resp.header == hdr and list(resp.object_ids) == [2, 7]
    masks = {i: image_to_numpy(m) > 0 for i, m in zip(resp.object_ids, resp.masks)}
    assert all(m.encoding == "mono8" and (m.height, m.width) == scene.labels.shape for m in resp.masks)
    assert np.array_equal(masks[2], scene.labels == 2)
    assert np.array_equal(masks[7], (scene.labels == 1) | (scene.labels == 3))
    seg2 = resp.segments[0]
    assert seg2.id == 2 and seg2.area == int(np.count_nonzero(scene.labels == 2)) and seg2.has_3d
    truth = scene.truth[1].mean(axis=0)
    assert np.linalg.norm(np.array([seg2.centroid_3d.x, seg2.centroid_3d.y, seg2.centroid_3d.z]) - truth) < 0.005
    assert abs(seg2.grasp_width - OBJECTS[1].size[1]) < 0.005
    # Bad requests fail with the reason.
    bad = c.call(SegmentPoints, SERVICE, SegmentPoints.Request(points=[Point(x=5000.0, y=1.0)], labels=[1]))
    assert not bad.success and "outside" in bad.message
    bad = c.call(SegmentPoints, SERVICE, SegmentPoints.Request(points=[centre(1)], labels=[1, 0]))
    assert not bad.success and "labels" in bad.message
    bad = c.call(SegmentPoints, SERVICE, SegmentPoints.Request(points=[centre(1)], labels=[0]))
    assert not bad.success and "positive" in bad.message


def test_on_demand_runs_the_model_only_when_asked(session) -> None:
    node, c = session({"processing.on_demand": True})
    pub = c.publisher(Image, "/image")
    c.wait_matched([pub], [(SEGMENTS, 1)])
    truth = rectangles_scene()
    for i in range(5):
        pub.publish(numpy_to_image(paint(truth), "rgb8", header=header(5, i)))
    c.wait_for(lambda: False, 1.0)
    assert c.messages(SEGMENTS) == []  # nothing segmented without a request
    ys, xs = np.nonzero(truth == 3)
    req = SegmentPoints.Request(points=[Point(x=float(xs.mean()), y=float(ys.mean()))], labels=[1])
    resp = c.call(SegmentPoints, SERVICE, req, timeout=20)
    assert resp.success, resp.message
    assert resp.header.stamp.nanosec == 4  # the latest frame
    assert np.array_equal(image_to_numpy(resp.masks[0]) > 0, truth == 3)
    # The request also published that frame's labels and segments, once.
    out = c.wait_for(lambda: c.messages(SEGMENTS), 5)
    assert len(out) == 1 and out[0].header.stamp.nanosec == 4 and len(out[0].segments) == 4
    # A second request on the same frame reuses its result (no second publication).
    assert c.call(SegmentPoints, SERVICE, req).success
    c.wait_for(lambda: False, 0.5)
    assert len(c.messages(SEGMENTS)) == 1
