"""ROS 2 node ``segmenter``: camera topics in, instance masks and grasp-ready segments out.

Topics (all remappable; parameters in ``seg_node.ros.params``):

=====================  ===================================  =====================================================
in  ``image``          sensor_msgs/Image                    ``input.transport: raw`` (SensorData QoS by default)
in  ``image/compressed`` sensor_msgs/CompressedImage        ``input.transport: compressed`` (base name remapped)
in  ``depth``          sensor_msgs/Image 32FC1 m / 16UC1 mm ``input.use_depth``; aligned to the colour image
in  ``camera_info``    sensor_msgs/CameraInfo               ``input.use_depth`` and ``input.use_camera_info``
out ``~/labels``       sensor_msgs/Image mono16             0 = background, k = segment id k (track id)
out ``~/segments``     seg_msgs/SegmentArray                2D shape; with depth 3D centroid, box, normal, grasp
out ``~/colors``       sensor_msgs/Image rgb8               the model's colour map, only while subscribed
out ``~/overlay``      sensor_msgs/Image rgb8               only while subscribed
out ``~/markers``      visualization_msgs/MarkerArray       3D boxes and grasps, only while subscribed
out ``~/latency``      diagnostic_msgs/DiagnosticArray      per-frame stage times (``diagnostics.publish_latency``)
out ``/diagnostics``   diagnostic_msgs/DiagnosticArray      rates, drops, sync misses, bad frames, latencies
srv ``~/segment_points`` seg_msgs/SegmentPoints             point prompts on the latest frame → masks
srv ``~/complete_masks`` seg_msgs/CompleteMasks              partial label image → completed one (latest frame)
=====================  ===================================  =====================================================

Every output carries the input image's header, copied exactly.

Threads: the main thread spins the node (NodeExecutor); its callbacks only queue messages (the synchroniser, then a
one-slot mailbox: a newer frame replaces an unprocessed one, which is counted as dropped). Two threads run the
Segmenter as a two-stage pipeline (``seg_node.ros.stages``), handing one frame at a time: the worker decodes a frame, runs the network and
finds its instances; the finisher scales, tracks and measures them and publishes while the worker starts the next
frame. ~/segment_points runs on its own thread, as on demand it waits for the worker. Latency therefore stays near
one model run at any input rate, and memory holds one pending frame besides the two in the pipeline.
Bad frames (unsupported encoding, step/size mismatch, truncated or corrupt data, too many pixels, a decoder error of
any kind, unusable depth or camera_info) are logged with the reason (rate-limited per reason), counted in
/diagnostics, and skipped: no frame can end a thread. A supervisor timer checks that both threads live and beat:
one that died of a failure outside the per-frame path is restarted (/diagnostics: ERROR with the reason for that
period, ``worker_restarts``, ``worker_last_fault``); one that has not beaten for ``diagnostics.stall_timeout`` (a
model run that never returns, which no thread can interrupt), or a thread dying again and again, ends the process
with exit code 3 after an ERROR diagnostic, so a launch file's ``respawn`` starts a fresh node.
Input whose header stamps show gaps the publisher's rate does not explain is reported (rate-limited warning naming
the Fast DDS profile, ``input_frames_missing`` in /diagnostics).

An empty ``model.path`` runs the shipped default model (``engines/default``, found through the installed package).
Start-up errors (bad parameter, missing or corrupt model) are logged naming the parameter or file, and the process
exits with code 2. ``seg_node.ros.lifecycle`` is the managed variant (same parts, driven by lifecycle transitions).
SIGINT and SIGTERM stop the worker, destroy the node and shut rclpy down (which removes the process's Fast DDS
shared-memory files).

This module puts the parts together and runs a frame through the Segmenter: the topics are ``seg_node.ros.topics``,
the two threads ``stages``, the services ``points_service`` and ``completion_service``, the threads' restart policy
``supervisor``, and the process (rclpy, signals, exit codes) ``process``.

Only rclpy API that Humble, Jazzy and Kilted share is used.
"""
from __future__ import annotations

import sys
import threading
import time
from dataclasses import dataclass, replace
from typing import Any, Callable

import numpy as np
from rclpy.callback_groups import MutuallyExclusiveCallbackGroup
from rclpy.node import Node

from seg_node.backends.base import BackendError
from seg_node.config import ConfigError, SegmenterConfig
from seg_node.instances import InstanceLabels
from seg_node.model_settings import recommended_settings
from seg_node.models.checkpoints import CheckpointError
from seg_node.pipeline import Segmenter, SegmentationResult
from seg_node.processing.geometry3d import CameraIntrinsics
from seg_node.processing.model_io import ColorMap
from seg_node.ros.completion_service import create_completion_service
from seg_node.ros.diagnostics import FASTDDS_ADVICE, InputLossMonitor, NodeStats
from seg_node.ros.frames import BadFrame, FrameDecoder
from seg_node.ros.params import NODE_NAME, NodeParams, ParameterHandler
from seg_node.ros.points_service import create_points_service
from seg_node.ros.process import run
from seg_node.ros.stages import TwoStagePipeline, Unavailable
from seg_node.ros.startup import EXIT_WORKER, StartupError, params_files, resolve_model_path
from seg_node.ros.supervisor import Supervisor
from seg_node.ros.topics import FrameInputs, InputFrame, Outputs

