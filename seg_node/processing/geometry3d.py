"""3D geometry of each segment from an aligned depth image: centroid, oriented box, surface normal, parallel-jaw grasp.

Frames and conventions (they fill seg_msgs/Segment):

- 3D quantities are metres in the camera optical frame of the label/depth image (x right, y down, z forward).
- Back-projection follows sensor_msgs/CameraInfo: K maps a 3D point to pixel coordinates in which *integer*
  coordinates are pixel centres, so pixel (u, v) is the ray through (u, v), not (u + 0.5, v + 0.5). The 2D fields of
  Segment (``geometry.shapes_2d``) use pixel-corner coordinates instead; the two differ by half a pixel.
- Depth is float metres, NaN invalid (REP 118 32FC1; ``image_codec.decode_depth`` converts 16UC1 millimetres).
- Flags are the Segment.msg ``DEPTH_*`` bits.

Per segment:

1. Pixels with invalid depth (NaN, 0, negative, outside [min_depth, max_depth]) are dropped.
2. The mask is eroded by erode_pixels: border pixels mix object and background depth, or are background the mask
   bled onto. Depths farther than max(outlier_k robust sigmas, the segment's size) from the interior's median are
   trimmed (a mask leaking onto a distant background).
3. centroid = mean of the interior points. The normal and in-plane axes come from a PCA of the segment's dominant
   planar surface (RANSAC, then refit), not of all points: with a box's top and a side visible, plain PCA tilts
   the normal by the side's share. The normal points towards the camera; the major axis is the in-plane axis with
   the longer extent, signed towards +x in the image.
4. extents = [p, 100 − p] percentile ranges of the projections on the axes of the interior points plus the border
   points on the dominant surface (so erosion does not shrink a box top, and background bled onto does not inflate
   it), plus one pixel for the half pixel beyond the outermost pixel centres on each side.
5. Grasp (parallel jaw): at the centroid, approach z = −normal, closing y = minor axis, x = y × z;
   width = extent along the minor axis.

Known biases: a mask larger than the object by more than erode_pixels inflates extents (the extra background is
off the surface but in the interior); erosion shifts the centroid of tall objects seen obliquely by a few mm.
"""
from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any

import cv2
import numpy as np
from scipy.spatial.transform import Rotation

__all__ = [
    "DEPTH_INVALID_PIXELS",
    "DEPTH_NOT_PROVIDED",
    "DEPTH_NO_CAMERA_INFO",
    "DEPTH_RESOLUTION_MISMATCH",
    "DEPTH_TOO_FEW_POINTS",
    "CameraIntrinsics",
    "DepthParams",
    "Geometry3D",
    "rotation_to_quaternion",
    "segments_3d",
]

# Same values as seg_msgs/msg/Segment.msg.
DEPTH_NOT_PROVIDED = 1
DEPTH_TOO_FEW_POINTS = 2
DEPTH_INVALID_PIXELS = 4
DEPTH_NO_CAMERA_INFO = 8
DEPTH_RESOLUTION_MISMATCH = 16

# MAD of a normal distribution times this is its standard deviation.
_MAD_TO_SIGMA = 1.4826
# Dominant-plane search: hypotheses from random point triples, scored on a subsample.
_RANSAC_PLANES = 64
_RANSAC_SAMPLE = 256
# Interior points per segment (up to twice this) that the plane fit uses.
_PLANE_SAMPLE = 2048


