"""The node with depth and camera_info (separate process, real DDS on loopback): 3D centroids and grasp widths on a
ray-cast scene of known geometry (boxes and cylinders on a table 1 m away), markers, and every depth fault."""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from tests.helpers.ros_helpers import NodeProcess, RosClient, allocate_domain, camera_info, diagnostics_values, header, paint, ros_env
from tests.helpers.scenes import K, OBJECTS, Box, render

pytestmark = pytest.mark.ros

pytest.importorskip("rclpy")
from diagnostic_msgs.msg import DiagnosticArray  # noqa: E402
from sensor_msgs.msg import CameraInfo, Image  # noqa: E402
from seg_msgs.msg import Segment, SegmentArray  # noqa: E402
from visualization_msgs.msg import Marker, MarkerArray  # noqa: E402

from seg_node.processing.image_codec import image_to_numpy, numpy_to_image  # noqa: E402

NODE = "segmenter"
SEGMENTS, LABELS, MARKERS = f"/{NODE}/segments", f"/{NODE}/labels", f"/{NODE}/markers"
DEPTH_PARAMS = {"model.processing_resolution": 0, "backend.threads": 1, "input.use_depth": True,
                "qos.image.reliability": "reliable", "qos.depth_image.reliability": "reliable",
                "qos.camera_info.reliability": "reliable"}


@pytest.fixture(scope="module")
def oracle_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from tests.helpers.oracle_model import make_oracle_onnx

    return make_oracle_onnx(tmp_path_factory.mktemp("models") / "oracle.onnx")


@pytest.fixture
def depth_session(tmp_path: Path, oracle_model: Path, request: pytest.FixtureRequest):
    extra = getattr(request, "param", {})
    lease = allocate_domain()
    node = NodeProcess(ros_env(lease.domain, tmp_path / "log"), tmp_path / "node.log",
                       {"model.path": str(oracle_model), **DEPTH_PARAMS, **extra})
    client = RosClient(lease.domain)
    try:
        client.subscribe(SegmentArray, SEGMENTS)
        client.subscribe(Image, LABELS)
        pubs = (client.publisher(Image, "/image"), client.publisher(Image, "/depth"),
                client.publisher(CameraInfo, "/camera_info"))
        node.wait_ready()
        client.wait_matched(list(pubs), [(SEGMENTS, 1)])
        yield node, client, pubs
    finally:
        client.close()
        node.stop()
        lease.release()


def frame_msgs(scene, hdr, depth_encoding: str = "32FC1", k=K):
    rgb = paint(scene.labels)
    if depth_encoding == "16UC1":
        mm = np.nan_to_num(np.round(scene.depth * 1000), nan=0).astype(np.uint16)
        depth = numpy_to_image(mm, "16UC1", header=hdr)
    else:
        depth = numpy_to_image(scene.depth.astype(np.float32), "32FC1", header=hdr)
    info = camera_info(hdr, k.width, k.height, k.fx, k.fy, k.cx, k.cy)
    return numpy_to_image(rgb, "rgb8", header=hdr), depth, info


def quat_matrix(q) -> np.ndarray:
    return Rotation.from_quat([q.x, q.y, q.z, q.w]).as_matrix()


def vec(v) -> np.ndarray:
    return np.array([v.x, v.y, v.z])


