"""3D segment geometry against ray-cast scenes of known geometry: boxes and cylinders on a (tilted) table."""
from __future__ import annotations

from types import SimpleNamespace

import cv2
import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from seg_node.processing.geometry3d import (
    DEPTH_INVALID_PIXELS,
    DEPTH_NO_CAMERA_INFO,
    DEPTH_NOT_PROVIDED,
    DEPTH_RESOLUTION_MISMATCH,
    DEPTH_TOO_FEW_POINTS,
    CameraIntrinsics,
    DepthParams,
    rotation_to_quaternion,
    segments_3d,
)

from tests.helpers.scenes import H, K, OBJECTS, W, Box, Scene, render  # noqa: E402


@pytest.fixture(scope="module", params=[0.0, 20.0], ids=["facing", "tilted20"])
def scene(request: pytest.FixtureRequest) -> Scene:
    return render(request.param)


def angle_deg(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.degrees(np.arccos(np.clip(a @ b / np.linalg.norm(a) / np.linalg.norm(b), -1, 1))))


def check_scene(scene: Scene, geoms: list, centroid_tol: float = 0.005, width_tol: float = 0.005) -> dict:
    errors = {"centroid": [], "normal": [], "width": []}
    for obj, truth, g in zip(OBJECTS, scene.truth, geoms):
        assert g.valid, g.flags
        errors["centroid"].append(np.linalg.norm(g.centroid - truth.mean(axis=0)))
        errors["normal"].append(angle_deg(g.normal, scene.table_normal))
        errors["width"].append(abs(g.grasp_width - (obj.size[1] if isinstance(obj, Box) else 2 * obj.radius)))
        # Proper rotations, approach against the normal, normal towards the camera.
        for rot in (g.box_rotation, g.grasp_rotation):
            np.testing.assert_allclose(rot.T @ rot, np.eye(3), atol=1e-9)
            assert np.linalg.det(rot) == pytest.approx(1.0)
        np.testing.assert_allclose(g.grasp_rotation[:, 2], -g.normal, atol=1e-12)
        np.testing.assert_allclose(g.box_rotation[:, 2], g.normal, atol=1e-12)
        np.testing.assert_allclose(g.grasp_position, g.centroid)
        assert g.normal @ g.centroid < 0
        assert g.extents[0] >= g.extents[1] > 0
    assert max(errors["centroid"]) < centroid_tol, errors
    assert max(errors["normal"]) < 3.0, errors
    assert max(errors["width"]) < width_tol, errors
    return errors


def test_known_scene_centroid_normal_and_grasp_width(scene: Scene):
    geoms = segments_3d(scene.labels, len(OBJECTS), scene.depth, K, DepthParams())
    errors = check_scene(scene, geoms)
    assert all(g.flags == 0 and g.num_points > 1000 for g in geoms)
    print({k: np.round(np.array(v) * (1 if k == "normal" else 1000), 2).tolist() for k, v in errors.items()},
          "(mm, mm, deg)")


def test_box_axes_extents_and_centre(scene: Scene):
    geoms = segments_3d(scene.labels, len(OBJECTS), scene.depth, K, DepthParams())
    for obj, g in zip(OBJECTS, geoms):
        if not isinstance(obj, Box):
            assert g.extents[0] == pytest.approx(2 * obj.radius, abs=0.005)
            continue
        long_edge = scene.frames[OBJECTS.index(obj)][:, 0]
        assert angle_deg(g.box_rotation[:, 0], long_edge) < 2.0 or angle_deg(-g.box_rotation[:, 0], long_edge) < 2.0
        assert g.box_rotation[0, 0] >= 0  # major axis towards +x in the image
        assert g.extents[0] == pytest.approx(obj.size[0], abs=0.005)
        # Mostly the top is visible: a thin box, whose centre is in the middle of the top face.
        assert g.extents[2] < obj.size[2] + 0.005
        top_centre = scene.tops[OBJECTS.index(obj)]
        offset = g.box_center - top_centre
        assert np.linalg.norm(offset - (offset @ scene.table_normal) * scene.table_normal) < 0.003


