"""The network, the point-prompt clicks and mask completion over chunks of frames: in process, or in spawned worker
processes (all pure functions of the frame, so results do not depend on the worker count)."""
from __future__ import annotations

import dataclasses
import multiprocessing
import os
import time
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from seg_node.backends.base import Backend, BackendError
from seg_node.config import SegmenterConfig
from seg_node.evaluation import metrics as M
from seg_node.evaluation.completion_scoring import FrameCompletion, Protocol, score_frame
from seg_node.models.spec import ModelSpec
from seg_node.pipeline import Segmenter
from seg_node.processing.geometry3d import CameraIntrinsics
from seg_node.processing.model_io import ColorMap


@dataclass
class Frame:
    index: int  # among processed frames
    seq: int  # among the image topic's messages
    log_time: int
    stamp: int
    header: Any
    rgb: np.ndarray
    depth: np.ndarray | None = None
    camera_info: CameraIntrinsics | None = None
    gt: M.GtFrame | None = None


@dataclass
class Job:
    rgb: np.ndarray
    gt: M.GtFrame | None
    seq: int  # seeds the completion's hiding


@dataclass
class Inferred:
    color_map: ColorMap | None
    nonfinite: int
    timings: dict[str, float]
    prompts: list[M.PromptResult] | None
    prompt_ms: float
    error: str | None = None
    completion: FrameCompletion | None = None


def _prompt_eval(segmenter: Segmenter, colors: ColorMap, gt: M.GtFrame, clicks: int) -> list[M.PromptResult]:
    tolerance = M.boundary_tolerance(gt.height, gt.width)
    out = []
    for i in range(len(gt)):
        if gt.crowd[i] or gt.areas[i] == 0:
            continue
        mask = gt.mask(i)
        ious, done, first = M.simulate_clicks(mask, lambda p, lab: segmenter.prompt(colors, p, lab), clicks)
        out.append(M.PromptResult(gt.ids[i], gt.areas[i], ious, M.boundary_f(first, mask, tolerance)[0], done))
    return out


def _infer(segmenter: Segmenter, jobs: Sequence[Job], clicks: int, completion: Protocol | None) -> list[Inferred]:
    out = []
    c = segmenter.config
    for job in jobs:
        try:
            timings: dict[str, float] = {}
            cm = segmenter.color_maps([job.rgb], timings)[0]
            t0 = time.perf_counter()
            prompts = _prompt_eval(segmenter, cm, job.gt, clicks) if clicks and job.gt is not None else None
            prompt_ms = (time.perf_counter() - t0) * 1e3
            done = (score_frame(cm.colors, job.gt, job.seq, completion, c.instances, c.prompting)
                    if completion and job.gt is not None else None)
            out.append(Inferred(cm, int(cm.nonfinite), timings, prompts, prompt_ms, completion=done))
        except Exception as exc:  # one frame the network, prompting or completion fails on is skipped and counted
            out.append(Inferred(None, 0, {}, None, 0.0, f"{type(exc).__name__}: {exc}"))
    return out


_WORKER: dict[str, Any] = {}


def _worker_segmenter(config: SegmenterConfig) -> Segmenter:
    if _WORKER.get("config") != config:
        if "segmenter" in _WORKER:
            _WORKER.pop("segmenter").close()
        _WORKER["segmenter"] = Segmenter(config)
        _WORKER["config"] = config
    return _WORKER["segmenter"]


def _worker_init(config: SegmenterConfig) -> None:
    """Load the model as each worker starts, so all of them load in parallel. A failure is kept for the first task
    to report: an exception escaping an initializer only breaks the pool, without its message."""
    try:
        _worker_segmenter(config)
    except Exception as exc:
        _WORKER["error"] = f"{type(exc).__name__}: {exc}"


def _worker_describe(config: SegmenterConfig) -> tuple[bool, Any]:
    if "error" in _WORKER:
        return False, _WORKER["error"]
    try:
        seg = _worker_segmenter(config)
        return True, (seg.spec, seg.backend.describe())
    except Exception as exc:  # returned as text: some exception types do not survive pickling
        return False, f"{type(exc).__name__}: {exc}"


def _worker_infer(config: SegmenterConfig, clicks: int, completion: Protocol | None, jobs: list[Job]) -> list[Inferred]:
    if "error" in _WORKER:
        raise RuntimeError(f"the worker could not load the model: {_WORKER['error']}")
    return _infer(_worker_segmenter(config), jobs, clicks, completion)


class _ElsewhereBackend(Backend):
    """Stands in for the network in the parent when worker processes run it (the parent needs only the spec)."""

    name = "workers"

    def __init__(self, spec: ModelSpec, description: str) -> None:
        self._spec, self._description = spec, description

    @property
    def spec(self) -> ModelSpec:
        return self._spec

    def run(self, batch: np.ndarray) -> np.ndarray:
        raise BackendError("the network runs in the worker processes")

    def describe(self) -> str:
        return self._description


class Workers:
    def __init__(self, config: SegmenterConfig, workers: int, clicks: int, completion: Protocol | None = None) -> None:
        self.clicks, self.completion = clicks, completion
        self.workers = workers
        self.description = ""
        self.pool: ProcessPoolExecutor | None = None
        if workers == 1:
            self.segmenter = Segmenter(config)
            self.worker_config = config
            return
        threads = config.backend.threads or max(1, (os.cpu_count() or 1) // workers)
        self.worker_config = dataclasses.replace(config, backend=dataclasses.replace(config.backend, threads=threads))
        # spawn, not fork: torch and ONNX Runtime thread pools do not survive a fork.
        self.pool = ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"),
                                        initializer=_worker_init, initargs=(self.worker_config,))
        ok, payload = self.pool.submit(_worker_describe, self.worker_config).result()
        if not ok:
            self.close()
            raise BackendError(f"the worker could not load the model: {payload}")
        spec, description = payload
        self.segmenter = Segmenter(config, backend=_ElsewhereBackend(spec, f"{description}; {workers} worker processes"))

    def submit(self, jobs: list[Job]) -> Future:
        if self.pool is not None:
            return self.pool.submit(_worker_infer, self.worker_config, self.clicks, self.completion, jobs)
        future: Future = Future()
        future.set_result(_infer(self.segmenter, jobs, self.clicks, self.completion))
        return future

    def close(self) -> None:
        if self.pool is not None:
            self.pool.shutdown(wait=True, cancel_futures=True)
            self.pool = None
        if hasattr(self, "segmenter"):
            self.segmenter.close()
