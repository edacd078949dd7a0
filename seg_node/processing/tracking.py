"""Stable segment ids across frames: per-frame label maps in, track-id label maps out.

label_instances numbers segments 1..K by area in every frame, so the same object gets a different label from frame
to frame. The tracker matches each frame's segments to the live tracks in two stages:

1. Mask IoU against each track's last mask (the previous frame's label map, plus the kept masks of tracks missing
   for up to max_missed frames), from one np.bincount over paired labels; pairs with IoU >= min_iou are assigned
   with the Hungarian method (scipy.optimize.linear_sum_assignment) maximising total IoU.
2. What is left (fast motion, reappearance after an occlusion) is matched by centroid distance, within
   max_centroid_distance × the image diagonal (a fraction, so the setting holds at any resolution), between
   segments whose areas differ by at most a factor 1 / min_area_ratio; again with the Hungarian method.

Ids are track ids: 1, 2, 3, … in order of creation, never reissued while a track holding them is alive. They are
label values of a mono16 image, so after MAX_TRACK_ID they wrap to 1, skipping live ids: an id comes back only after
MAX_TRACK_ID newer ones (over half an hour at 30 fps with one new object per frame). 65535 is left free, a common
"ignore" value in label images. reset() forgets the tracks but not the counter, so a restart does not reissue
recent ids. A change of image size forgets the tracks too (their masks no longer fit).

Ages follow Segment.msg: the number of consecutive frames the id has been seen, 1 in its first frame. A track that
reappears after being missed keeps its id but starts a new run, so its age is 1 again.
"""
from __future__ import annotations

from dataclasses import dataclass, fields

import cv2
import numpy as np
from scipy.optimize import linear_sum_assignment

from seg_node.instances import label_counts

__all__ = ["MAX_TRACK_ID", "TrackUpdate", "Tracker", "TrackerParams"]

MAX_TRACK_ID = 65534


@dataclass(frozen=True)
class TrackerParams:
    enabled: bool = True  # False: per-frame labels pass through unchanged, every age is 1
    min_iou: float = 0.2  # mask IoU a segment needs with a track's last mask to continue it
    max_centroid_distance: float = 0.08  # fallback match radius, fraction of the image diagonal (0 = IoU only)
    min_area_ratio: float = 0.3  # fallback matches need smaller area / larger area >= this
    max_missed: int = 5  # frames a track survives unmatched; it keeps its id if it reappears within them

    def __post_init__(self) -> None:
        if not isinstance(self.enabled, (bool, np.bool_)):
            raise ValueError(f"enabled must be a bool, got {self.enabled!r}")
        for f in fields(self):
            value = getattr(self, f.name)
            is_int = isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))
            if (f.type == "int" and not is_int) or (f.type == "float" and not (is_int or isinstance(value, float))):
                raise ValueError(f"{f.name} must be {f.type}, got {value!r}")
        _check_range("min_iou", self.min_iou, 1e-6, 1.0)
        _check_range("max_centroid_distance", self.max_centroid_distance, 0.0, 1.0)
        _check_range("min_area_ratio", self.min_area_ratio, 0.0, 1.0)
        _check_range("max_missed", self.max_missed, 0, 10000)


def _check_range(name: str, value: float, lo: float, hi: float) -> None:
    if not lo <= value <= hi:
        raise ValueError(f"{name} must be in [{lo}, {hi}], got {value}")


@dataclass(frozen=True)
class TrackUpdate:
    labels: np.ndarray  # uint16 H×W, 0 = background, track id elsewhere
    ids: list[int]  # ids[k - 1] = track id of per-frame label k
    ages: list[int]  # ages[k - 1] = consecutive frames that id has been seen, 1 = first frame of the run


@dataclass
class _Track:
    id: int
    age: int
    missed: int = 0  # frames since last seen
    # While missing: its last mask (flat pixel indices) and that mask's centroid (x, y), for re-identification.
    pixels: np.ndarray | None = None
    centroid: np.ndarray | None = None


