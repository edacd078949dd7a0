"""Helpers for ROS tests that run the segmenter node as a separate process over real DDS on loopback.

* ``allocate_domain`` / the ``ros_domain`` fixture: a ROS_DOMAIN_ID in 1..101 held with an exclusive file lock for
  the test's duration, so concurrent tests (xdist workers, other pytest sessions using this helper) never share one.
* ``ros_env``: the environment every ROS process gets: that domain, ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST (DDS
  must never leave loopback), ROS_LOG_DIR in the test's temp dir, and the Fast DDS profile for large frames.
* ``NodeProcess``: ``<venv>/bin/segmenter`` (or ``python -m seg_node.ros.node``) as a subprocess with params and a log.
* ``RosClient``: the test's side (publisher of colour, depth, camera_info; subscriber of the node's outputs; service
  and parameter clients) in its own rclpy Context on the same domain, spun by a background thread.
* Test models as real ONNX files for the real onnxruntime backend: an "oracle" (the colour map is the input image,
  so a scene painted with distinct colours on black has exactly known segments) and a "slow" one.
* Scenes: painted objects, a moving-object sequence.

Every wait is bounded; every loop stops by itself.
"""
from __future__ import annotations

import fcntl
import os
import random
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import defaultdict
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[2]
# The venv running the tests (.venv, or another leg's such as .venv-jazzy): nodes run on the same ROS distribution.
VENV_BIN = Path(sys.prefix) / "bin"
FASTDDS_PROFILE = REPO / "config" / "fastdds_large_images.xml"
DOMAIN_LOCK_DIR = Path(tempfile.gettempdir()) / "seg_node_ros_domains"
DOMAINS = range(1, 102)  # the portable ROS_DOMAIN_ID range

# The pytest process itself talks ROS (RosClient): same isolation as the node processes.
os.environ["ROS_AUTOMATIC_DISCOVERY_RANGE"] = "LOCALHOST"
os.environ.setdefault("FASTDDS_DEFAULT_PROFILES_FILE", str(FASTDDS_PROFILE))
# Fast DDS 2.x (Humble, Jazzy) reads only the older name; 3.x (Kilted) reads both.
os.environ.setdefault("FASTRTPS_DEFAULT_PROFILES_FILE", str(FASTDDS_PROFILE))
# Fast DDS 3.x names its shared-memory files fastdds_*, 2.x fastrtps_*.
SHM_PREFIXES = ("/dev/shm/fastdds_", "/dev/shm/fastrtps_")
os.environ.setdefault("ROS_LOG_DIR", tempfile.mkdtemp(prefix="seg_node_test_roslog_"))


# ------------------------------------------------------------------------------------------ domains, env


class DomainLease:
    def __init__(self, domain: int, handle: Any) -> None:
        self.domain = domain
        self._handle = handle

    def release(self) -> None:
        if self._handle is not None:
            fcntl.flock(self._handle, fcntl.LOCK_UN)
            self._handle.close()
            self._handle = None


def allocate_domain() -> DomainLease:
    """A free domain id, held (flock) until released; starts at a random id so sessions spread out."""
    DOMAIN_LOCK_DIR.mkdir(exist_ok=True)
    ids = list(DOMAINS)
    start = random.randrange(len(ids))
    for domain in ids[start:] + ids[:start]:
        if domain == int(os.environ.get("ROS_DOMAIN_ID", "-1")):
            continue  # the session-wide default (scripts/test.sh) may be in use by non-isolated processes
        handle = open(DOMAIN_LOCK_DIR / f"{domain}.lock", "w")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            handle.close()
            continue
        return DomainLease(domain, handle)
    raise RuntimeError(f"no free ROS domain id in {DOMAINS}")


def ros_env(domain: int, log_dir: Path, **extra: str) -> dict[str, str]:
    log_dir.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ)
    env.update(ROS_DOMAIN_ID=str(domain), ROS_AUTOMATIC_DISCOVERY_RANGE="LOCALHOST", ROS_LOG_DIR=str(log_dir),
               FASTDDS_DEFAULT_PROFILES_FILE=str(FASTDDS_PROFILE), FASTRTPS_DEFAULT_PROFILES_FILE=str(FASTDDS_PROFILE),
               PYTHONUNBUFFERED="1", RCUTILS_COLORIZED_OUTPUT="0")
    env.pop("ROS_LOCALHOST_ONLY", None)
    env.update(extra)
    return env