@pytest.mark.parametrize("tilt, encoding", [(0.0, "32FC1"), (20.0, "16UC1")], ids=["facing-32FC1", "tilted20-16UC1"])
def test_3d_centroids_grasps_and_markers(depth_session, tilt: float, encoding: str) -> None:
    node, c, (pub_img, pub_depth, pub_info) = depth_session
    c.subscribe(MarkerArray, MARKERS)
    c.wait_matched([], [(MARKERS, 1)])
    scene = render(tilt)
    hdr = header(1000, 500, "camera_color_optical_frame")
    img, depth, info = frame_msgs(scene, hdr, encoding)
    seg_msg = c.send_until([(pub_depth, depth), (pub_info, info), (pub_img, img)], SEGMENTS, hdr.stamp)
    assert seg_msg is not None, node.log()
    assert seg_msg.header == hdr
    labels = image_to_numpy(c.wait_stamp(LABELS, hdr.stamp, 5))
    assert len(seg_msg.segments) == len(OBJECTS)
    errors = []
    for s in seg_msg.segments:
        k = int(np.bincount(scene.labels[labels == s.id]).argmax())
        assert np.array_equal(labels == s.id, scene.labels == k)
        obj = OBJECTS[k - 1]
        assert s.has_3d and s.depth_flags == 0 and s.num_depth_points == len(scene.truth[k - 1])
        centroid_err = np.linalg.norm(vec(s.centroid_3d) - scene.truth[k - 1].mean(axis=0))
        width = obj.size[1] if isinstance(obj, Box) else 2 * obj.radius
        width_err = abs(s.grasp_width - width)
        normal = vec(s.normal)
        normal_err = np.degrees(np.arccos(np.clip(normal @ scene.table_normal, -1, 1)))
        errors.append((round(centroid_err * 1e3, 2), round(width_err * 1e3, 2), round(normal_err, 2)))
        assert centroid_err <= 0.005 and width_err <= 0.005 and normal_err < 3.0, errors
        # Grasp pose: z approaches against the surface normal, y closes across the minor axis, at the centroid.
        g = quat_matrix(s.grasp_pose.orientation)
        np.testing.assert_allclose(g[:, 2], -normal, atol=1e-5)
        np.testing.assert_allclose(vec(s.grasp_pose.position), vec(s.centroid_3d), atol=1e-6)
        b = quat_matrix(s.box_pose.orientation)
        np.testing.assert_allclose(b[:, 2], normal, atol=1e-5)
        np.testing.assert_allclose(abs(g[:, 1] @ b[:, 1]), 1.0, atol=1e-5)
        assert s.extents.x >= s.extents.y > 0
    print(f"tilt {tilt} {encoding}: (centroid mm, grasp width mm, normal deg) per segment: {errors}")
    markers = c.wait_stamp(MARKERS, hdr.stamp, 5)
    assert markers is not None and markers.markers[0].action == Marker.DELETEALL
    boxes = [m for m in markers.markers if m.ns == "boxes"]
    assert sorted(m.id for m in boxes) == sorted(s.id for s in seg_msg.segments)
    assert all(m.header == hdr for m in markers.markers)
    assert len([m for m in markers.markers if m.ns == "grasps"]) == len(OBJECTS)


