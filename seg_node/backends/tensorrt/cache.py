"""TensorRT engine cache: keys, file names, JSON sidecars, lookup with version and IO validation.

Imports neither torch nor tensorrt. A serialized TensorRT engine is only valid for the GPU model (compute
capability), the TensorRT version and the build settings it was made with, so an engine is stored under a name
derived from its full key:

    <onnx stem>.<gpu>.sm<cc>.trt<version>.<precision>.<input shape>[.dla<N>].<key digest>.engine
    <same>.engine.json      the sidecar: the key, the engine's IO, the model spec, build time and host

Key fields (``KEY_FIELDS``): GPU name, compute capability, TensorRT version, precision, input shape (N×3×H×W, N the
largest batch), the SHA-256 of the ONNX file (and its ``.data`` file), DLA core, workspace limit and, for int8, the
SHA-256 of the calibration set. ``resolve_engine`` returns the cached engine for a key; only when there is none
(or its sidecar or IO is inconsistent) does it build one, or, with ``on_missing="fail"``, raise an error that names
every key field in which the closest cached engine differs ("trt_version: cached 10.3.0, this machine 10.7.0").
Nothing is ever rebuilt because of a launch; the Isaac ROS default ``force_engine_update: true`` is the opposite.

The only GPU-touching function is ``gather_device_facts``; everything else takes a ``DeviceFacts`` so tests inject
fake ones.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import re
import socket
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from seg_node.backends.base import PRECISIONS, BackendError

CACHE_FORMAT = 1
ON_MISSING = ("build", "fail")
ENV_CACHE_DIR = "SEG_NODE_ENGINE_CACHE"
HASH_MEMO = "onnx_hashes.json"
_CHUNK = 1 << 24

log = logging.getLogger(__name__)


class EngineCacheError(BackendError):
    """No usable cached engine (and building was not allowed or failed), or the cache itself is unusable."""


class EngineIOError(EngineCacheError):
    """An engine's inputs/outputs (names, shapes, dtypes) are not what the model needs."""


@dataclass(frozen=True)
class DeviceFacts:
    """What an engine is bound to on this machine. ``cuda_version`` is recorded, not part of the key."""

    gpu_name: str
    compute_capability: str  # "8.7"
    trt_version: str
    cuda_version: str = ""


@dataclass(frozen=True)
class EngineKey:
    gpu_name: str
    compute_capability: str
    trt_version: str
    precision: str
    input_shape: tuple[int, ...]
    onnx_sha256: str
    dla_core: int = -1  # -1 = GPU
    workspace_mb: int = 0  # 0 = TensorRT's default (the device's memory)
    calibration: str = ""  # int8: SHA-256 of the calibration images

    def __post_init__(self) -> None:
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {self.precision!r}")
        if not self.input_shape or any(not isinstance(d, int) or d <= 0 for d in self.input_shape):
            raise ValueError(f"input_shape must be positive ints (a static shape), got {self.input_shape!r}")
        if self.dla_core < -1 or self.workspace_mb < 0:
            raise ValueError(f"dla_core must be >= -1 and workspace_mb >= 0, got {self.dla_core}, {self.workspace_mb}")

    @classmethod
    def for_device(cls, facts: DeviceFacts, **rest: Any) -> EngineKey:
        return cls(gpu_name=facts.gpu_name, compute_capability=facts.compute_capability, trt_version=facts.trt_version,
                   **rest)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["input_shape"] = list(self.input_shape)
        return d

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> EngineKey:
        names = {f.name for f in fields(cls)}
        unknown = set(raw) - names
        if unknown:
            raise ValueError(f"unknown key fields {sorted(unknown)}")
        return cls(**{**raw, "input_shape": tuple(int(d) for d in raw["input_shape"])})

    def digest(self) -> str:
        return hashlib.sha256(json.dumps(self.to_dict(), sort_keys=True).encode()).hexdigest()

    def file_name(self, onnx_stem: str) -> str:
        gpu = re.sub(r"[^A-Za-z0-9]+", "-", self.gpu_name).strip("-") or "gpu"
        sm = "sm" + self.compute_capability.replace(".", "")
        shape = "x".join(map(str, self.input_shape))
        dla = f".dla{self.dla_core}" if self.dla_core >= 0 else ""
        return f"{onnx_stem}.{gpu}.{sm}.trt{self.trt_version}.{self.precision}.{shape}{dla}.{self.digest()[:12]}.engine"

    def differences(self, other: EngineKey) -> list[str]:
        """'field: cached X, this machine/request Y' for every field where ``other`` (a cached key) differs."""
        out = []
        for name in KEY_FIELDS:
            mine, theirs = getattr(self, name), getattr(other, name)
            if mine != theirs:
                if name in ("onnx_sha256", "calibration"):
                    mine, theirs = (v[:12] + "…" if v else "none" for v in (mine, theirs))
                out.append(f"{name}: cached {_show(theirs)}, needed {_show(mine)}")
        return out