def test_millimetre_quantised_and_noisy_depth(scene: Scene):
    rng = np.random.default_rng(0)
    quantised = np.round(scene.depth * 1000) / 1000
    check_scene(scene, segments_3d(scene.labels, len(OBJECTS), quantised.astype(np.float32), K, DepthParams()))
    noisy = np.round((scene.depth + rng.normal(0, 0.002, scene.depth.shape)) * 1000) / 1000
    check_scene(scene, segments_3d(scene.labels, len(OBJECTS), noisy.astype(np.float32), K, DepthParams()))


def test_masks_bleeding_onto_the_table_do_not_pull_the_centroid(scene: Scene):
    # Each mask grown by erode_pixels, as a segmenter's soft edges do: the ring carries table depth, cm behind.
    params = DepthParams()
    r = params.erode_pixels
    grown = scene.labels.copy()
    disk = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * r + 1, 2 * r + 1))
    for k in range(1, len(OBJECTS) + 1):
        grown[(cv2.dilate((scene.labels == k).astype(np.uint8), disk) > 0) & (grown == 0)] = k
    check_scene(scene, segments_3d(grown, len(OBJECTS), scene.depth, K, params))


def test_mask_leaking_onto_distant_background_is_trimmed(scene: Scene):
    # A fifth of each mask's pixels carry a wall 0.5 m behind the object (a leak through a gap).
    depth = scene.depth.copy()
    rng = np.random.default_rng(2)
    for k in range(1, len(OBJECTS) + 1):
        ys, xs = np.nonzero(scene.labels == k)
        pick = rng.random(len(ys)) < 0.2
        depth[ys[pick], xs[pick]] += 0.5
    check_scene(scene, segments_3d(scene.labels, len(OBJECTS), depth, K, DepthParams()))


def test_invalid_pixels_are_dropped_and_flagged(scene: Scene):
    depth = scene.depth.copy()
    ys, xs = np.nonzero(scene.labels == 1)
    cy, cx = int(ys.mean()), int(xs.mean())
    depth[cy - 4 : cy + 4, cx - 4 : cx + 4] = np.nan
    depth[cy + 8 : cy + 10, cx - 4 : cx + 4] = 0.0
    depth[cy - 10 : cy - 8, cx - 4 : cx + 4] = 50.0  # beyond max_depth
    depth[cy - 14 : cy - 12, cx - 4 : cx + 4] = -1.0
    geoms = segments_3d(scene.labels, len(OBJECTS), depth, K, DepthParams())
    assert geoms[0].flags == DEPTH_INVALID_PIXELS
    assert [g.flags for g in geoms[1:]] == [0, 0, 0]
    clean = segments_3d(scene.labels, len(OBJECTS), scene.depth, K, DepthParams())
    assert clean[0].num_points - geoms[0].num_points == 64 + 3 * 16
    assert np.linalg.norm(geoms[0].centroid - scene.truth[0].mean(axis=0)) < 0.005


def test_results_are_read_only_and_stray_labels_ignored(scene: Scene):
    labels = scene.labels.copy()
    labels[:5, :5] = len(OBJECTS) + 1  # a label beyond count
    geoms = segments_3d(labels, len(OBJECTS), scene.depth, K)
    assert [g.num_points for g in geoms] == [len(t) for t in scene.truth]
    with pytest.raises(ValueError, match="read-only"):
        geoms[0].centroid[0] = 0.0


def test_too_few_points():
    labels = np.zeros((H, W), np.uint16)
    labels[100:140, 100:140] = 1
    labels[300:305, 300:305] = 2  # 25 px < min_points, too small to erode
    depth = np.full((H, W), np.nan, np.float32)
    depth[118:123, 118:123] = 1.0  # 25 valid pixels
    depth[300:305, 300:305] = 1.0
    geoms = segments_3d(labels, 2, depth, K, DepthParams(min_points=30))
    assert geoms[0].flags == DEPTH_TOO_FEW_POINTS | DEPTH_INVALID_PIXELS and geoms[0].num_points == 25
    assert not geoms[0].valid
    assert geoms[1].flags == DEPTH_TOO_FEW_POINTS and geoms[1].num_points == 25 and not geoms[1].valid
    assert geoms[1].grasp_width == 0.0 and np.array_equal(geoms[1].grasp_rotation, np.eye(3))


