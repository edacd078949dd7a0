"""The node's two-stage frame pipeline, free of rclpy (so it is tested without ROS).

A one-slot mailbox takes the newest frame (a newer one replaces an unprocessed one: the caller counts it dropped).
The worker thread runs the first stage (``prepare``: decode, network, instances) and hands one frame at a time to the
finisher thread, which runs the second (``finish``: scale, track, measure, publish) while the worker starts the next
frame. Latency therefore stays near one model run at any input rate, and memory holds one pending frame besides the
two in the pipeline.

Neither thread can be ended by a frame: any exception from ``prepare`` or ``finish`` drops that frame and is
reported (``warn("internal_error", ...)``). A failure outside the per-frame path (applying a configuration, the
hand-off) ends that thread; ``health`` then reports it, and ``revive`` starts a fresh thread in its place. Each
thread beats (``beats``) between frames and while it waits, so a model run that never returns shows as a stall.

On demand, frames wait in the mailbox until a request comes; the worker then runs both stages itself, after the
finisher is done, so the request sees the frame it asked about. A configuration change is applied between frames,
with both stages idle.
"""
from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

Frame = TypeVar("Frame")
Prepared = TypeVar("Prepared")
Done = TypeVar("Done")

WORKER, FINISHER = "segmenter-worker", "segmenter-finisher"


@dataclass
class Health:
    """What ``TwoStagePipeline.health`` found: threads that ended by an error (name → reason) and threads that have
    not beaten for longer than the stall limit (name → seconds)."""

    dead: dict[str, str] = field(default_factory=dict)
    stalled: dict[str, float] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not self.dead and not self.stalled


class Unavailable(Exception):
    """No segmented frame can answer a request; the message says why."""


@dataclass
class _Request:
    done: threading.Event = field(default_factory=threading.Event)
    answer: Any = None
    error: str = ""