@pytest.fixture
def ros_domain() -> Iterator[int]:
    lease = allocate_domain()
    try:
        yield lease.domain
    finally:
        lease.release()


# ------------------------------------------------------------------------------------------- node process


def node_command() -> list[str]:
    exe = VENV_BIN / "segmenter"
    if exe.exists():
        return [str(exe)]
    return [str(VENV_BIN / "python"), "-m", "seg_node.ros.node"]  # until the console script is installed


def _ros_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


class NodeProcess:
    """The segmenter (or ``command``, another ROS program) in its own process; stdout and stderr go to ``log_path``."""

    def __init__(self, env: dict[str, str], log_path: Path, params: dict[str, Any] | None = None,
                 params_file: Path | None = None, remaps: dict[str, str] | None = None,
                 command: list[str] | None = None, cwd: Path = REPO) -> None:
        cmd = (command or node_command()) + ["--ros-args"]
        if params_file is not None:
            cmd += ["--params-file", str(params_file)]
        for name, value in (params or {}).items():
            cmd += ["-p", f"{name}:={_ros_value(value)}"]
        for src, dst in (remaps or {}).items():
            cmd += ["-r", f"{src}:={dst}"]
        self.cmd = cmd
        self.log_path = log_path
        self._log = open(log_path, "w")
        self.started = time.monotonic()
        self.proc = subprocess.Popen(cmd, env=env, stdout=self._log, stderr=subprocess.STDOUT, cwd=cwd)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def log(self) -> str:
        if not self._log.closed:
            self._log.flush()
        return self.log_path.read_text()

    def wait_for_log(self, text: str, timeout: float = 30.0) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if text in self.log():
                return True
            if self.proc.poll() is not None:
                return text in self.log()
            time.sleep(0.05)
        return False

    def wait_ready(self, timeout: float = 60.0, text: str = "segmenting ") -> None:
        if not self.wait_for_log(text, timeout):
            raise AssertionError(f"node did not start (rc={self.proc.poll()}):\n{self.log()}")

    def wait_exit(self, timeout: float) -> int | None:
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            return None

    def stop(self, sig: int = signal.SIGINT, timeout: float = 5.0) -> tuple[int | None, float]:
        """Send ``sig``; (exit code or None if it had to be killed, seconds it took)."""
        if self.proc.poll() is not None:
            self._log.close()
            return self.proc.returncode, 0.0
        t0 = time.monotonic()
        self.proc.send_signal(sig)
        rc = self.wait_exit(timeout)
        elapsed = time.monotonic() - t0
        if rc is None:
            self.proc.kill()
            self.proc.wait(5)
        self._log.close()
        return rc, elapsed

    def rss_mb(self) -> float:
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024.0
        raise RuntimeError("no VmRSS")

    def shm_files(self) -> set[str]:
        """Fast DDS shared-memory files this process has mapped."""
        maps = Path(f"/proc/{self.pid}/maps").read_text()
        return {line.split()[-1] for line in maps.splitlines() if any(p in line for p in SHM_PREFIXES)}


# --------------------------------------------------------------------------------------------- ROS client