def test_missing_depth_or_camera_info():
    labels = np.zeros((H, W), np.uint16)
    labels[10:50, 10:50] = 1
    labels[60:90, 60:90] = 2
    depth = np.ones((H, W), np.float32)
    assert [g.flags for g in segments_3d(labels, 2, None, K)] == [DEPTH_NOT_PROVIDED] * 2
    assert [g.flags for g in segments_3d(labels, 2, depth, None)] == [DEPTH_NO_CAMERA_INFO] * 2
    assert segments_3d(labels, 2, None, None)[0].flags == DEPTH_NOT_PROVIDED | DEPTH_NO_CAMERA_INFO
    assert not any(g.valid for g in segments_3d(labels, 2, None, K))
    assert segments_3d(labels, 0, depth, K) == []
    with pytest.raises(TypeError, match="decode_depth"):
        segments_3d(labels, 2, np.ones((H, W), np.uint16), K)


def test_half_resolution_depth_and_intrinsics(scene: Scene):
    half = K.scaled_to(W // 2, H // 2)
    assert (half.fx, half.cx, half.cy) == (262.5, 159.5, 119.5)
    low = render(scene.tilt_deg, half)
    # Camera info of the depth stream (half resolution), labels at full resolution.
    geoms = segments_3d(scene.labels, len(OBJECTS), low.depth, half, DepthParams())
    assert all(g.flags & DEPTH_RESOLUTION_MISMATCH for g in geoms)
    check_scene(scene, geoms, centroid_tol=0.01, width_tol=0.01)


def test_intrinsics_from_camera_info_and_errors():
    msg = SimpleNamespace(k=[525.0, 0, 319.5, 0, 525.0, 239.5, 0, 0, 1], width=640, height=480)
    assert CameraIntrinsics.from_camera_info(msg) == K
    rosbags_like = SimpleNamespace(k=np.array(msg.k), width=np.uint32(640), height=np.uint32(480))
    assert CameraIntrinsics.from_camera_info(rosbags_like) == K
    with pytest.raises(ValueError, match="fx"):
        CameraIntrinsics.from_camera_info(SimpleNamespace(k=[0.0] * 9, width=640, height=480))
    with pytest.raises(ValueError, match="fy"):
        CameraIntrinsics.from_camera_info(SimpleNamespace(k=[500, 0, 1, 0, -1, 1, 0, 0, 1], width=640, height=480))
    with pytest.raises(ValueError, match="9 values"):
        CameraIntrinsics.from_camera_info(SimpleNamespace(k=[1.0] * 4, width=640, height=480))
    with pytest.raises(ValueError, match="width"):
        CameraIntrinsics.from_camera_info(SimpleNamespace(k=msg.k, width=0, height=480))


def test_depth_params_validation():
    with pytest.raises(ValueError, match=r"min_depth must be in \[0.001, 1000.0\], got -1"):
        DepthParams(min_depth=-1.0)
    with pytest.raises(ValueError, match="max_depth"):
        DepthParams(min_depth=2.0, max_depth=1.0)
    with pytest.raises(ValueError, match="min_points must be >= 3, got 1"):
        DepthParams(min_points=1)
    with pytest.raises(ValueError, match="erode_pixels must be int"):
        DepthParams(erode_pixels=1.5)
    with pytest.raises(ValueError, match="extent_percentile"):
        DepthParams(extent_percentile=60.0)


def test_quaternion():
    rot = Rotation.from_euler("xyz", [10, -170, 35], degrees=True)
    q = rotation_to_quaternion(rot.as_matrix())
    assert q[3] >= 0 and Rotation.from_quat(q).approx_equal(rot)
    assert rotation_to_quaternion(np.eye(3)) == (0.0, 0.0, 0.0, 1.0)