KEY_FIELDS = tuple(f.name for f in fields(EngineKey))


def _show(value: Any) -> str:
    if isinstance(value, tuple):
        return "×".join(map(str, value))
    return str(value)


@dataclass(frozen=True)
class TensorIO:
    name: str
    mode: str  # "input" | "output"
    shape: tuple[int, ...]  # -1 = dynamic
    dtype: str  # numpy dtype name: "float32", "float16", ...

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "mode": self.mode, "shape": list(self.shape), "dtype": self.dtype}

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> TensorIO:
        return cls(str(raw["name"]), str(raw["mode"]), tuple(int(d) for d in raw["shape"]), str(raw["dtype"]))

    def describe(self) -> str:
        return f"{self.mode} {self.name} {'×'.join('?' if d < 0 else str(d) for d in self.shape)} {self.dtype}"


def io_differences(expected: Sequence[TensorIO], actual: Sequence[TensorIO]) -> list[str]:
    """How ``actual`` IO differs from ``expected``; -1 in an expected shape matches any size (dynamic batch)."""
    exp, act = {t.name: t for t in expected}, {t.name: t for t in actual}
    out = [f"missing {exp[n].describe()}" for n in exp if n not in act]
    out += [f"unexpected {act[n].describe()}" for n in act if n not in exp]
    for name in exp.keys() & act.keys():
        e, a = exp[name], act[name]
        if e.mode != a.mode:
            out.append(f"{name}: is an {a.mode}, expected an {e.mode}")
        if e.dtype != a.dtype:
            out.append(f"{name}: dtype {a.dtype}, expected {e.dtype}")
        if len(e.shape) != len(a.shape) or any(x != -1 and y != -1 and x != y for x, y in zip(e.shape, a.shape)):
            out.append(f"{name}: shape {_show(a.shape)}, expected {_show(e.shape)} (-1 = any)")
    return sorted(out)


def validate_io(expected: Sequence[TensorIO], actual: Sequence[TensorIO], what: str) -> None:
    diffs = io_differences(expected, actual)
    if diffs:
        raise EngineIOError(f"{what}: inputs/outputs do not match: {'; '.join(diffs)}")


@dataclass(frozen=True)
class CacheEntry:
    engine: Path
    key: EngineKey
    io: tuple[TensorIO, ...]
    meta: dict[str, Any] = field(default_factory=dict)  # spec, stage, build info

    @property
    def sidecar(self) -> Path:
        return sidecar_path(self.engine)


def sidecar_path(engine: Path) -> Path:
    return engine.with_name(engine.name + ".json")


def read_sidecar(engine: Path) -> CacheEntry:
    """The sidecar of ``engine``; EngineCacheError if it is missing or malformed."""
    path = sidecar_path(engine)
    try:
        raw = json.loads(path.read_text())
    except FileNotFoundError as exc:
        raise EngineCacheError(f"{path}: missing; an engine without its key cannot be validated (rebuild it with "
                               "build_engine, which writes both)") from exc
    except (OSError, json.JSONDecodeError) as exc:
        raise EngineCacheError(f"{path}: unreadable sidecar ({exc})") from exc
    try:
        if raw.get("format") != CACHE_FORMAT:
            raise ValueError(f"cache format {raw.get('format')!r}, this version reads {CACHE_FORMAT}")
        key = EngineKey.from_dict(raw["key"])
        io = tuple(TensorIO.from_dict(t) for t in raw["io"])
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise EngineCacheError(f"{path}: malformed sidecar ({exc})") from exc
    meta = {k: v for k, v in raw.items() if k not in ("format", "key", "io")}
    return CacheEntry(engine, key, io, meta)