@dataclass(frozen=True)
class CameraIntrinsics:
    """Pinhole intrinsics of the image the label map belongs to (integer pixel coordinates are pixel centres)."""

    fx: float
    fy: float
    cx: float
    cy: float
    width: int
    height: int

    def __post_init__(self) -> None:
        for name in ("fx", "fy"):
            value = getattr(self, name)
            if not (np.isfinite(value) and value > 0):
                raise ValueError(f"{name} must be a finite number > 0, got {value!r} (uncalibrated camera?)")
        for name in ("cx", "cy"):
            if not np.isfinite(getattr(self, name)):
                raise ValueError(f"{name} must be finite, got {getattr(self, name)!r}")
        for name in ("width", "height"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value <= 0:
                raise ValueError(f"{name} must be an integer > 0, got {value!r}")

    @classmethod
    def from_camera_info(cls, msg: Any) -> CameraIntrinsics:
        """From a sensor_msgs/CameraInfo (rclpy or rosbags: anything with ``k``, ``width``, ``height``).

        Uses K and ignores distortion: right for the registered, undistorted depth RGB-D drivers publish (where
        K = P[:3, :3]); for a rectified stereo stream whose P differs from K, build the intrinsics from P.
        """
        k = np.asarray(msg.k, dtype=np.float64).ravel()
        if k.size != 9:
            raise ValueError(f"CameraInfo k must have 9 values (row-major 3x3), got {k.size}")
        return cls(float(k[0]), float(k[4]), float(k[2]), float(k[5]), int(msg.width), int(msg.height))

    def scaled_to(self, width: int, height: int) -> CameraIntrinsics:
        """Intrinsics of the same camera after resizing the image to width × height (no crop).

        Pixel edges scale, not pixel centres: centre u maps to (u + 0.5)·s − 0.5.
        """
        if width <= 0 or height <= 0:
            raise ValueError(f"width and height must be > 0, got {width}x{height}")
        sx, sy = width / self.width, height / self.height
        return CameraIntrinsics(self.fx * sx, self.fy * sy, (self.cx + 0.5) * sx - 0.5, (self.cy + 0.5) * sy - 0.5,
                                int(width), int(height))


@dataclass(frozen=True)
class DepthParams:
    min_depth: float = 0.1  # m; nearer depth pixels are invalid
    max_depth: float = 10.0  # m; farther depth pixels are invalid
    min_points: int = 30  # fewer interior points than this after trimming and the segment has no 3D
    erode_pixels: int = 2  # border width (px) left out of centroid and normal; 0 = off; masks it would empty are kept
    outlier_k: float = 3.0  # trim depths beyond outlier_k robust sigmas (1.4826·MAD) and the size; 0 = no trimming
    surface_band: float = 0.005  # m; half-thickness of the dominant plane (RANSAC inliers); 0 = PCA of all points
    extent_percentile: float = 0.5  # extents span the [p, 100 − p] percentiles of the projections

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            is_int = isinstance(value, (int, np.integer)) and not isinstance(value, bool)
            if (f.type == "int" and not is_int) or (f.type == "float" and not (is_int or isinstance(value, float))):
                raise ValueError(f"{f.name} must be {f.type}, got {value!r}")
        _check_range("min_depth", self.min_depth, 0.001, 1000.0)  # > 0: zero depth is invalid (REP 118)
        _check_range("max_depth", self.max_depth, self.min_depth, 1000.0)
        _check_range("min_points", self.min_points, 3, None)
        _check_range("erode_pixels", self.erode_pixels, 0, 50)
        _check_range("outlier_k", self.outlier_k, 0.0, 100.0)
        _check_range("surface_band", self.surface_band, 0.0, 10.0)
        _check_range("extent_percentile", self.extent_percentile, 0.0, 25.0)


def _check_range(name: str, value: float, lo: float, hi: float | None) -> None:
    if not lo <= value or (hi is not None and not value <= hi):
        allowed = f">= {lo}" if hi is None else f"in [{lo}, {hi}]"
        raise ValueError(f"{name} must be {allowed}, got {value}")


@dataclass(frozen=True, eq=False)  # eq=False: generated __eq__ cannot compare numpy arrays
class Geometry3D:
    num_points: int  # mask pixels with valid depth (before erosion and trimming)
    flags: int  # DEPTH_* bits
    valid: bool  # has_3d; when False every vector is 0 and every rotation the identity
    centroid: np.ndarray  # (3,) mean of the interior, trimmed points
    box_center: np.ndarray  # (3,) centre of the extents' box
    box_rotation: np.ndarray  # (3, 3) columns: x = major, y = minor, z = normal (towards the camera); right-handed
    extents: np.ndarray  # (3,) full lengths along the box axes
    normal: np.ndarray  # (3,) unit, normal · centroid < 0
    grasp_position: np.ndarray  # (3,) = centroid
    grasp_rotation: np.ndarray  # (3, 3) columns: x = y × z, y = closing (minor axis), z = approach (−normal)
    grasp_width: float  # m, extent along the minor axis

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, np.ndarray):
                value.setflags(write=False)


