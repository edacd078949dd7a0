"""The Segmenter: the one code path from an RGB frame to instances, shared by the node, the CLI and bag evaluation."""
from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field, replace
from functools import partial
from pathlib import Path
from typing import Any, Callable, Sequence

import cv2
import numpy as np

from seg_node.processing import model_io
from seg_node.backends import create_backend
from seg_node.backends.base import Backend
from seg_node.config import SegmenterConfig
from seg_node.model_settings import config_for_model
from seg_node.processing.completion import check_partial, complete_labels
from seg_node.processing.geometry import Shape2D, shapes_2d, upscale_shapes
from seg_node.processing.geometry3d import CameraIntrinsics, Geometry3D, segments_3d
from seg_node.instances import Instance, InstanceLabels, label_instances, resize_labels, upscale_instances
from seg_node.processing.prompting import mask_from_points
from seg_node.processing.refine import guided_filter
from seg_node.processing.resample import area_chw, normalise_chw
from seg_node.processing.tracking import Tracker


def _warm_up_colors() -> np.ndarray:
    """A small colour map with flat regions, a soft border and a thin line: reaches every instance kernel."""
    colors = np.zeros((48, 64, 3), np.float32)
    colors[4:24, 4:30] = (200, 40, 40)
    colors[4:24, 30:60] = (40, 200, 40)
    colors[28:44, 8:40] = (40, 40, 220)
    colors[24:26, :] = (220, 220, 40)
    colors[:, 29:31] = (120, 120, 40)
    return colors


_WARM_UP_COLORS = _warm_up_colors()
_WARM_UP_RGB = _WARM_UP_COLORS.astype(np.uint8)


@dataclass(frozen=True)
class Segment:
    """One instance: what label_instances found, its 2D shape and, with depth, its 3D geometry."""

    instance: Instance
    shape: Shape2D
    geometry: Geometry3D | None = None
    # Consecutive frames this id has been seen (1 = new, and always 1 with tracking off).
    age: int = 1

    @property
    def id(self) -> int:
        return self.instance.id

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self.instance)
        out["bbox"] = list(self.instance.bbox)
        out["mean_color"] = [round(float(c), 3) for c in self.instance.mean_color]
        out["age"] = self.age
        out.update(asdict(self.shape))
        if self.geometry is not None:
            g = self.geometry
            out["geometry"] = {
                "valid": g.valid, "flags": g.flags, "num_points": g.num_points, "grasp_width": g.grasp_width,
                **{k: np.asarray(getattr(g, k)).round(6).tolist() for k in
                   ("centroid", "box_center", "box_rotation", "extents", "normal", "grasp_position", "grasp_rotation")},
            }
        return out


@dataclass
class SegmentationResult:
    # The network's colour map; ``colors`` gives it at the input resolution.
    color_map: model_io.ColorMap
    # uint16 H×W at the input resolution, 0 = background, k = Segment id k.
    labels: np.ndarray
    segments: list[Segment]
    # Milliseconds per stage: preprocess, network, postprocess, instances, geometry, tracking.
    timings_ms: dict[str, float] = field(default_factory=dict)
    # Raw network output pixels that were NaN/Inf (zeroed); non-zero means the frame is suspect.
    nonfinite_pixels: int = 0

    @property
    def colors(self) -> np.ndarray:
        """float32 H×W×3, 0..255, at the input resolution (scaled from the network's on first use)."""
        return self.color_map.colors