def check_prebuilt(engine: Path, facts: DeviceFacts) -> CacheEntry:
    """A prebuilt engine given by path: its sidecar must match this machine's GPU and TensorRT version."""
    entry = read_sidecar(engine)
    want = EngineKey(**{**entry.key.to_dict(), "input_shape": entry.key.input_shape,
                        "gpu_name": facts.gpu_name, "compute_capability": facts.compute_capability,
                        "trt_version": facts.trt_version})
    diffs = want.differences(entry.key)
    if diffs:
        raise EngineCacheError(f"{engine}: built for another machine or TensorRT ({'; '.join(diffs)}); rebuild it here "
                               "with build_engine, or give the .onnx model path so the engine cache can build it")
    if not engine.is_file():
        raise EngineCacheError(f"{engine}: engine file does not exist")
    return entry


# ------------------------------------------------------------------------------------------------ hashing


def _stat(path: Path) -> list[int] | None:
    try:
        st = path.stat()
    except FileNotFoundError:
        return None
    return [st.st_size, st.st_mtime_ns]


def onnx_digest(path: str | Path, memo_dir: Path | None = None) -> str:
    """SHA-256 of an ONNX file and its external-data file (``<file>.data``, as export_onnx writes it).

    With ``memo_dir`` the digest is remembered per (path, size, mtime), so a multi-GB model is hashed once, not on
    every launch. (An ONNX file with external data under other names is hashed without those files.)
    """
    path = Path(path).expanduser().resolve()
    data = path.with_name(path.name + ".data")
    stamp = [_stat(path), _stat(data)]
    if stamp[0] is None:
        raise EngineCacheError(f"{path}: ONNX file does not exist")
    memo_file = memo_dir / HASH_MEMO if memo_dir is not None else None
    memo: dict[str, Any] = {}
    if memo_file is not None and memo_file.is_file():
        try:
            memo = json.loads(memo_file.read_text())
        except (OSError, json.JSONDecodeError):
            memo = {}
        hit = memo.get(str(path))
        if isinstance(hit, dict) and hit.get("stamp") == stamp and isinstance(hit.get("sha256"), str):
            return hit["sha256"]
    h = hashlib.sha256()
    for part in (path, data):
        if part.exists():
            if part is data:
                h.update(b"\0external-data\0")
            with open(part, "rb") as f:
                while chunk := f.read(_CHUNK):
                    h.update(chunk)
    digest = h.hexdigest()
    if memo_file is not None:
        memo[str(path)] = {"stamp": stamp, "sha256": digest}
        with contextlib.suppress(OSError):
            _atomic_write(memo_file, json.dumps(memo, indent=1, sort_keys=True).encode())
    return digest


def calibration_digest(files: Sequence[Path]) -> str:
    """SHA-256 over the calibration images (names and bytes, in sorted order)."""
    h = hashlib.sha256()
    for f in sorted(files):
        h.update(f.name.encode() + b"\0")
        h.update(f.read_bytes())
    return h.hexdigest()


def _atomic_write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


# -------------------------------------------------------------------------------------------------- cache


def default_cache_dir() -> Path:
    """``$SEG_NODE_ENGINE_CACHE``; else ``engines/cache`` of a source checkout (git-ignored); else
    ``~/.cache/seg_node/engines`` (an installed package's share folder may be read-only, and a cache that cannot be
    written would mean a rebuild on every start)."""
    env = os.environ.get(ENV_CACHE_DIR)
    if env:
        return Path(env).expanduser()
    repo = Path(__file__).resolve().parents[3]
    if (repo / "engines").is_dir() and os.access(repo / "engines", os.W_OK):
        return repo / "engines" / "cache"
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "seg_node" / "engines"


@dataclass
class BuildResult:
    engine_bytes: bytes
    io: tuple[TensorIO, ...]
    seconds: float
    meta: dict[str, Any] = field(default_factory=dict)