def rotation_to_quaternion(rotation: np.ndarray) -> tuple[float, float, float, float]:
    """(x, y, z, w) of a rotation matrix, as geometry_msgs/Quaternion wants, with w >= 0."""
    q = Rotation.from_matrix(np.asarray(rotation, dtype=np.float64)).as_quat()
    if q[3] < 0:
        q = -q
    return float(q[0]), float(q[1]), float(q[2]), float(q[3])


def _invalid(flags: int, num_points: int) -> Geometry3D:
    zero = np.zeros(3)
    return Geometry3D(num_points, flags, False, zero, zero, np.eye(3), zero, zero, zero, np.eye(3), 0.0)


def segments_3d(labels: np.ndarray, count: int, depth: np.ndarray | None, intrinsics: CameraIntrinsics | None,
                params: DepthParams = DepthParams()) -> list[Geometry3D]:
    """3D geometry of labels 1..count of a uint16 label map (pixels above count are ignored).

    ``depth``: float metres, NaN/0/out-of-range invalid; another resolution is resampled (nearest neighbour) to the
    label map's and flagged DEPTH_RESOLUTION_MISMATCH, as are intrinsics of another resolution (scaled).
    """
    if count <= 0:
        return []
    if depth is None or intrinsics is None:
        missing = (DEPTH_NOT_PROVIDED if depth is None else 0) | (DEPTH_NO_CAMERA_INFO if intrinsics is None else 0)
        return [_invalid(missing, 0)] * count
    if labels.dtype != np.uint16 or labels.ndim != 2:
        raise TypeError(f"labels must be a uint16 H×W label map, got {labels.dtype} {labels.shape}")
    if not np.issubdtype(depth.dtype, np.floating):
        raise TypeError(f"depth must be float metres, got {depth.dtype} (decode 16UC1 with image_codec.decode_depth)")
    h, w = labels.shape
    flags = 0
    if depth.shape != (h, w):
        # Nearest neighbour: interpolating would invent depths between an object and its background.
        depth = cv2.resize(depth.astype(np.float32, copy=False), (w, h), interpolation=cv2.INTER_NEAREST_EXACT)
        flags |= DEPTH_RESOLUTION_MISMATCH
    if (intrinsics.width, intrinsics.height) != (w, h):
        intrinsics = intrinsics.scaled_to(w, h)
        flags |= DEPTH_RESOLUTION_MISMATCH

    flat = labels.ravel()
    n_mask = np.bincount(flat, minlength=count + 1)[1 : count + 1]
    with np.errstate(invalid="ignore"):
        ok = (depth >= params.min_depth) & (depth <= params.max_depth)
    sel = np.flatnonzero(ok.ravel() & (flat > 0) & (flat <= count))
    sel = sel[np.argsort(flat[sel], kind="stable")]  # radix sort on uint16: each segment's points contiguous
    seg = flat[sel].astype(np.intp) - 1
    num_points = np.bincount(seg, minlength=count)
    interior = _interior_labels(labels, count, params).ravel()[sel] == seg + 1

    # Points as rows x, y, z (3, N): reductions along a contiguous axis are several times faster than over (N, 3).
    z = depth.ravel()[sel].astype(np.float64)
    v, u = np.divmod(sel, w)
    rays_x = (np.arange(w) - intrinsics.cx) / intrinsics.fx
    rays_y = (np.arange(h) - intrinsics.cy) / intrinsics.fy
    points = np.stack((np.take(rays_x, u) * z, np.take(rays_y, v) * z, z))
    seg_flags = flags | np.where(num_points < n_mask, DEPTH_INVALID_PIXELS, 0)

    keep = _trim(z, interior, num_points, intrinsics, params)
    inner = keep & interior
    good = _group_sum(inner, num_points) >= params.min_points
    fitted: dict[int, Geometry3D] = {}
    if good.any():
        use = slice(None) if good.all() else np.repeat(good, num_points)
        geoms = _fit(points[:, use], num_points[good], keep[use], inner[use], seg_flags[good], intrinsics, params)
        fitted = dict(zip(np.flatnonzero(good).tolist(), geoms))
    return [fitted[k] if k in fitted else _invalid(int(seg_flags[k]) | DEPTH_TOO_FEW_POINTS, int(num_points[k]))
            for k in range(count)]