class Segmenter:
    """Runs a gen2seg model on RGB frames and turns its colour map into instance segments.

    ``Segmenter("path/to/checkpoint")`` (or ``Segmenter.from_model(path, ...)``) for the defaults with the
    model's recommended post-processing, or ``Segmenter(config)`` with a full SegmenterConfig, used as it is; ``backend`` lets a caller supply an already-built backend
    (e.g. in tests).

    With tracking enabled (``config.tracking``) a Segmenter is stateful: frames must come from one stream, in
    order; ``reset_tracking()`` starts over.
    """

    def __init__(self, config: SegmenterConfig | str | Path, backend: Backend | None = None) -> None:
        if isinstance(config, (str, Path)):  # the contract: a config or a model path (with its recommended settings)
            config = config_for_model(config)
        self.config = config
        owns_backend = backend is None
        if backend is None:
            if not config.model.path:
                raise ValueError("model.path is empty: give a checkpoint folder or an .onnx file")
            b = config.backend
            backend = create_backend(config.model.path, b.name, b.device, b.precision, b.threads,
                                     engine_cache_dir=b.engine_cache_dir or None, engine_on_missing=b.engine_on_missing,
                                     cuda_graph=b.cuda_graph, dla_core=b.dla_core, workspace_mb=b.workspace_mb,
                                     max_batch=b.max_batch, calib_dir=b.calib_dir or None)
        try:
            model_io.check_mode(backend.spec, config.model.mode)  # at start-up, not on the first frame
        except ValueError:
            if owns_backend:
                backend.close()
            raise
        self.backend = backend
        self.spec = backend.spec
        self.tracker = Tracker(config.tracking)
        # Compile (or load) the pixel kernels now rather than on the first camera frame.
        label_instances(_WARM_UP_COLORS, config.instances)
        planes, one, zero = np.empty((3, 48, 64), np.float32), np.ones(3, np.float32), np.zeros(3, np.float32)
        area_chw(_WARM_UP_RGB, planes, one, zero, (32, 40))
        normalise_chw(_WARM_UP_RGB, planes, one, zero)
        m = config.model
        if m.refine_radius or m.prompt_refine_radius > 0 or m.prompt_upsample_radius:
            guided_filter(_WARM_UP_RGB, _WARM_UP_COLORS, 2, m.refine_eps, 2)

    @classmethod
    def from_model(cls, path: str | Path, mode: str = "robot", backend: str = "auto", device: str = "cpu",
                   precision: str = "fp32", **model_options: Any) -> Segmenter:
        """The model at ``path`` with its recommended post-processing (``seg_node.model_settings``); the options
        given here (``model_options``: ModelConfig fields) win over it."""
        user = {"model.mode": mode, "backend.name": backend, "backend.device": device, "backend.precision": precision,
                **{f"model.{k}": v for k, v in model_options.items()}}
        return cls(config_for_model(path, user))

    def color_maps(self, rgbs: Sequence[np.ndarray], timings: dict[str, float] | None = None) -> list[model_io.ColorMap]:
        """Colour maps of frames run as one network batch (frames must map to the same network input size).

        ``timings``, if given, receives milliseconds for preprocess, network and postprocess (with the guided
        refinement, ``model.refine_radius``).
        """
        timings = {} if timings is None else timings
        m = self.config.model
        t0 = time.perf_counter()
        batch, geometries = model_io.preprocess(rgbs, self.spec, m.mode, m.processing_resolution)
        t1 = time.perf_counter()
        raw = self.backend.run(batch)
        t2 = time.perf_counter()
        maps = model_io.postprocess(raw, geometries, self.spec, m.mode)
        prompt_radius = m.refine_radius if m.prompt_refine_radius < 0 else m.prompt_refine_radius
        if m.refine_radius or prompt_radius or m.prompt_upsample_radius:
            for rgb, cm in zip(rgbs, maps):
                guide = cv2.resize(rgb, cm.native.shape[1::-1], interpolation=cv2.INTER_AREA)
                unrefined = cm.native
                cm.native = _refined(guide, unrefined, m.refine_radius, m.refine_eps, m.refine_subsample)
                if prompt_radius != m.refine_radius:
                    cm.prompt_source = partial(_refined, guide, unrefined, prompt_radius, m.refine_eps,
                                               m.refine_subsample)
                if m.prompt_upsample_radius and rgb.shape[:2] != cm.native.shape[:2]:
                    cm.prompt_source = partial(_upsampled, rgb, cm.prompt_source or cm.native,
                                               m.prompt_upsample_radius, m.refine_eps)
        t3 = time.perf_counter()
        timings.update(preprocess=(t1 - t0) * 1e3, network=(t2 - t1) * 1e3, postprocess=(t3 - t2) * 1e3)
        return maps

    def segment(self, rgb: np.ndarray, depth: np.ndarray | None = None, camera_info: Any = None) -> SegmentationResult:
        """uint8 H×W×3 RGB frame → colour map, label map and segments at the frame's resolution.

        ``depth``: float32 metres (NaN/0 invalid; ``image_codec.decode_depth`` converts 16UC1 millimetres), any
        resolution. ``camera_info``: CameraIntrinsics or a sensor_msgs/CameraInfo. With both, every segment gets
        its 3D geometry and grasp; with one missing, the segment's geometry says which (DEPTH_* flags).
        """
        return self.segment_batch([rgb], [depth], [camera_info])[0]

    def segment_batch(self, rgbs: Sequence[np.ndarray], depths: Sequence[np.ndarray | None] | None = None,
                      camera_infos: Sequence[Any] | None = None) -> list[SegmentationResult]:
        """Several frames through one network batch; each result as if segmented alone (in robot mode)."""
        n = len(rgbs)
        depths = list(depths) if depths is not None else [None] * n
        camera_infos = list(camera_infos) if camera_infos is not None else [None] * n
        if len(depths) != n or len(camera_infos) != n:
            raise ValueError(f"{n} frames need {n} depths and camera infos, got {len(depths)} and {len(camera_infos)}")
        timings: dict[str, float] = {}
        maps = self.color_maps(rgbs, timings)
        return [self._segments(cm, d, c, dict(timings)) for cm, d, c in zip(maps, depths, camera_infos)]

    def segment_colors(self, colors: np.ndarray | model_io.ColorMap, depth: np.ndarray | None = None,
                       camera_info: Any = None, found: InstanceLabels | None = None) -> SegmentationResult:
        """Instances from an existing colour map, without the network: an H×W×3 array (e.g. one saved by
        segment_images) or a ``ColorMap`` from ``color_maps`` (labelled as ``segment`` labels it).

        ``found``: this colour map's ``find_instances``, when the caller ran it already (the node does, on its
        first-stage thread); its time is then the caller's to count.
        """
        if not isinstance(colors, model_io.ColorMap):
            colors = model_io.ColorMap(np.asarray(colors, dtype=np.float32))
        return self._segments(colors, depth, camera_info, {}, found)

    def find_instances(self, color_map: model_io.ColorMap) -> InstanceLabels:
        """The instances of a colour map, before scaling, tracking and geometry: at the network's resolution with
        ``model.label_resolution: network``, else at the input's. Stateless, so it may run on another thread than
        the ``segment_colors`` that finishes the frame."""
        config = self.config
        cm = color_map
        hw = cm.colors.shape[:2] if cm.input_hw is None else tuple(cm.input_hw)
        native_hw = cm.native.shape[:2]
        params = config.instances
        if config.model.label_resolution == "network" and native_hw[0] <= hw[0] and native_hw[1] <= hw[1]:
            # min_area counts frame pixels.
            scale = native_hw[0] * native_hw[1] / (hw[0] * hw[1])
            return label_instances(cm.native, replace(params, min_area=max(1, round(params.min_area * scale))))
        return label_instances(cm.colors, params)

    def reset_tracking(self) -> None:
        self.tracker.reset()

    def update_config(self, config: SegmenterConfig) -> None:
        """Switch post-processing settings (instances, prompting, depth, tracking, mode, processing resolution)
        between frames. The model and backend are fixed for a Segmenter's life: ValueError if they differ.
        New tracking thresholds keep the live tracks; switching tracking on or off starts over."""
        if config.model.path != self.config.model.path or config.backend != self.config.backend:
            raise ValueError("model.path and backend.* cannot change on a running Segmenter; create a new one")
        toggled = config.tracking.enabled != self.config.tracking.enabled
        self.tracker.params = config.tracking
        if toggled:
            self.tracker.reset()
        self.config = config

    def _segments(self, cm: model_io.ColorMap, depth: np.ndarray | None, camera_info: Any,
                  timings: dict[str, float], found: InstanceLabels | None = None) -> SegmentationResult:
        t0 = time.perf_counter()
        hw = cm.colors.shape[:2] if cm.input_hw is None else tuple(cm.input_hw)
        if found is None:
            found = self.find_instances(cm)
        count = len(found.instances)
        t1 = time.perf_counter()
        # Tracking is resolution-independent (IoU, and distances as a fraction of the diagonal): run it on the
        # small map, then scale up the maps the outputs need.
        update = self.tracker.update(found.labels, count)
        t2 = time.perf_counter()
        with_3d = depth is not None or camera_info is not None
        values = None
        small_labels = found.labels
        if update.labels is found.labels:  # tracking off: the ids are the per-frame labels
            labels, instances = upscale_instances(found, hw)
            track_labels = labels
        elif not with_3d:
            # Only the track-id map is needed at the frame's size: scale it alone, measure segments by track id.
            tracked = InstanceLabels(update.labels, [replace(i, id=t) for i, t in zip(found.instances, update.ids)])
            labels, instances = upscale_instances(tracked, hw)
            track_labels, values, small_labels = labels, update.ids, update.labels
        else:  # segments_3d takes per-frame labels 1..count
            labels, instances = upscale_instances(found, hw)
            track_labels = resize_labels(update.labels, hw)
        t3 = time.perf_counter()
        factor = _whole_factor(small_labels.shape, hw)
        if factor > 1:
            # The same shapes as measured on the scaled map (geometry.upscale_shapes is exact), from 1/factor² pixels.
            shapes = upscale_shapes(shapes_2d(small_labels, count, [i.bbox for i in found.instances], values), factor)
        else:
            shapes = shapes_2d(labels, count, [inst.bbox for inst in instances], values)
        geometries: list[Geometry3D | None] = [None] * count
        if with_3d:
            geometries = list(segments_3d(labels, count, depth, _intrinsics(camera_info), self.config.depth))
        t4 = time.perf_counter()
        timings.update(instances=(t1 - t0 + t3 - t2) * 1e3, geometry=(t4 - t3) * 1e3, tracking=(t2 - t1) * 1e3)
        segments = [
            Segment(replace(inst, id=track_id), shape, geom, age)
            for inst, shape, geom, track_id, age in zip(instances, shapes, geometries, update.ids, update.ages)
        ]
        return SegmentationResult(cm, track_labels, segments, timings, cm.nonfinite)

    def prompt(self, colors: np.ndarray | model_io.ColorMap, points: Sequence[Sequence[float]],
               labels: Sequence[int]) -> np.ndarray:
        """Bool mask of the object(s) marked by positive (1) and negative (0) pixel points on a colour map: an
        H×W×3 array as it is, or a ``ColorMap`` (``SegmentationResult.color_map``), whose map refined for clicks is
        used (``model.prompt_refine_radius``)."""
        if isinstance(colors, model_io.ColorMap):
            colors = colors.prompt_colors
        return mask_from_points(colors, points, labels, self.config.prompting)

    def complete(self, frame: np.ndarray, partial_labels: np.ndarray,
                 known_mask: np.ndarray | None = None) -> np.ndarray:
        """Mask completion: the full uint16 label map of a uint8 H×W×3 RGB frame, given ``partial_labels`` (uint16,
        the frame's size) where ``known_mask`` (bool; None = the non-zero labels) is True. Known pixels keep their
        ids, the rest join a known segment or get new ids (``seg_node.processing.completion``)."""
        if not isinstance(frame, np.ndarray) or frame.dtype != np.uint8 or frame.ndim != 3 or frame.shape[2] != 3:
            what = f"{frame.dtype} {frame.shape}" if isinstance(frame, np.ndarray) else type(frame).__name__
            raise ValueError(f"frame must be a uint8 H×W×3 RGB array, got {what}")
        check_partial(partial_labels, known_mask, frame.shape[:2])  # before the network runs
        colors = self.color_maps([frame])[0].colors
        return complete_labels(colors, partial_labels, known_mask, self.config.instances, self.config.prompting)

    def close(self) -> None:
        self.backend.close()

    def __enter__(self) -> Segmenter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _refined(guide: np.ndarray, colors: np.ndarray, radius: int, eps: float, subsample: int = 1) -> np.ndarray:
    """``colors`` guided-filtered with ``guide`` (radius 0: as they are). The filter is a local linear fit that
    overshoots at strong edges: the result is clipped to the documented 0..255."""
    return np.clip(guided_filter(guide, colors, radius, eps, subsample), 0.0, 255.0) if radius else colors