def test_depth_faults_are_reported_and_the_node_keeps_serving(depth_session) -> None:
    node, c, (pub_img, pub_depth, pub_info) = depth_session
    c.subscribe(DiagnosticArray, "/diagnostics")
    c.wait_matched([], [("/diagnostics", 1)])
    scene = render(0.0)
    rgb = paint(scene.labels)
    flags_of = {}

    def send(name: str, sec: int, depth=None, info=None, image=True, wait=True):
        hdr = header(sec)
        msgs = []
        if depth is not None:
            depth.header = hdr
            msgs.append((pub_depth, depth))
        if info is not None:
            info.header = hdr
            msgs.append((pub_info, info))
        if image:
            msgs.append((pub_img, numpy_to_image(rgb, "rgb8", header=hdr)))
        for pub, msg in msgs:
            pub.publish(msg)
        if wait:
            out = c.wait_stamp(SEGMENTS, hdr.stamp, 15)
            assert out is not None, (name, node.log())
            assert len(out.segments) == len(OBJECTS), name
            flags_of[name] = {s.depth_flags for s in out.segments}
            return out

    good_info = lambda k=K: camera_info(None, k.width, k.height, k.fx, k.fy, k.cx, k.cy)  # noqa: E731
    d32 = lambda a: numpy_to_image(np.asarray(a, np.float32), "32FC1")  # noqa: E731
    # A good frame first (discovery settled once one answer has come back).
    img, depth, info = frame_msgs(scene, header(1))
    assert c.send_until([(pub_depth, depth), (pub_info, info), (pub_img, img)], SEGMENTS, header(1).stamp)
    send("nan", 2, d32(np.full_like(scene.depth, np.nan)), good_info())
    send("zero_16uc1", 3, numpy_to_image(np.zeros(scene.depth.shape, np.uint16), "16UC1"), good_info())
    send("negative", 4, d32(-scene.depth), good_info())
    half = K.scaled_to(K.width // 2, K.height // 2)
    out = send("half_res", 5, d32(render(0.0, half).depth), good_info(half))
    assert all(s.has_3d for s in out.segments)
    send("no_camera_info", 6, d32(scene.depth), None)
    bad_k = good_info()
    bad_k.k = [0.0] * 9
    send("zero_k", 7, d32(scene.depth), bad_k)
    send("rgb_as_depth", 8, numpy_to_image(rgb, "rgb8"), good_info())
    send("no_depth", 9, None, good_info())
    send("truncated_depth", 10, _truncated(d32(scene.depth)), good_info())
    out = send("good_again", 11, d32(scene.depth), good_info())
    assert all(s.has_3d and s.depth_flags == 0 for s in out.segments)

    S = Segment
    assert flags_of["nan"] == {S.DEPTH_INVALID_PIXELS | S.DEPTH_TOO_FEW_POINTS}
    assert flags_of["zero_16uc1"] == {S.DEPTH_INVALID_PIXELS | S.DEPTH_TOO_FEW_POINTS}
    assert flags_of["negative"] == {S.DEPTH_INVALID_PIXELS | S.DEPTH_TOO_FEW_POINTS}
    assert flags_of["half_res"] == {S.DEPTH_RESOLUTION_MISMATCH}
    assert flags_of["no_camera_info"] == {S.DEPTH_NO_CAMERA_INFO}
    assert flags_of["zero_k"] == {S.DEPTH_NO_CAMERA_INFO}
    assert flags_of["rgb_as_depth"] == {S.DEPTH_NOT_PROVIDED}
    assert flags_of["no_depth"] == {S.DEPTH_NOT_PROVIDED}
    assert flags_of["truncated_depth"] == {S.DEPTH_NOT_PROVIDED}

    def values() -> dict:
        msgs = c.messages("/diagnostics")
        return diagnostics_values(msgs[-1]) if msgs else {}

    want = {"bad.depth_no_valid_pixels": 3, "bad.depth_negative": 1, "bad.depth_size_mismatch": 1,
            "bad.camera_info_missing": 1, "bad.camera_info_invalid": 1, "bad.depth_unsupported_encoding": 1,
            "bad.depth_missing": 1, "bad.depth_malformed_image": 1, "sync_missing.camera_info": 1,
            "sync_missing.depth": 1}
    assert c.wait_for(lambda: all(int(values().get(k, -1)) == v for k, v in want.items()), 5), values()
    log = node.log()
    assert log.count("is resampled (nearest)") == 1  # warned once
    for needle in ("no valid pixel", "negative", "no camera_info within", "fx must be", "'rgb8'", "no depth image within"):
        assert needle in log, needle


def _truncated(msg: Image) -> Image:
    msg.data = bytes(msg.data)[: len(msg.data) // 2]
    return msg


@pytest.mark.parametrize("depth_session", [{"sync.mode": "exact"}], indirect=True, ids=["exact"])
def test_exact_sync_rejects_near_stamps(depth_session) -> None:
    node, c, (pub_img, pub_depth, pub_info) = depth_session
    scene = render(0.0)
    img, depth, info = frame_msgs(scene, header(1))
    assert c.send_until([(pub_depth, depth), (pub_info, info), (pub_img, img)], SEGMENTS, header(1).stamp)
    # Depth and camera_info 5 ms after the image: within the default slop, but not exact.
    img, depth, info = frame_msgs(scene, header(2))
    depth.header = info.header = header(2, 5_000_000)
    for pub, msg in ((pub_depth, depth), (pub_info, info), (pub_img, img)):
        pub.publish(msg)
    out = c.wait_stamp(SEGMENTS, header(2).stamp, 10)
    assert out is not None, node.log()
    assert {s.depth_flags for s in out.segments} == {Segment.DEPTH_NOT_PROVIDED}
    time.sleep(0.1)
    assert "no depth image within 0.02 s" in node.log()


@pytest.mark.parametrize("depth_session", [{"sync.slop": 0.01}], indirect=True, ids=["approximate"])
def test_approximate_sync_matches_near_stamps(depth_session) -> None:
    node, c, (pub_img, pub_depth, pub_info) = depth_session
    scene = render(0.0)
    img, depth, info = frame_msgs(scene, header(1))
    depth.header = header(1, 4_000_000)
    info.header = header(0, 997_000_000)
    out = c.send_until([(pub_depth, depth), (pub_info, info), (pub_img, img)], SEGMENTS, header(1).stamp)
    assert out is not None and all(s.has_3d for s in out.segments), node.log()
    assert out.header == header(1)  # the image's header, not the partners'