def _interior_labels(labels: np.ndarray, count: int, params: DepthParams) -> np.ndarray:
    """The label map with every mask eroded by erode_pixels; masks that erosion would shrink below min_points pixels
    stay whole (thin objects would vanish)."""
    r = params.erode_pixels
    if r == 0:
        return labels
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * r + 1, 2 * r + 1))
    lo, hi = cv2.erode(labels, kernel), cv2.dilate(labels, kernel)
    # lo == hi: the whole disk around the pixel carries one label, so neither background nor a neighbour is mixed in.
    inner = np.where(lo == hi, labels, 0)
    whole = np.bincount(inner.ravel(), minlength=count + 1) < params.min_points
    whole[0] = False
    whole[count + 1 :] = False
    return np.where(whole[labels], labels, inner) if whole.any() else inner


def _trim(z: np.ndarray, interior: np.ndarray, n: np.ndarray, K: CameraIntrinsics, params: DepthParams) -> np.ndarray:
    """Points whose depth is within the robust band around their segment's median (statistics of interior points);
    points are grouped by segment, n per segment."""
    if params.outlier_k <= 0:
        return np.ones(len(z), bool)
    z_in = z[interior]
    n_in = _group_sum(interior, n)
    ends = np.cumsum(n_in)
    median = np.full(len(n), np.nan)
    mad = np.zeros(len(n))
    for k in np.flatnonzero(n_in):
        zk = z_in[ends[k] - n_in[k] : ends[k]]
        median[k] = np.median(zk)
        mad[k] = np.median(np.abs(zk - median[k]))
    # Objects are about as deep as they are wide: a band narrower than the segment's size (side of the square of
    # equal area) would trim the visible side of a can, and the MAD is ~0 on a flat top facing the camera.
    size = np.sqrt(n) * median / np.sqrt(K.fx * K.fy)
    band = np.maximum(params.outlier_k * _MAD_TO_SIGMA * mad, size)
    with np.errstate(invalid="ignore"):
        return np.abs(z - np.repeat(median, n)) <= np.repeat(band, n)