def _upsampled(frame: np.ndarray, native: np.ndarray | Callable[[], np.ndarray], radius: int,
               eps: float) -> np.ndarray:
    """The map ``native`` (or the one it makes), scaled up to ``frame``'s size and guided-filtered there with the
    frame: a joint upsampling, so that borders land on the frame's edges rather than blurred over the scale factor.
    ``radius`` in network pixels. Module-level and given arrays, so a ColorMap still pickles (bag_eval's workers)."""
    colors = native() if callable(native) else native
    h, w = frame.shape[:2]
    scale = max(h / colors.shape[0], w / colors.shape[1])
    up = cv2.resize(colors, (w, h), interpolation=cv2.INTER_LINEAR)
    return _refined(frame, up, max(1, round(radius * scale)), eps)


def _whole_factor(small: tuple[int, ...], hw: tuple[int, int]) -> int:
    """f when a map of shape ``small`` scales to ``hw`` by the same whole number f in both axes, else 0."""
    f = hw[0] // small[0]
    return f if small[0] * f == hw[0] and small[1] * f == hw[1] else 0


def _intrinsics(camera_info: Any) -> CameraIntrinsics | None:
    if camera_info is None or isinstance(camera_info, CameraIntrinsics):
        return camera_info
    return CameraIntrinsics.from_camera_info(camera_info)
