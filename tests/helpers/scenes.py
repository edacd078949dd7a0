"""Ray-cast RGB-D scenes of known geometry: boxes and cylinders standing on a (tilted) table 1 m below the camera.

Shared by the 3D geometry tests and the node's depth and tracking tests.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.spatial.transform import Rotation

from seg_node.processing.geometry3d import CameraIntrinsics

W, H = 640, 480
K = CameraIntrinsics(525.0, 525.0, 319.5, 239.5, W, H)


@dataclass(frozen=True)
class Box:
    at: tuple[float, float]  # centre on the table, table coordinates (m)
    size: tuple[float, float, float]  # long side, short side, height (m)
    yaw_deg: float = 0.0  # about the table normal


@dataclass(frozen=True)
class Cylinder:
    at: tuple[float, float]
    radius: float
    height: float


OBJECTS = (
    Box((-0.15, -0.10), (0.12, 0.08, 0.05)),
    Box((0.15, -0.05), (0.10, 0.06, 0.04), yaw_deg=35.0),
    Cylinder((0.0, 0.12), 0.035, 0.10),
    Box((0.25, 0.18), (0.15, 0.05, 0.03), yaw_deg=-20.0),
)


@dataclass
class Scene:
    tilt_deg: float
    labels: np.ndarray  # uint16, object i+1 = OBJECTS[i]
    depth: np.ndarray  # float32 metres
    table_normal: np.ndarray  # towards the camera
    truth: list[np.ndarray]  # per object: its visible points, ray-cast
    frames: list[np.ndarray]  # per object: its axes (columns: long side, short side, up)
    tops: list[np.ndarray]  # per object: centre of its top face


def camera_rays(k: CameraIntrinsics) -> np.ndarray:
    """Rays through pixel centres (integer coordinates, as CameraInfo defines them), scaled so that z = 1: the ray
    parameter of a hit is then its depth."""
    v, u = np.mgrid[0 : k.height, 0 : k.width].astype(np.float64)
    return np.stack(((u - k.cx) / k.fx, (v - k.cy) / k.fy, np.ones_like(u)), axis=-1).reshape(-1, 3)


def hit_box(d: np.ndarray, centre: np.ndarray, frame: np.ndarray, half: np.ndarray) -> np.ndarray:
    o, dl = -centre @ frame, d @ frame  # camera origin and ray directions in the box frame
    with np.errstate(divide="ignore", invalid="ignore"):
        t1, t2 = (-half - o) / dl, (half - o) / dl
    near = np.nanmax(np.minimum(t1, t2), axis=1)
    far = np.nanmin(np.maximum(t1, t2), axis=1)
    return np.where((near <= far) & (near > 0), near, np.inf)


def hit_cylinder(d: np.ndarray, base: np.ndarray, frame: np.ndarray, r: float, h: float) -> np.ndarray:
    o, dl = -base @ frame, d @ frame
    a = dl[:, 0] ** 2 + dl[:, 1] ** 2
    b = 2 * (o[0] * dl[:, 0] + o[1] * dl[:, 1])
    c = o[0] ** 2 + o[1] ** 2 - r * r
    disc = b * b - 4 * a * c
    with np.errstate(invalid="ignore", divide="ignore"):
        t_side = (-b - np.sqrt(disc)) / (2 * a)
        zs = o[2] + t_side * dl[:, 2]
        side = np.where((disc >= 0) & (zs >= 0) & (zs <= h) & (t_side > 0), t_side, np.inf)
        t_top = (h - o[2]) / dl[:, 2]
        xt, yt = o[0] + t_top * dl[:, 0], o[1] + t_top * dl[:, 1]
        top = np.where((xt**2 + yt**2 <= r * r) & (t_top > 0), t_top, np.inf)
    return np.minimum(side, top)


def render(tilt_deg: float = 20.0, k: CameraIntrinsics = K, objects=OBJECTS) -> Scene:
    """Table 1 m in front of the camera, tilted about the camera x axis, with the objects standing on it."""
    tilt = Rotation.from_euler("x", tilt_deg, degrees=True).as_matrix()
    e1, e2, n = tilt @ [1.0, 0, 0], tilt @ [0, -1.0, 0], tilt @ [0, 0, -1.0]  # right-handed, n towards the camera
    p0 = np.array([0, 0, 1.0])
    d = camera_rays(k)
    hits = [np.full(len(d), p0 @ n) / (d @ n)]
    frames, tops = [], []
    for obj in objects:
        foot = p0 + obj.at[0] * e1 + obj.at[1] * e2
        yaw = Rotation.from_euler("z", getattr(obj, "yaw_deg", 0.0), degrees=True).as_matrix()
        frames.append(np.column_stack((e1, e2, n)) @ yaw)
        if isinstance(obj, Box):
            tops.append(foot + obj.size[2] * n)
            hits.append(hit_box(d, foot + obj.size[2] / 2 * n, frames[-1], np.array(obj.size) / 2))
        else:
            tops.append(foot + obj.height * n)
            hits.append(hit_cylinder(d, foot, frames[-1], obj.radius, obj.height))
    t = np.stack(hits)
    labels = np.argmin(t, axis=0)
    depth = t[labels, np.arange(len(d))]
    truth = [d[labels == i] * depth[labels == i, None] for i in range(1, len(objects) + 1)]
    return Scene(tilt_deg, labels.reshape(k.height, k.width).astype(np.uint16),
                 depth.reshape(k.height, k.width).astype(np.float32), n, truth, frames, tops)