def _fit(pts: np.ndarray, n: np.ndarray, keep: np.ndarray, inner: np.ndarray, flags: np.ndarray, K: CameraIntrinsics,
         params: DepthParams) -> list[Geometry3D]:
    """Geometry of every segment from its points (3, N), grouped by segment, n per segment: ``keep`` passed the depth
    trim, ``inner`` also lies off the eroded border (at least min_points per segment)."""
    count = len(n)
    centroid = _group_mean(pts, inner, n)  # (count, 3)
    # The plane fit runs on at most ~2 × _PLANE_SAMPLE interior points per segment (every k-th): more do not make
    # the normal better, only slower.
    n_in = _group_sum(inner, n)
    inner_idx = np.flatnonzero(inner)
    stride = np.maximum(n_in // _PLANE_SAMPLE, 1)
    picks = [inner_idx[end - k : end : step] for end, k, step in zip(np.cumsum(n_in), n_in, stride)]
    n_sample = np.array([len(p) for p in picks])
    sample = pts[:, np.concatenate(picks)] - np.repeat(centroid.T, n_sample, axis=1)
    axes, offset = _dominant_planes(sample, n_sample, params.surface_band)
    towards = np.where(np.einsum("gi,gi->g", axes[:, :, 0], centroid) > 0, -1.0, 1.0)
    normal = axes[:, :, 0] * towards[:, None]
    frame = np.stack((axes[:, :, 2], axes[:, :, 1], normal), axis=-1)  # largest in-plane variance first

    lo, hi = np.empty((count, 3)), np.empty((count, 3))
    p = params.extent_percentile
    for g, end in enumerate(np.cumsum(n)):
        span = slice(end - n[g], end)
        proj = frame[g].T @ (pts[:, span] - centroid[g, :, None])  # coordinates along the frame's axes
        # In-plane extents from the interior plus the border points on the dominant surface: erosion must not
        # shrink a box top, while border points off it (background bled onto, mixed depths) project far outside.
        near = np.abs(towards[g] * proj[2] - offset[g]) <= params.surface_band
        surface = proj[:, inner[span] | (keep[span] & near)]
        k_lo = int(p / 100.0 * (surface.shape[1] - 1))
        k_hi = surface.shape[1] - 1 - k_lo
        part = np.partition(surface, (k_lo, k_hi), axis=1)
        lo[g], hi[g] = part[:, k_lo], part[:, k_hi]
    box_center = centroid + np.einsum("gij,gj->gi", frame, (lo + hi) / 2.0)
    extents = hi - lo
    # The outermost pixel centres lie up to half a pixel inside the silhouette.
    extents[:, :2] += _metres_per_pixel(centroid, frame[:, :, :2], K)
    # Variance and range can disagree on irregular shapes: the longer extent names the major axis.
    swap = extents[:, 1] > extents[:, 0]
    major = np.where(swap[:, None], frame[:, :, 1], frame[:, :, 0])
    extents[swap, :2] = extents[swap, 1::-1]
    # Sign of the major axis: towards +x in the image (then +y), so boxes do not flip between frames.
    flip = (major[:, 0] < -1e-9) | ((np.abs(major[:, 0]) <= 1e-9) & (major[:, 1] < 0))
    major = major * np.where(flip, -1.0, 1.0)[:, None]
    minor = np.cross(normal, major)
    box_rotation = np.stack((major, minor, normal), axis=-1)
    grasp_rotation = np.stack((np.cross(minor, -normal), minor, -normal), axis=-1)
    return [Geometry3D(int(n[g]), int(flags[g]), True, centroid[g], box_center[g], box_rotation[g], extents[g],
                       normal[g], centroid[g].copy(), grasp_rotation[g], float(extents[g, 1])) for g in range(count)]


def _group_sum(x: np.ndarray, n: np.ndarray) -> np.ndarray:
    """Sums over consecutive groups of n[g] entries along the last axis of x (0 for empty groups)."""
    x = x.astype(np.intp) if x.dtype == bool else x
    out = np.zeros(x.shape[:-1] + (len(n),), x.dtype)
    nonempty = n > 0
    if nonempty.any():
        out[..., nonempty] = np.add.reduceat(x, (np.cumsum(n) - n)[nonempty], axis=-1)
    return out


def _group_mean(x: np.ndarray, w: np.ndarray, n: np.ndarray) -> np.ndarray:
    """Per-group mean (g, 3) of the columns of x (3, N) where w."""
    return (_group_sum(x * w, n) / np.maximum(_group_sum(w, n), 1)).T


def _group_covariance(x: np.ndarray, w: np.ndarray, n: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-group mean (g, 3) and covariance (g, 3, 3) of the columns of x (3, N) where w."""
    xw = x * w
    pairs = ((0, 0), (0, 1), (0, 2), (1, 1), (1, 2), (2, 2))
    sums = _group_sum(np.concatenate((xw, [xw[i] * x[j] for i, j in pairs])), n) / np.maximum(_group_sum(w, n), 1)
    mean = sums[:3].T
    cov = np.empty((len(n), 3, 3))
    for row, (i, j) in enumerate(pairs, start=3):
        cov[:, i, j] = cov[:, j, i] = sums[row] - mean[:, i] * mean[:, j]
    return mean, cov


def _dominant_planes(rel: np.ndarray, n: np.ndarray, surface_band: float) -> tuple[np.ndarray, np.ndarray]:
    """Per group of n[g] (>= 3) consecutive columns of rel (3, N): PCA axes (g, 3, 3; columns by ascending variance)
    of its dominant planar surface, and that plane's offset along the first axis (``axes[:, 0] @ rel == offset`` on
    the plane).

    Plain PCA of a box whose top and one side are visible gives a normal between the two faces; so the plane with
    the most points within surface_band is found first (RANSAC on a subsample), and the PCA is of its points.
    """
    count = len(n)
    everything = np.ones(rel.shape[1], bool)
    if surface_band <= 0:
        return np.linalg.eigh(_group_covariance(rel, everything, n)[1])[1], np.zeros(count)
    rng = np.random.default_rng(0)  # same input, same output
    pick = (np.cumsum(n) - n)[:, None] + (rng.random((count, _RANSAC_SAMPLE)) * n[:, None]).astype(np.intp)
    sub = rel[:, pick].transpose(1, 2, 0)  # (count, sample, 3)
    tri = sub[np.arange(count)[:, None, None], rng.integers(0, _RANSAC_SAMPLE, (count, _RANSAC_PLANES, 3))]
    normals = np.cross(tri[:, :, 1] - tri[:, :, 0], tri[:, :, 2] - tri[:, :, 0])
    length = np.linalg.norm(normals, axis=-1, keepdims=True)
    # A triple with a repeated or collinear point has no plane: a zero normal, which "contains" every point. It
    # only wins if every triple is degenerate (points on a line), and then the fit below is a PCA of all points.
    normals = np.where(length > 1e-12, normals / np.maximum(length, 1e-12), 0.0)
    offsets = np.einsum("gpi,gpi->gp", normals, tri[:, :, 0])
    support = (np.abs(sub @ normals.transpose(0, 2, 1) - offsets[:, None, :]) <= surface_band).sum(axis=1)
    best = np.argmax(np.where(length[..., 0] > 1e-12, support, -1), axis=1)
    normal, offset = normals[np.arange(count), best], offsets[np.arange(count), best]
    # Refit on all points near the plane (at least the triple itself), then once more on the refined plane.
    for _ in range(2):
        near = np.abs(_dot(rel, np.repeat(normal.T, n, axis=1)) - np.repeat(offset, n)) <= surface_band
        mean, cov = _group_covariance(rel, near, n)
        axes = np.linalg.eigh(cov)[1]
        normal = axes[:, :, 0]
        offset = np.einsum("gi,gi->g", normal, mean)
    return axes, offset


def _dot(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Column-wise dot product of (3, N) arrays."""
    return a[0] * b[0] + a[1] * b[1] + a[2] * b[2]


def _metres_per_pixel(point: np.ndarray, directions: np.ndarray, K: CameraIntrinsics) -> np.ndarray:
    """Metres along unit directions (g, 3, m) that move the image of ``point`` (g, 3) by one pixel: (g, m)."""
    x, y, z = point[:, 0, None], point[:, 1, None], point[:, 2, None]
    du = K.fx * (directions[:, 0] * z - x * directions[:, 2]) / (z * z)
    dv = K.fy * (directions[:, 1] * z - y * directions[:, 2]) / (z * z)
    return 1.0 / np.maximum(np.hypot(du, dv), 1e-9)