__all__ = ["SegmenterCore", "SegmenterNode", "StartupError", "main", "run"]

# Seconds the worker may take to finish a model run at shutdown before the process leaves without it.
WORKER_JOIN_TIMEOUT = 1.2
# Seconds between two checks of the worker threads.
SUPERVISE_PERIOD = 0.5


@dataclass
class _Latest:
    """The last segmented frame, for the services."""

    frame: InputFrame
    header: Any
    result: SegmentationResult
    depth: np.ndarray | None
    intrinsics: CameraIntrinsics | None


@dataclass
class _Prepared:
    """A frame through the first stage (decode, network): what the second stage needs to finish it."""

    frame: InputFrame
    rgb: np.ndarray
    depth: np.ndarray | None
    intrinsics: CameraIntrinsics | None
    color_map: ColorMap
    found: InstanceLabels
    timings_ms: dict[str, float]
    started: float
    decoded: float


class SegmenterCore:
    """The segmenter's parts on an rclpy Node (a plain or a lifecycle one), in phases: ``load`` (parameters, model),
    ``wire`` (topics, service, timers, worker threads), ``unwire`` and ``unload``. ``exit_code`` becomes set when
    the process should end (a worker beyond recovery)."""

    _params: ParameterHandler | None = None
    segmenter: Segmenter | None = None
    _stages: TwoStagePipeline | None = None
    exit_code: int | None = None

    # ------------------------------------------------------------------------------------------- set-up

    def init_groups(self) -> None:
        """Callback groups; before the executor is made, as it is told which group to offload."""
        self._input_group = MutuallyExclusiveCallbackGroup()
        # ~/segment_points runs off the spinning thread (see NodeExecutor): on demand, it waits for the worker.
        self.service_group = MutuallyExclusiveCallbackGroup()
        self._diag_group = MutuallyExclusiveCallbackGroup()

    def load(self, startup_locked: Callable[[], bool] = lambda: True) -> None:
        """Read and validate the parameters, then load and warm the model; StartupError names what is wrong."""
        log = self.get_logger()
        try:
            if self._params is None:  # declares the parameters, once per node
                self._params = ParameterHandler(self, self._on_params_changed, startup_locked)
            self._params.reload()
        except ConfigError as exc:
            files = params_files(sys.argv)
            where = f" (params file{'s' if len(files) > 1 else ''}: {', '.join(files)}, or a -p override)" if files else ""
            raise StartupError(f"invalid parameter: {exc}{where}") from exc
        if self._params.ignored:
            log.warning(f"ignoring parameters this node does not have: {', '.join(self._params.ignored)}")
        p: NodeParams = self._params.node_params
        config: SegmenterConfig = self._params.config
        self.node_params = p
        path, default = resolve_model_path(config)
        if default:
            log.info(f"model.path is empty: running the shipped default model {path}")
        self._model_path = path
        try:
            adopted = self._params.adopt_model_settings(recommended_settings(path))
        except (ConfigError, BackendError) as exc:  # an unreadable file fails here first, naming it
            raise StartupError(f"cannot load model.path {path!r}: {exc}") from exc
        if adopted:
            log.info(f"the model's recommended post-processing for {', '.join(adopted)} (set them to override)")
        config = _with_model_path(self._params.config, path)
        try:
            self.segmenter = Segmenter(config)
        except (CheckpointError, BackendError, ConfigError) as exc:  # MissingDependencyError is a BackendError
            raise StartupError(f"cannot load model.path {path!r}: {exc}") from exc
        except (OSError, ValueError) as exc:
            raise StartupError(f"cannot load model.path {path!r}: {type(exc).__name__}: {exc}") from exc
        self._pending_config: SegmenterConfig | None = None
        self._lock = threading.Lock()  # pending config
        self._stats = NodeStats(p.diagnostics.window, lambda: self.node_params.diagnostics.warn_period,
                                self.get_logger().warning)
        self._loss = InputLossMonitor()
        self._supervisor = Supervisor(self._stats, self.get_logger().error)
        self._last_failure = ""

    def wire(self) -> None:
        """Subscriptions, publishers, the service, timers and the worker threads."""
        p = self.node_params
        self._inputs = FrameInputs(self, p, self._stats, self._loss, self._deliver, self._input_group)
        self._decoder = FrameDecoder(self._stats, self._inputs.partners)
        self._outputs = Outputs(self, p, self._stats, quiet=lambda: self._stages is None or self._stages.stopping)
        self._srv = create_points_service(self, self._latest_for_request, lambda: self.segmenter, self.service_group)
        self._complete_srv = create_completion_service(self, self._latest_for_request, lambda: self.segmenter.config,
                                                       self.service_group)
        # Not "_timers": that is rclpy's own list of the node's timers, which the executor waits on.
        self._wired_timers = [
            self.create_timer(p.diagnostics.period, self._publish_diagnostics, callback_group=self._diag_group),
            self.create_timer(SUPERVISE_PERIOD, self._supervise, callback_group=self._diag_group)]

        # Two stages in streaming mode: while the finisher scales, tracks and measures the instances of frame N and
        # publishes them, the worker decodes frame N+1, runs the network and finds its instances (both release the
        # GIL in their heavy parts).
        self._stages = TwoStagePipeline(
            self._prepare, self._finish, frame_of=lambda latest: latest.frame,
            on_demand=lambda: self.node_params.processing.on_demand,
            config_pending=lambda: self._pending_config is not None, apply_config=self._apply_pending_config,
            warn=self._stats.warn, failure=lambda: self._last_failure)
        self._stages.start()
        self.get_logger().info(
            f"segmenting {self._inputs.describe(p)} with {self.segmenter.backend.describe()}"
            f"{' (on demand)' if p.processing.on_demand else ''}; tracking "
            f"{'on' if self._params.config.tracking.enabled else 'off'}; outputs on {self._outputs.labels_topic} ...")

    def unwire(self) -> None:
        """Stop the worker threads and remove what ``wire`` created (the model stays loaded)."""
        stages, self._stages = self._stages, None
        if stages is not None and not stages.stop(WORKER_JOIN_TIMEOUT):
            self.get_logger().warning("a model run outlived the shutdown wait; its thread is left to end")
        for timer in getattr(self, "_wired_timers", []):
            self.destroy_timer(timer)
        for topics in (getattr(self, "_inputs", None), getattr(self, "_outputs", None)):
            if topics is not None:
                topics.destroy()
        for srv in (getattr(self, "_srv", None), getattr(self, "_complete_srv", None)):
            if srv is not None:
                self.destroy_service(srv)
        self._wired_timers, self._srv, self._complete_srv = [], None, None

    def unload(self) -> None:
        segmenter, self.segmenter = self.segmenter, None
        if segmenter is not None:
            segmenter.close()

    def close(self) -> None:
        """Stop the worker (waits up to WORKER_JOIN_TIMEOUT for a model run to end) and release the model."""
        stages = self._stages
        if stages is not None and not stages.stop(WORKER_JOIN_TIMEOUT):
            return  # a model run outlived the wait: its thread still uses the model
        self.unload()

    # ---------------------------------------------------------------------------------------- callbacks

    def _deliver(self, frame: InputFrame) -> None:
        stages = self._stages
        if stages is not None and stages.offer(frame):
            self._stats.add("dropped")

    def _on_params_changed(self, p: NodeParams, config: SegmenterConfig, names: list[str]) -> None:
        if self.segmenter is None:  # a lifecycle node not configured yet: configure reads every parameter
            return
        with self._lock:
            self.node_params = p
            if any(not n.startswith(("input.", "qos.", "sync.", "processing.", "diagnostics.")) for n in names):
                self._pending_config = _with_model_path(config, self._model_path)
        if getattr(self, "_inputs", None) is not None:
            self._inputs.set_tolerances(p.sync.slop, p.sync.timeout)
        if self._stages is not None:
            self._stages.wake()
        self.get_logger().info(f"parameters changed: {', '.join(f'{n}={self._params.values[n]!r}' for n in names)}")

    # ------------------------------------------------------------------------------------------- worker

    def _apply_pending_config(self) -> None:
        with self._lock:
            config, self._pending_config = self._pending_config, None
        if config is None:
            return
        self.segmenter.update_config(config)

    def _prepare(self, frame: InputFrame) -> _Prepared | None:
        """Decode a frame and run the network; None (warned, counted) when the frame or the model fails."""
        t0 = time.monotonic()
        p = self.node_params
        try:
            rgb = self._decoder.image(frame.image, p.input.size_limits)
            depth, intrinsics = self._decoder.partners_of(frame.image, frame.depth, frame.camera_info, frame.missing,
                                                          rgb.shape[:2], p)
        except BadFrame as exc:
            self._stats.warn(exc.reason, str(exc))
            self._last_failure = str(exc)
            return None
        t1 = time.monotonic()
        timings: dict[str, float] = {}
        try:
            color_map = self.segmenter.color_maps([rgb], timings)[0]
            t2 = time.monotonic()
            # Finding instances is stateless and costs as much as the rest of the first stage: doing it here
            # evens out the two stages.
            found = self.segmenter.find_instances(color_map)
            timings["instances"] = (time.monotonic() - t2) * 1e3
        except (BackendError, ValueError, MemoryError) as exc:
            self._stats.warn("inference_error", f"segmentation failed: {exc}")
            self._last_failure = f"segmentation failed: {exc}"
            return None
        return _Prepared(frame, rgb, depth, intrinsics, color_map, found, timings, t0, t1)

    def _finish(self, prepared: _Prepared) -> _Latest | None:
        """Instances, geometry and tracking of a prepared frame (the Segmenter's own steps), then its outputs."""
        frame, rgb, depth, intrinsics = prepared.frame, prepared.rgb, prepared.depth, prepared.intrinsics
        t0, t1 = prepared.started, prepared.decoded
        p = self.node_params
        msg = frame.image
        try:
            result = self.segmenter.segment_colors(prepared.color_map, depth, intrinsics, found=prepared.found)
        except (ValueError, MemoryError) as exc:
            self._stats.warn("inference_error", f"segmentation failed: {exc}")
            self._last_failure = f"segmentation failed: {exc}"
            return None
        first = prepared.timings_ms
        result.timings_ms = {**first, **result.timings_ms,
                             "instances": first["instances"] + result.timings_ms["instances"]}
        if result.nonfinite_pixels:
            self._stats.warn("nonfinite_model_output", f"the model output had {result.nonfinite_pixels} NaN/Inf "
                                                       "pixels (zeroed); the masks of this frame may be wrong")
        t2 = time.monotonic()
        header = msg.header
        self._outputs.publish_frame(result, rgb, header, p.processing.overlay_alpha)
        t3 = time.monotonic()
        now_wall = time.time()
        stages = {"transport": now_wall - (t3 - frame.received) - frame.stamp_ns * 1e-9,  # stamp → callback
                  "wait": t0 - frame.received, "decode": t1 - t0, "publish": t3 - t2, "total": t3 - frame.received,
                  "end_to_end": now_wall - frame.stamp_ns * 1e-9}
        stages = {k: v * 1e3 for k, v in stages.items()}
        stages.update(result.timings_ms)
        self._stats.frame_done(stages, len(result.segments))
        if p.diagnostics.publish_latency:
            self._outputs.publish_latency(header, stages)
        return _Latest(frame, header, result, depth, intrinsics)

    # ------------------------------------------------------------------------------------------ service

    def _latest_for_request(self) -> _Latest:
        p = self.node_params
        stages = self._stages
        if stages is None:
            raise BadFrame("", "the node is not active")
        if p.processing.on_demand:
            try:
                return stages.request(p.processing.service_timeout)
            except Unavailable as exc:
                raise BadFrame("", str(exc)) from exc
        latest = stages.latest
        if latest is None:
            raise BadFrame("", "no frame segmented yet (no image received, or every frame so far was bad)")
        return latest

    # ------------------------------------------------------------------------------ supervision, diagnostics

    def _supervise(self) -> None:
        """End the process (exit code 3, after an ERROR diagnostic) for a worker thread beyond restarting."""
        stages = self._stages
        if stages is None or self.exit_code is not None:
            return
        if self._supervisor.check(stages, self.node_params.diagnostics.stall_timeout):
            self._publish_diagnostics()  # the reason reaches /diagnostics before the process ends
            self.exit_code = EXIT_WORKER

    def _publish_diagnostics(self) -> None:
        extra = self._inputs.sync_values()
        lost, expected = self._loss.loss()
        extra += [("input_frames_missing", self._loss.missing_total),
                  ("input_loss_ratio", f"{lost / expected:.3f}" if expected else "0.000")]
        if self._loss.lossy():
            self._stats.warn("input_lossy", f"the input looks lossy: {lost} of the last {expected} frames are "
                                            f"missing by their header stamps; {FASTDDS_ADVICE}")
        level, message, values = self._stats.summary(self._inputs.image_topic, extra)
        self._outputs.publish_diagnostics(level, message, values,
                                          self.segmenter.backend.describe() if self.segmenter else "")


class SegmenterNode(SegmenterCore, Node):
    """The segmenter as a plain node: loaded and wired at construction."""

    def __init__(self, **node_kwargs: Any) -> None:
        Node.__init__(self, NODE_NAME, **node_kwargs)
        self.init_groups()
        try:
            self.load()
            self.wire()
        except BaseException:
            self.close()
            self.destroy_node()
            raise


def _with_model_path(config: SegmenterConfig, path: str) -> SegmenterConfig:
    return replace(config, model=replace(config.model, path=path))


def main(argv: list[str] | None = None) -> int:
    return run(SegmenterNode, argv)


if __name__ == "__main__":
    sys.exit(main())