class RosClient:
    """The test's ROS side, in its own rclpy Context on ``domain`` (the test process never uses the global one)."""

    def __init__(self, domain: int, name: str = "test_client") -> None:
        import rclpy
        from rclpy.executors import SingleThreadedExecutor

        self.rclpy = rclpy
        self.context = rclpy.Context()
        rclpy.init(context=self.context, domain_id=domain)
        self.node = rclpy.create_node(name, context=self.context)
        self.executor = SingleThreadedExecutor(context=self.context)
        self.executor.add_node(self.node)
        self.lock = threading.Lock()
        self.received: dict[str, list[tuple[float, Any]]] = defaultdict(list)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._spin, daemon=True)
        self._thread.start()

    def _spin(self) -> None:
        while not self._stop.is_set():
            try:
                self.executor.spin_once(timeout_sec=0.05)
            except Exception:  # context shut down under us
                if self._stop.is_set():
                    return
                raise

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self.executor.shutdown(timeout_sec=1.0)
        self.node.destroy_node()
        self.rclpy.shutdown(context=self.context)

    def __enter__(self) -> RosClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- pub/sub

    def qos(self, reliable: bool = True, depth: int = 10) -> Any:
        from rclpy.qos import HistoryPolicy, QoSProfile, ReliabilityPolicy

        return QoSProfile(reliability=ReliabilityPolicy.RELIABLE if reliable else ReliabilityPolicy.BEST_EFFORT,
                          history=HistoryPolicy.KEEP_LAST, depth=depth)

    def publisher(self, msg_type: type, topic: str, reliable: bool = True, depth: int = 10) -> Any:
        return self.node.create_publisher(msg_type, topic, self.qos(reliable, depth))

    def subscribe(self, msg_type: type, topic: str, depth: int = 50, reliable: bool = True, keep: bool = True) -> None:
        """Store (arrival time, message) per message; with ``keep=False`` only the arrival time (message None),
        for counting large messages without holding them."""
        def store(msg: Any) -> None:
            with self.lock:
                self.received[topic].append((time.time(), msg if keep else None))

        self.node.create_subscription(msg_type, topic, store, self.qos(reliable, depth))

    def messages(self, topic: str) -> list[Any]:
        with self.lock:
            return [m for _, m in self.received[topic]]

    def clear(self, topic: str | None = None) -> None:
        with self.lock:
            if topic is None:
                self.received.clear()
            else:
                self.received[topic].clear()

    def wait_for(self, predicate: Callable[[], Any], timeout: float = 10.0, period: float = 0.02) -> Any:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            value = predicate()
            if value:
                return value
            time.sleep(period)
        return predicate()

    def wait_matched(self, publishers: list[Any], subscriptions: list[tuple[str, int]] = (), timeout: float = 30.0) -> None:
        """Until each publisher has a subscriber and each (topic, n) has n publishers."""
        ok = self.wait_for(lambda: all(p.get_subscription_count() > 0 for p in publishers) and all(
            self.node.count_publishers(t) >= n for t, n in subscriptions), timeout)
        if not ok:
            raise AssertionError(f"no match within {timeout} s: "
                                 f"{[(p.topic_name, p.get_subscription_count()) for p in publishers]} "
                                 f"{[(t, self.node.count_publishers(t)) for t, _ in subscriptions]}")

    def wait_stamp(self, topic: str, stamp: Any, timeout: float = 10.0) -> Any:
        """The first message on ``topic`` whose header (a MarkerArray's first marker's) has ``stamp``."""
        def find() -> Any:
            for m in self.messages(topic):
                hdr = m.markers[0].header if hasattr(m, "markers") and m.markers else getattr(m, "header", None)
                if hdr is not None and hdr.stamp.sec == stamp.sec and hdr.stamp.nanosec == stamp.nanosec:
                    return m
            return None
        return self.wait_for(find, timeout)

    def send_until(self, publishers_msgs: list[tuple[Any, Any]], topic: str, stamp: Any, timeout: float = 20.0,
                   every: float = 1.0) -> Any:
        """Publish the messages (again every ``every`` s: best-effort frames right after discovery can be lost)
        until a message stamped ``stamp`` arrives on ``topic``; returns it or None."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for pub, msg in publishers_msgs:
                pub.publish(msg)
            found = self.wait_stamp(topic, stamp, min(every, max(deadline - time.monotonic(), 0.0)))
            if found is not None:
                return found
        return None

    # --- services and parameters

    def call(self, srv_type: type, name: str, request: Any, timeout: float = 15.0) -> Any:
        client = self.node.create_client(srv_type, name)
        try:
            if not client.wait_for_service(timeout_sec=timeout):
                raise AssertionError(f"service {name} not available within {timeout} s")
            future = client.call_async(request)
            deadline = time.monotonic() + timeout
            while not future.done() and time.monotonic() < deadline:
                time.sleep(0.01)
            if not future.done():
                raise AssertionError(f"service {name} did not answer within {timeout} s")
            return future.result()
        finally:
            self.node.destroy_client(client)

    def set_parameters(self, node_name: str, values: dict[str, Any], timeout: float = 10.0) -> list[Any]:
        """SetParameters on ``node_name``; returns the SetParametersResult list."""
        from rcl_interfaces.srv import SetParameters
        from rclpy.parameter import Parameter

        req = SetParameters.Request(parameters=[Parameter(k, value=v).to_parameter_msg() for k, v in values.items()])
        return list(self.call(SetParameters, f"/{node_name}/set_parameters", req, timeout).results)

    def get_parameters(self, node_name: str, names: list[str], timeout: float = 10.0) -> dict[str, Any]:
        from rcl_interfaces.srv import GetParameters
        from rclpy.parameter import parameter_value_to_python

        resp = self.call(GetParameters, f"/{node_name}/get_parameters", GetParameters.Request(names=names), timeout)
        return {n: parameter_value_to_python(v) for n, v in zip(names, resp.values)}


def stamp(sec: int, nanosec: int = 0) -> Any:
    from builtin_interfaces.msg import Time

    return Time(sec=sec, nanosec=nanosec)


def header(sec: int, nanosec: int = 0, frame_id: str = "camera_color_optical_frame") -> Any:
    from std_msgs.msg import Header

    return Header(stamp=stamp(sec, nanosec), frame_id=frame_id)


def now_header(frame_id: str = "camera_color_optical_frame") -> Any:
    ns = time.time_ns()
    return header(ns // 1_000_000_000, ns % 1_000_000_000, frame_id)


def camera_info(hdr: Any, width: int, height: int, fx: float, fy: float, cx: float, cy: float) -> Any:
    from sensor_msgs.msg import CameraInfo

    return CameraInfo(header=hdr, width=width, height=height, distortion_model="plumb_bob", d=[0.0] * 5,
                      k=[fx, 0.0, cx, 0.0, fy, cy, 0.0, 0.0, 1.0], r=[1.0, 0, 0, 0, 1.0, 0, 0, 0, 1.0],
                      p=[fx, 0.0, cx, 0.0, 0.0, fy, cy, 0.0, 0.0, 0.0, 1.0, 0.0])


def diagnostics_values(msg: Any, name_contains: str = "segmentation") -> dict[str, str]:
    for status in msg.status:
        if name_contains in status.name:
            return {kv.key: kv.value for kv in status.values}
    return {}


# ---------------------------------------------------------------------------------------------- test models




def time_model(path: Path, hw: tuple[int, int] = (480, 640), runs: int = 5) -> float:
    """Median seconds of one onnxruntime run on one thread."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    x = np.random.default_rng(0).random((1, 3, *hw), dtype=np.float32)
    sess.run(None, {"images": x})
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        sess.run(None, {"images": x})
        times.append(time.perf_counter() - t0)
    return float(np.median(times))