class EngineCache:
    def __init__(self, root: str | Path | None = None) -> None:
        self.root = Path(root).expanduser() if root is not None else default_cache_dir()

    def path_for(self, key: EngineKey, onnx_stem: str) -> Path:
        return self.root / key.file_name(onnx_stem)

    def entries(self) -> Iterator[CacheEntry]:
        if not self.root.is_dir():
            return
        for sidecar in sorted(self.root.glob("*.engine.json")):
            with contextlib.suppress(EngineCacheError):
                yield read_sidecar(sidecar.with_name(sidecar.name[: -len(".json")]))

    def lookup(self, key: EngineKey, onnx_stem: str) -> tuple[CacheEntry | None, str]:
        """(entry, "") for a usable cached engine of exactly ``key``; else (None, why not)."""
        engine = self.path_for(key, onnx_stem)
        if not engine.is_file():
            return None, self._why_missing(key, onnx_stem)
        try:
            entry = read_sidecar(engine)
        except EngineCacheError as exc:
            return None, str(exc)
        if entry.key != key:
            return None, f"{sidecar_path(engine).name}: sidecar key differs ({'; '.join(key.differences(entry.key))})"
        return entry, ""

    def _why_missing(self, key: EngineKey, onnx_stem: str) -> str:
        candidates = [e for e in self.entries()
                      if e.meta.get("onnx_stem") == onnx_stem or e.key.onnx_sha256 == key.onnx_sha256]
        if not candidates:
            return f"no cached engine for {onnx_stem} in {self.root}"
        best = min(candidates, key=lambda e: len(key.differences(e.key)))
        return f"the closest cached engine, {best.engine.name}, differs in {'; '.join(key.differences(best.key))}"

    def store(self, key: EngineKey, onnx_stem: str, result: BuildResult, meta: dict[str, Any] | None = None) -> CacheEntry:
        engine = self.path_for(key, onnx_stem)
        info = {**(meta or {}), **result.meta, "onnx_stem": onnx_stem,
                "built": {"at": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "seconds": round(result.seconds, 1),
                          "host": socket.gethostname()}}
        sidecar = {"format": CACHE_FORMAT, "key": key.to_dict(), "io": [t.to_dict() for t in result.io], **info}
        try:
            _atomic_write(engine, result.engine_bytes)
            _atomic_write(sidecar_path(engine), json.dumps(sidecar, indent=2, sort_keys=True).encode())
        except OSError as exc:
            raise EngineCacheError(f"{self.root}: cannot write the engine cache ({exc.strerror or exc}); set "
                                   f"${ENV_CACHE_DIR} or the backend's engine_cache_dir to a writable folder") from exc
        return CacheEntry(engine, key, result.io, info)

    def discard(self, entry: CacheEntry) -> None:
        for p in (entry.engine, entry.sidecar):
            with contextlib.suppress(FileNotFoundError):
                p.unlink()

    @contextlib.contextmanager
    def lock(self, onnx_stem: str) -> Iterator[None]:
        """One builder per model at a time (two nodes started together must not both spend 20 minutes building)."""
        try:
            import fcntl
        except ImportError:  # not POSIX: no cross-process lock
            yield
            return
        self.root.mkdir(parents=True, exist_ok=True)
        with open(self.root / f".{onnx_stem}.lock", "w") as f:
            fcntl.flock(f, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(f, fcntl.LOCK_UN)


def resolve_engine(cache: EngineCache, key: EngineKey, onnx_stem: str, build: Callable[[], BuildResult], *,
                   on_missing: str = "build", expected_io: Sequence[TensorIO] | None = None,
                   meta: dict[str, Any] | None = None, hint: str = "") -> tuple[CacheEntry, bool]:
    """The cached engine for ``key``, built (once) if missing or invalid. Returns (entry, built now?).

    ``on_missing="fail"`` raises EngineCacheError naming the reason (and the closest cached engine's differing key
    fields) instead of building. ``expected_io`` is the IO contract a cached sidecar must satisfy; a mismatch
    counts as missing (the stale engine is replaced when building).
    """
    if on_missing not in ON_MISSING:
        raise ValueError(f"on_missing must be one of {', '.join(ON_MISSING)}, got {on_missing!r}")
    entry, why = cache.lookup(key, onnx_stem)
    if entry is not None and expected_io is not None:
        diffs = io_differences(expected_io, entry.io)
        if diffs:
            entry, why = None, f"cached engine {cache.path_for(key, onnx_stem).name} has other IO ({'; '.join(diffs)})"
    if entry is not None:
        return entry, False
    if on_missing == "fail":
        raise EngineCacheError(f"no usable TensorRT engine for {onnx_stem}: {why}. Engine builds are not allowed "
                               f"here (on_missing=fail){'; ' + hint if hint else ''}")
    with cache.lock(onnx_stem):
        entry, _ = cache.lookup(key, onnx_stem)  # another process may have built it while we waited
        if entry is not None and (expected_io is None or not io_differences(expected_io, entry.io)):
            return entry, False
        log.warning("building a TensorRT engine for %s (%s); this takes minutes on a Jetson and happens once per "
                    "key", onnx_stem, why)
        result = build()
        if expected_io is not None:
            validate_io(expected_io, result.io, f"freshly built engine for {onnx_stem}")
        return cache.store(key, onnx_stem, result, meta), True