class Tracker:
    """Gives segments ids that persist across frames; one instance per image stream."""

    def __init__(self, params: TrackerParams = TrackerParams()) -> None:
        self.params = params
        self._next_id = 1
        self.reset()

    def reset(self) -> None:
        """Forget every track (ids keep counting up, so recent ones are not reissued)."""
        self._shape: tuple[int, ...] | None = None
        self._prev_labels: np.ndarray | None = None  # previous frame's per-frame label map
        self._prev_tracks: list[_Track] = []  # track of each of its labels 1..K
        self._missing: list[_Track] = []  # tracks not seen in the previous frame, still alive

    def update(self, labels: np.ndarray, count: int) -> TrackUpdate:
        """Track ids for a per-frame label map (uint16, 0 = background, segments 1..count)."""
        if not self.params.enabled:
            return TrackUpdate(labels, list(range(1, count + 1)), [1] * count)
        if labels.dtype != np.uint16 or labels.ndim != 2:
            raise TypeError(f"labels must be a uint16 H×W label map, got {labels.dtype} {labels.shape}")
        if labels.shape != self._shape:
            self.reset()
            self._shape = labels.shape
        flat = labels.ravel()
        rows = self._prev_tracks + self._missing
        matches = self._match(flat, count, rows) if rows and count else {}

        live = {t.id for t in rows}
        tracks: list[_Track] = []
        for k in range(count):
            if k not in matches:
                tracks.append(_Track(self._new_id(live), 1))
                continue
            track = rows[matches[k]]
            track.age = track.age + 1 if track.missed == 0 else 1
            track.missed, track.pixels, track.centroid = 0, None, None
            tracks.append(track)
        matched = set(matches.values())
        if self.params.max_missed > 0:
            self._remember([(r + 1, t) for r, t in enumerate(self._prev_tracks) if r not in matched])
        self._missing = []
        for r in range(len(rows)):
            if r not in matched:
                rows[r].missed += 1
                if rows[r].missed <= self.params.max_missed:
                    self._missing.append(rows[r])

        self._prev_labels = labels.copy()
        self._prev_tracks = tracks
        ids = [t.id for t in tracks]
        return TrackUpdate(_relabel(labels, ids), ids, [t.age for t in tracks])

    def _match(self, flat: np.ndarray, count: int, rows: list[_Track]) -> dict[int, int]:
        """Segment index (label - 1) → index in rows (prev_tracks + missing)."""
        assert self._prev_labels is not None and self._shape is not None  # rows exist only after a first frame
        n_prev = len(self._prev_tracks)
        width = count + 1
        # Overlap matrix: rows = previous label (0 = background) then missing tracks, columns = current label.
        size = (n_prev + 1 + len(self._missing)) * width
        dtype = np.uint16 if size <= 2**16 else np.int64  # the narrowest type is the fastest to compute
        codes = self._prev_labels.ravel().astype(dtype)
        codes *= dtype(width)
        codes += flat
        if self._missing:
            codes = np.concatenate([codes] + [dtype((n_prev + 1 + j) * width) + flat[t.pixels].astype(dtype)
                                              for j, t in enumerate(self._missing)])
        counts = label_counts(codes, size) if dtype is np.uint16 else np.bincount(codes, minlength=size)
        overlap = counts.reshape(-1, width)
        area_cur = overlap[: n_prev + 1].sum(axis=0)[1:]
        area_row = overlap.sum(axis=1)[1:]
        inter = overlap[1:, 1:].astype(np.float64)
        iou = inter / np.maximum(area_row[:, None] + area_cur[None, :] - inter, 1.0)
        iou[iou < self.params.min_iou] = 0.0

        r_idx, c_idx = linear_sum_assignment(iou, maximize=True)
        matches = {int(c): int(r) for r, c in zip(r_idx, c_idx) if iou[r, c] > 0}
        taken = set(matches.values())
        free_rows = [r for r in range(len(area_row)) if r not in taken]
        free_cols = [c for c in range(count) if c not in matches]
        if not (free_rows and free_cols and self.params.max_centroid_distance > 0):
            return matches

        # Centroid fallback; the masks of unmatched previous-frame tracks are needed now, and kept if they stay lost.
        self._remember([(r + 1, rows[r]) for r in free_rows if r < n_prev])
        row_c = np.array([rows[r].centroid for r in free_rows])
        col_c = np.array([_centroid(p, self._shape[1]) for p in _pixels_of(flat, width, [c + 1 for c in free_cols])])
        dist = np.linalg.norm(row_c[:, None] - col_c[None], axis=2)
        a_r, a_c = area_row[free_rows][:, None], area_cur[free_cols][None, :]
        ratio = np.minimum(a_r, a_c) / np.maximum(np.maximum(a_r, a_c), 1)
        limit = self.params.max_centroid_distance * float(np.hypot(*self._shape))
        feasible = (dist <= limit) & (ratio >= self.params.min_area_ratio)
        r_idx, c_idx = linear_sum_assignment(np.where(feasible, dist, 2.0 * limit + 1.0))
        matches.update({free_cols[c]: free_rows[r] for r, c in zip(r_idx, c_idx) if feasible[r, c]})
        return matches

    def _remember(self, lost: list[tuple[int, _Track]]) -> None:
        """Keep the mask (from the previous frame's label map) and centroid of (label, track) pairs not kept yet."""
        lost = [(label, t) for label, t in lost if t.pixels is None]
        if not lost or self._prev_labels is None:
            return
        width = self._prev_labels.shape[1]
        masks = _pixels_of(self._prev_labels.ravel(), len(self._prev_tracks) + 1, [label for label, _ in lost])
        for (_, track), pixels in zip(lost, masks):
            track.pixels, track.centroid = pixels, _centroid(pixels, width)

    def _new_id(self, live: set[int]) -> int:
        for _ in range(MAX_TRACK_ID):
            candidate = self._next_id
            self._next_id = candidate % MAX_TRACK_ID + 1
            if candidate not in live:
                live.add(candidate)
                return candidate
        raise RuntimeError(f"all {MAX_TRACK_ID} track ids are in use")


def _relabel(labels: np.ndarray, ids: list[int]) -> np.ndarray:
    """labels with k replaced by ids[k - 1]."""
    lut = np.zeros(256 if len(ids) < 256 else len(ids) + 1, np.uint16)
    lut[1 : len(ids) + 1] = ids
    if len(ids) < 256:  # cv2.LUT: a 256-entry table on 8-bit input, twice as fast as np.take on uint16
        return cv2.LUT(labels.astype(np.uint8), lut).reshape(labels.shape)
    return np.take(lut, labels)


def _pixels_of(flat: np.ndarray, size: int, wanted: list[int]) -> list[np.ndarray]:
    """Flat pixel indices of each wanted label of a label map with labels < size, in one pass over it."""
    want = np.zeros(size, bool)
    want[wanted] = True
    idx = np.flatnonzero(np.take(want, flat))
    lab = flat[idx]
    order = np.argsort(lab, kind="stable")
    idx, lab = idx[order], lab[order]
    return [idx[a:b] for a, b in zip(np.searchsorted(lab, wanted, "left"), np.searchsorted(lab, wanted, "right"))]


def _centroid(pixels: np.ndarray, width: int) -> np.ndarray:
    if not len(pixels):
        return np.full(2, np.nan)  # matches nothing
    y, x = np.divmod(pixels, width)
    return np.array([x.mean(), y.mean()])