# ---------------------------------------------------------------------------------------------------- scenes

# Distinct, saturated colours (each has a 255 channel, so the oracle's colour map is exact).
COLORS = np.array([(255, 40, 40), (40, 255, 40), (60, 60, 255), (255, 255, 0), (255, 0, 255), (0, 255, 255),
                    (255, 140, 0), (140, 0, 255)], dtype=np.uint8)


def paint(labels: np.ndarray, colors: np.ndarray = COLORS) -> np.ndarray:
    """uint8 RGB image: label k painted COLOURS[k - 1], background black."""
    lut = np.zeros((max(int(labels.max()), len(colors)) + 1, 3), np.uint8)
    lut[1 : len(colors) + 1] = colors
    return lut[labels]


def rectangles_scene(h: int = 480, w: int = 640, boxes: list[tuple[int, int, int, int]] | None = None) -> np.ndarray:
    """uint16 label map with rectangles (x, y, w, h) numbered 1.. in order."""
    boxes = boxes or [(60, 50, 200, 150), (360, 80, 150, 120), (120, 300, 100, 120), (420, 300, 160, 100)]
    labels = np.zeros((h, w), np.uint16)
    for k, (x, y, bw, bh) in enumerate(boxes, start=1):
        labels[y : y + bh, x : x + bw] = k
    return labels


def moving_sequence(frames: int, h: int = 480, w: int = 640, occlude: tuple[int, ...] = ()) -> list[np.ndarray]:
    """Label maps of three objects moving across the image (a few px per frame); object 2 vanishes in the frames
    listed in ``occlude``. Object k keeps label k in every frame where it is visible."""
    out = []
    for t in range(frames):
        labels = np.zeros((h, w), np.uint16)
        # Apart at all times (touching masks would make the expected labels depend on the border placement).
        boxes = [(40 + 6 * t, 60, 120, 90), (400 - 5 * t, 180 + 2 * t, 90, 110), (60 + 4 * t, 380, 160, 60)]
        for k, (x, y, bw, bh) in enumerate(boxes, start=1):
            if k == 2 and t in occlude:
                continue
            labels[max(y, 0) : y + bh, max(x, 0) : x + bw] = k
        out.append(labels)
    return out