class TwoStagePipeline(Generic[Frame, Prepared, Done]):
    """Frames through ``prepare`` (worker thread) and ``finish`` (finisher thread); see the module docstring.

    ``prepare`` and ``finish`` return None for a frame they gave up on (having said why: ``failure`` returns the
    last reason); ``frame_of`` names the frame a finished result belongs to. ``apply_config`` applies a pending
    configuration change and says whether there was one.
    """

    def __init__(self, prepare: Callable[[Frame], Prepared | None], finish: Callable[[Prepared], Done | None], *,
                 frame_of: Callable[[Done], Frame], on_demand: Callable[[], bool], config_pending: Callable[[], bool],
                 apply_config: Callable[[], None], warn: Callable[[str, str], None], failure: Callable[[], str]) -> None:
        self._prepare, self._finish, self._frame_of = prepare, finish, frame_of
        self._on_demand, self._config_pending, self._apply_config = on_demand, config_pending, apply_config
        self._warn, self._failure = warn, failure
        self._stop = threading.Event()
        self._cond = threading.Condition()  # mailbox and requests
        self._slot: Frame | None = None
        self._requests: list[_Request] = []
        self._handoff: Prepared | None = None
        self._finisher_busy = False
        self._handoff_cond = threading.Condition()
        self.latest: Done | None = None
        self._loops: dict[str, Callable[[], None]] = {WORKER: self._work, FINISHER: self._finish_loop}
        self._threads: dict[str, threading.Thread] = {}
        self._faults: dict[str, str] = {}
        self.beats: dict[str, float] = {}
        self.restarts = 0

    @property
    def stopping(self) -> bool:
        return self._stop.is_set()

    def start(self) -> None:
        for name in (FINISHER, WORKER):
            self._spawn(name)

    def _spawn(self, name: str) -> None:
        self._faults.pop(name, None)
        self.beats[name] = time.monotonic()
        thread = threading.Thread(target=self._run, args=(name,), name=name, daemon=True)
        self._threads[name] = thread
        thread.start()

    def _run(self, name: str) -> None:
        """A thread's loop; an exception that escapes it is kept as that thread's fault (``health`` reports it)."""
        try:
            self._loops[name]()
        except BaseException as exc:  # noqa: BLE001 - the supervisor reports it (health) and restarts the thread
            self._faults[name] = f"{type(exc).__name__}: {exc}"

    def _beat(self, name: str) -> None:
        self.beats[name] = time.monotonic()

    def health(self, stall_after: float) -> Health:
        """Threads that died (with the error that ended them) or have not beaten for ``stall_after`` seconds."""
        found = Health()
        if self.stopping:
            return found
        now = time.monotonic()
        for name, thread in self._threads.items():
            if not thread.is_alive():
                found.dead[name] = self._faults.get(name, "ended without an error")
            elif now - self.beats.get(name, now) > stall_after:
                found.stalled[name] = now - self.beats[name]
        return found

    def revive(self) -> list[str]:
        """Start a fresh thread for each one that died; returns their names. A finisher that died mid-frame left
        that frame unfinished: it is forgotten, so the worker does not wait for it."""
        revived = []
        for name, thread in list(self._threads.items()):
            if self.stopping or thread.is_alive():
                continue
            if name == FINISHER:
                with self._handoff_cond:
                    self._finisher_busy = False
                    self._handoff_cond.notify_all()
            self.restarts += 1
            self._spawn(name)
            revived.append(name)
        return revived

    def offer(self, frame: Frame) -> bool:
        """Put ``frame`` in the mailbox; True when it replaced a frame that was never processed."""
        with self._cond:
            replaced = self._slot is not None and not self._on_demand()
            self._slot = frame
            self._cond.notify()
        return replaced

    def wake(self) -> None:
        """Settings changed: let the worker look again (on_demand, a pending configuration)."""
        with self._cond:
            self._cond.notify()

    def request(self, timeout: float) -> Done:
        """On demand: segment the frame in the mailbox and return it (waits up to ``timeout`` seconds)."""
        req = _Request()
        with self._cond:
            if self._slot is None:
                raise Unavailable("no image received yet on the input topic")
            self._requests.append(req)
            self._cond.notify()
        if not req.done.wait(timeout):
            raise Unavailable(f"segmentation did not finish within processing.service_timeout {timeout} s")
        if req.answer is None or req.error:
            raise Unavailable(req.error or "no frame could be segmented")
        return req.answer

    def stop(self, timeout: float) -> bool:
        """Stop both threads (waiting up to ``timeout`` s for a model run to end); True when both have ended."""
        self._stop.set()
        with self._cond:
            self._cond.notify_all()
            for req in self._requests:
                req.error = "the node is shutting down"
                req.done.set()
            self._requests = []
        with self._handoff_cond:
            self._handoff_cond.notify_all()
        threads = list(self._threads.values())
        deadline = time.monotonic() + timeout
        for thread in threads:
            if thread.is_alive():
                thread.join(max(0.0, deadline - time.monotonic()))
        return not any(t.is_alive() for t in threads)

    def _work(self) -> None:
        while not self._stop.is_set():
            with self._cond:
                while not self._stop.is_set() and not self._requests and (self._slot is None or self._on_demand()):
                    self._beat(WORKER)
                    self._cond.wait(0.5)
                if self._stop.is_set():
                    break
                requests, self._requests = self._requests, []
                frame = self._slot
                if not self._on_demand():
                    self._slot = None
            if not requests and frame is not None and not self._on_demand():
                if self._config_pending():
                    # Both stages read the settings: the finisher ends its frame with the old ones first.
                    self._drain()
                    self._apply_config()
                self._beat(WORKER)
                prepared = self._guarded(self._prepare, frame)
                if prepared is not None:
                    self._hand_off(prepared)
                continue
            # On demand: one stage, after the finisher is done, so requests see the frame they asked about.
            self._drain()
            self._apply_config()
            latest = self.latest
            if frame is not None and (latest is None or self._frame_of(latest) is not frame):
                self._beat(WORKER)
                prepared = self._guarded(self._prepare, frame)
                latest = self._guarded(self._finish_one, prepared) if prepared is not None else None
            for request in requests:
                if latest is not None and self._frame_of(latest) is frame:
                    request.answer = latest
                else:
                    request.error = f"the latest frame could not be segmented: {self._failure()}"
                request.done.set()

    def _guarded(self, stage: Callable[[Any], Any], item: Any) -> Any:
        """``stage(item)``, or None when it raised: one bad frame must not end a thread, whatever it raises."""
        try:
            return stage(item)
        except Exception as exc:
            self._warn("internal_error", f"frame dropped by an unexpected error: {type(exc).__name__}: {exc}")
            return None

    def _finish_one(self, prepared: Prepared) -> Done | None:
        done = self._finish(prepared)
        if done is not None:
            self.latest = done
        return done

    def _hand_off(self, prepared: Prepared) -> None:
        with self._handoff_cond:
            while self._handoff is not None and not self._stop.is_set():
                self._beat(WORKER)  # waiting on the finisher, which reports for itself
                self._handoff_cond.wait(0.5)
            self._handoff = prepared
            self._handoff_cond.notify_all()

    def _drain(self) -> None:
        with self._handoff_cond:
            while (self._handoff is not None or self._finisher_busy) and not self._stop.is_set():
                self._beat(WORKER)
                self._handoff_cond.wait(0.5)

    def _finish_loop(self) -> None:
        while True:
            with self._handoff_cond:
                while self._handoff is None and not self._stop.is_set():
                    self._beat(FINISHER)
                    self._handoff_cond.wait(0.5)
                if self._stop.is_set():
                    break
                prepared, self._handoff = self._handoff, None
                self._finisher_busy = True
                self._handoff_cond.notify_all()
            self._beat(FINISHER)
            try:
                self._guarded(self._finish_one, prepared)
            finally:
                with self._handoff_cond:
                    self._finisher_busy = False
                    self._handoff_cond.notify_all()
