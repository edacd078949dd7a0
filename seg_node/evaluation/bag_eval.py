"""``bag_eval``: run the Segmenter over a recorded ROS 2 bag, score it against ground truth, and write what the node
would have published.

    bag_eval BAG --model PATH --output DIR [--image-topic T] [--gt-topic T | --gt-coco FILE] [--depth-topic T]
             [--camera-info-topic T] [--workers N] [--config YAML] [--storage sqlite3|mcap] ...

Bags are read and written with ``rosbags`` (sqlite3 and MCAP, no ROS installation, no rclpy); the custom seg_msgs
types are registered in its typestore from the interface package's ``.msg`` files.

Data flow. The parent process reads the bag in log-time order and pairs every frame of the image topic with its
ground truth (same header stamp), depth (nearest header stamp within ``--depth-tolerance``) and the latest camera
info, waiting at most ``--sync-window`` seconds of bag time for them. Frames go in contiguous chunks to the network:
in-process with ``--workers 1``, else to N spawned worker processes, which compute the colour maps (the network) and
run the point-prompt click protocol (both pure functions of the frame). The parent then runs, strictly in frame
order, what carries state or must be ordered: colour map → instances, geometry and tracking (``Segmenter.
segment_colors``, the node's own code), the metrics, and the output bag. Results are therefore identical for any
``--workers`` (given a backend whose output does not depend on its thread count; pass ``--threads`` to fix that
count, otherwise each worker gets cpu_count / N threads).

Outputs in ``--output``: ``metrics.json``, ``frames.jsonl`` (one line per frame), ``report.html`` (+ ``thumbnails/``)
and ``bag/``, a bag in the input's storage format with ``<ns>/labels`` (mono16, header copied from the input frame),
``<ns>/segments`` (seg_msgs/SegmentArray) and, on request, ``<ns>/colors`` and ``<ns>/overlay``, each logged at its
input frame's log time.

Bad input. A missing topic, a topic of the wrong type, an unreadable model or config: error, exit code 2. A bag whose
storage file is truncated or has a corrupt tail: the readable messages are processed (an MCAP file is scanned record
by record up to the damage; a sqlite3 file is read row by row with the missing pages served as zeros and every row
that touched one discarded), the rest is counted as unreadable against the counts in ``metadata.yaml``, and the exit
code is 1. Frames that cannot be decoded, have another resolution than the first frame, or whose network run fails
are skipped; ground truth that matches no frame, or cannot be decoded, or has another size than its frame, is
rejected. Each is counted by reason in metrics.json and the report, and makes the exit code 1. Frames without ground
truth are segmented and written but not scored (counted, not an error).
"""
from __future__ import annotations

import argparse
import dataclasses
import heapq
import json
import multiprocessing
import os
import re
import shutil
import struct
import sys
import time
from collections import Counter, deque
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence

import cv2
import numpy as np
import yaml

from seg_node.evaluation import metrics as M
from seg_node.backends.base import Backend, BackendError
from seg_node.config import ConfigError, SegmenterConfig, config_from_dict, config_to_dict, flatten, load_config, unflatten
from seg_node.processing.model_io import ColourMap
from seg_node.processing.geometry3d import DEPTH_NO_CAMERA_INFO, DEPTH_NOT_PROVIDED, CameraIntrinsics, rotation_to_quaternion
from seg_node.processing.image_codec import (ImageCodecError, MalformedImageError, UnsupportedEncodingError, compressed_to_numpy,
                                  decode_depth, decode_to_rgb8, image_to_numpy, numpy_to_image, to_rgb8)
from seg_node.models.checkpoints import CheckpointError
from seg_node.models.spec import ModelSpec
from seg_node.pipeline import SegmentationResult, Segmenter
from seg_node.processing.visualize import overlay

__all__ = ["main", "make_typestore", "open_writer", "make_header", "stamp_ns", "BagSource", "BagReadError",
           "segment_array_msg", "bag_storage", "seg_msgs_dir"]

EXIT_OK, EXIT_PARTIAL, EXIT_USAGE = 0, 1, 2

IMAGE = "sensor_msgs/msg/Image"
COMPRESSED = "sensor_msgs/msg/CompressedImage"
CAMERA_INFO = "sensor_msgs/msg/CameraInfo"
SEGMENT = "seg_msgs/msg/Segment"
SEGMENT_ARRAY = "seg_msgs/msg/SegmentArray"
IMAGE_TYPES = (IMAGE, COMPRESSED)
STORAGES = ("sqlite3", "mcap")
DEFAULT_NAMESPACE = "/segmenter"
# Stages of the node's latency, in pipeline order (the network's three, then the parent's three).
STAGES = ("preprocess", "network", "postprocess", "instances", "geometry", "tracking")
GT_ID_ENCODINGS = ("mono8", "mono16", "16UC1", "32SC1")
GT_COLOUR_ENCODINGS = ("rgb8", "bgr8", "rgba8", "bgra8")


class BagReadError(Exception):
    """The bag cannot be used at all (missing, not a bag, missing or mistyped topics). Exit code 2."""


def _eval_extra(package: str, exc: ImportError) -> ImportError:
    return ImportError(f"bag evaluation needs the Python package '{package}', which is not installed. Install it with: "
                       f"pip install 'seg_node[eval]' (or pip install {package})")


# ----------------------------------------------------------------------------------------------- typestore, writer


def seg_msgs_dir() -> Path:
    """The seg_msgs ``msg/`` folder: installed (``<prefix>/share/seg_msgs/msg``, the venv's or any in
    AMENT_PREFIX_PATH) or the source checkout beside this package."""
    candidates = [Path(sys.prefix) / "share" / "seg_msgs" / "msg"]
    candidates += [Path(p) / "share" / "seg_msgs" / "msg" for p in os.environ.get("AMENT_PREFIX_PATH", "").split(os.pathsep) if p]
    candidates.append(Path(__file__).resolve().parents[2] / "seg_msgs" / "msg")
    for folder in candidates:
        if (folder / "Segment.msg").is_file() and (folder / "SegmentArray.msg").is_file():
            return folder
    raise OSError("cannot find the seg_msgs interface files (Segment.msg, SegmentArray.msg); looked in "
                  + ", ".join(str(c) for c in candidates))


@lru_cache(maxsize=1)
def make_typestore() -> Any:
    """A rosbags typestore with the ROS 2 standard types plus seg_msgs (registered from the .msg text)."""
    try:
        from rosbags.typesys import Stores, get_types_from_msg, get_typestore
    except ImportError as exc:
        raise _eval_extra("rosbags", exc) from exc
    store = get_typestore(getattr(Stores, "ROS2_KILTED", None) or Stores.LATEST)
    folder = seg_msgs_dir()
    types: dict[str, Any] = {}
    for name in ("Segment", "SegmentArray"):
        types.update(get_types_from_msg((folder / f"{name}.msg").read_text(), f"seg_msgs/msg/{name}"))
    store.register(types)
    return store


def open_writer(path: Path, storage: str) -> Any:
    """An open rosbags Writer (bag format version 9) for a new bag folder ``path``."""
    from rosbags.rosbag2 import StoragePlugin, Writer

    if storage not in STORAGES:
        raise ValueError(f"storage must be one of {', '.join(STORAGES)}, got {storage!r}")
    writer = Writer(path, version=9, storage_plugin=StoragePlugin.MCAP if storage == "mcap" else StoragePlugin.SQLITE3)
    writer.open()
    return writer


def make_header(store: Any, stamp: int, frame_id: str) -> Any:
    header, time_ = store.types["std_msgs/msg/Header"], store.types["builtin_interfaces/msg/Time"]
    return header(stamp=time_(sec=int(stamp // 10**9), nanosec=int(stamp % 10**9)), frame_id=frame_id)


def stamp_ns(header: Any) -> int:
    return int(header.stamp.sec) * 10**9 + int(header.stamp.nanosec)


def bag_storage(path: Path) -> str:
    """'sqlite3' or 'mcap' for a bag folder (its metadata.yaml, else its files) or a bare .db3/.mcap file."""
    if path.is_dir():
        meta = _metadata(path)
        ident = meta.get("storage_identifier") if meta else None
        if ident in STORAGES:
            return ident
        for storage, suffix in (("mcap", "*.mcap"), ("sqlite3", "*.db3")):
            if any(path.glob(suffix)):
                return storage
        raise BagReadError(f"{path}: not a ROS 2 bag (no metadata.yaml storage identifier, no .db3 or .mcap file)")
    if path.suffix == ".mcap":
        return "mcap"
    if path.suffix == ".db3":
        return "sqlite3"
    raise BagReadError(f"{path}: not a ROS 2 bag (expected a bag folder, a .db3 or an .mcap file)")


def _metadata(path: Path) -> dict[str, Any] | None:
    meta = path / "metadata.yaml"
    if not meta.is_file():
        return None
    try:
        data = yaml.safe_load(meta.read_text())
        info = data["rosbag2_bagfile_information"]
        return info if isinstance(info, dict) else None
    except (OSError, yaml.YAMLError, KeyError, TypeError):
        return None


def _metadata_counts(path: Path) -> dict[str, int]:
    """Messages per topic as metadata.yaml states them ({} when unknown)."""
    meta = _metadata(path) if path.is_dir() else None
    counts: dict[str, int] = {}
    for entry in (meta or {}).get("topics_with_message_count") or []:
        try:
            counts[entry["topic_metadata"]["name"]] = int(entry["message_count"])
        except (KeyError, TypeError, ValueError):
            continue
    return counts


def _storage_files(path: Path, storage: str) -> list[Path]:
    if not path.is_dir():
        return [path]
    meta = _metadata(path) or {}
    names = meta.get("relative_file_paths") or []
    files = [path / n for n in names if (path / n).is_file()]
    return files or sorted(path.glob("*.mcap" if storage == "mcap" else "*.db3"))


# ----------------------------------------------------------------------------------------------- reading


@dataclass
class TopicInfo:
    name: str
    msgtype: str
    count: int | None  # messages in the bag (readable ones for a recovered bag), None when unknown


class BagSource:
    """Messages of a bag in log-time order, with a fallback for truncated or corrupt storage files.

    ``open_error`` is why rosbags' reader could not open the bag, in which case ``recovered`` is set and the messages
    come from the fallback scanner; ``read_error`` says where reading stopped early (damage partway, or the end of
    the intact part of a recovered bag).
    """

    def __init__(self, path: Path) -> None:
        path = Path(path)
        if not path.exists():
            raise BagReadError(f"{path}: no such bag")
        try:
            from rosbags.rosbag2 import Reader
        except ImportError as exc:
            raise _eval_extra("rosbags", exc) from exc
        self.path = path
        self.storage = bag_storage(path)
        self.expected = _metadata_counts(path)
        self.recovered = False
        self.open_error: str | None = None
        self.read_error: str | None = None
        self._reader: Any = None
        self._salvage: _McapSalvage | _SqliteSalvage | None = None
        try:
            reader = Reader(path)
            reader.open()
        except Exception as exc:  # rosbags raises ReaderError, apsw errors, OSError, KeyError... on bad files
            first = f"{type(exc).__name__}: {exc}"
            try:
                files = _storage_files(path, self.storage)
                if not files:
                    raise BagReadError("no storage file") from None
                self._salvage = _McapSalvage(files) if self.storage == "mcap" else _SqliteSalvage(files)
            except Exception as exc2:
                raise BagReadError(f"{path}: cannot read this bag ({first}); recovery of its readable part failed too "
                                   f"({type(exc2).__name__}: {exc2})") from exc
            self.recovered = True
            self.open_error = first
            self.read_error = self._salvage.error or first
            self.topics = dict(self._salvage.topics)
        else:
            self._reader = reader
            self.topics = {}
            for c in reader.connections:
                if c.topic in self.topics:
                    t = self.topics[c.topic]
                    t.count = (t.count or 0) + c.msgcount
                else:
                    self.topics[c.topic] = TopicInfo(c.topic, c.msgtype, c.msgcount)

    def expected_count(self, topic: str) -> int | None:
        """Messages the topic should have: metadata.yaml's count, or the storage index's when the bag is intact."""
        if topic in self.expected:
            return self.expected[topic]
        return None if self.recovered else self.topics[topic].count if topic in self.topics else None

    def messages(self, topics: Iterable[str]) -> Iterator[tuple[str, int, bytes]]:
        """(topic, log time ns, raw CDR) of the named topics; stops at the first unreadable part (``read_error``)."""
        names = set(topics)
        if self._reader is not None:
            conns = [c for c in self._reader.connections if c.topic in names]
            if not conns:
                return
            it = self._reader.messages(connections=conns)
        else:
            assert self._salvage is not None
            it = self._salvage.messages(names)
        while True:
            try:
                item = next(it)
            except StopIteration:
                break
            except Exception as exc:  # a damaged chunk or page partway: keep what was read, report the rest
                self.read_error = f"{type(exc).__name__}: {exc}"
                break
            if self._reader is not None:
                conn, t, raw = item
                yield conn.topic, t, raw
            else:
                yield item
        if self._salvage is not None:
            self.read_error = self._salvage.error or self.read_error

    def close(self) -> None:
        if self._reader is not None:
            self._reader.close()
            self._reader = None


_MCAP_MAGIC = b"\x89MCAP0\r\n"


class _McapSalvage:
    """Reads an MCAP file record by record from the start, up to the first incomplete or invalid record (a
    recording that was cut off has no summary or footer, which rosbags' reader needs). Chunks are decompressed and
    CRC-checked with rosbags' own helper. Messages come in file order (rosbag2 writes them in log-time order)."""

    def __init__(self, files: Sequence[Path]) -> None:
        self.files = list(files)
        self.error: str | None = None
        self.topics: dict[str, TopicInfo] = {}
        for _ in self._scan(None):  # first pass: channels and readable counts
            pass
        if not any(t.count for t in self.topics.values()):
            raise ValueError(f"no readable messages ({self.error})")

    def _scan(self, wanted: set[str] | None) -> Iterator[tuple[str, int, bytes]]:
        from rosbags.rosbag2.storage_mcap import decompress

        self.error = None
        schemas: dict[int, str] = {}
        channels: dict[int, str] = {}
        counts: Counter[str] = Counter()
        topics: dict[str, TopicInfo] = {}

        def records(buf: bytes | memoryview) -> Iterator[tuple[int, memoryview]]:
            view, pos = memoryview(buf), 0
            while pos < len(view):
                if pos + 9 > len(view):
                    raise ValueError("record header cut off inside a chunk")
                op, (length,) = view[pos], struct.unpack_from("<Q", view, pos + 1)
                if pos + 9 + length > len(view):
                    raise ValueError("record cut off inside a chunk")
                yield op, view[pos + 9: pos + 9 + length]
                pos += 9 + length

        def text(view: memoryview, pos: int) -> tuple[str, int]:
            (n,) = struct.unpack_from("<I", view, pos)
            return bytes(view[pos + 4: pos + 4 + n]).decode(), pos + 4 + n

        def handle(op: int, body: memoryview) -> Iterator[tuple[str, int, bytes]]:
            if op == 0x03:  # schema
                (sid,) = struct.unpack_from("<H", body, 0)
                schemas[sid] = text(body, 2)[0]
            elif op == 0x04:  # channel
                cid, sid = struct.unpack_from("<HH", body, 0)
                topic, pos = text(body, 4)
                encoding, _ = text(body, pos)
                if encoding != "cdr":
                    raise ValueError(f"channel {topic} uses message encoding {encoding!r}, not cdr")
                channels[cid] = topic
                topics.setdefault(topic, TopicInfo(topic, schemas.get(sid, "?"), 0))
            elif op == 0x05:  # message
                cid, _, log_time = struct.unpack_from("<HIQ", body, 0)
                topic = channels.get(cid)
                if topic is None:
                    raise ValueError(f"message on unknown channel {cid}")
                counts[topic] += 1
                if wanted is not None and topic in wanted:
                    yield topic, log_time, bytes(body[22:])

        try:
            for path in self.files:
                with open(path, "rb") as f:
                    if f.read(8) != _MCAP_MAGIC:
                        raise ValueError(f"{path.name}: not an MCAP file (bad magic)")
                    first = True
                    while True:
                        head = f.read(9)
                        if not head:
                            raise ValueError(f"{path.name}: ends without the MCAP data-end record and footer "
                                             "(the recording was cut off)")
                        if len(head) < 9:
                            raise ValueError(f"{path.name}: truncated record header at byte {f.tell() - len(head)}")
                        op, (length,) = head[0], struct.unpack_from("<Q", head, 1)
                        if op in (0x02, 0x0F):  # footer, data end: the rest is the summary
                            break
                        body = f.read(length)
                        if len(body) < length:
                            raise ValueError(f"{path.name}: record at byte {f.tell() - len(body) - 9} is truncated "
                                             f"({len(body)} of {length} bytes)")
                        if first:
                            first = False
                            if op != 0x01 or text(memoryview(body), 0)[0] != "ros2":
                                raise ValueError(f"{path.name}: not a ROS 2 MCAP file (no ros2 profile header)")
                            continue
                        if op == 0x06:  # chunk
                            view = memoryview(body)
                            _, _, size, crc = struct.unpack_from("<QQQI", view, 0)
                            compression, pos = text(view, 28)
                            (n,) = struct.unpack_from("<Q", view, pos)
                            data = decompress(bytes(view[pos + 8: pos + 8 + n]), compression, size, crc)
                            for inner_op, inner in records(data):
                                yield from handle(inner_op, inner)
                        else:
                            yield from handle(op, memoryview(body))
        except Exception as exc:  # struct.error, ValueError, ReaderError (CRC), decompression errors
            self.error = f"{type(exc).__name__}: {exc}"
        for topic, info in topics.items():
            info.count = counts[topic]
        self.topics = topics

    def messages(self, names: set[str]) -> Iterator[tuple[str, int, bytes]]:
        return self._scan(names)


_PAD_VFS = "seg_node_zero_pad"


def _zero_pad_vfs() -> Any:
    """An apsw VFS that serves the missing tail of a truncated sqlite file as zeros and notes that it did.

    SQLite refuses a database shorter than its header says; served zeros, it reads every page that is still there
    and reports the first missing one as corrupt. A row whose overflow pages were missing would silently read as
    zeros, so ``padded`` tells the reader to discard every row fetched after the first zero-served read.
    """
    import apsw

    class PadFile(apsw.VFSFile):
        def __init__(self, name: Any, flags: Any) -> None:
            super().__init__("", name, flags)
            self.real = super().xFileSize()
            self.padded = False
            head = super().xRead(min(100, self.real), 0) if self.real else b""
            size = self.real
            if len(head) >= 32 and head[:16] == b"SQLite format 3\x00":
                (page,) = struct.unpack(">H", head[16:18])
                (pages,) = struct.unpack(">I", head[28:32])
                size = max(size, (65536 if page == 1 else page) * pages)
            self.size = size
            PadVFS.files[str(name.filename() if hasattr(name, "filename") else name)] = self

        def xFileSize(self) -> int:
            return self.size

        def xRead(self, amount: int, offset: int) -> bytes:
            if offset + amount > self.real:
                self.padded = True
            if offset >= self.real:
                return b"\0" * amount
            data = super().xRead(min(amount, self.real - offset), offset)
            return bytes(data) + b"\0" * (amount - len(data))

    class PadVFS(apsw.VFS):
        files: dict[str, Any] = {}

        def __init__(self) -> None:
            super().__init__(_PAD_VFS, "")

        def xOpen(self, name: Any, flags: Any) -> Any:
            return PadFile(name, flags)

    return PadVFS()


_VFS: Any = None


class _SqliteSalvage:
    """Reads the rows that are still intact from truncated rosbag2 sqlite3 files, in insertion order."""

    def __init__(self, files: Sequence[Path]) -> None:
        global _VFS
        import apsw  # noqa: F401  (the salvage needs it: fail here, before any file is touched)

        if _VFS is None:
            _VFS = _zero_pad_vfs()
        self.files = list(files)
        self.error: str | None = None
        self.topics: dict[str, TopicInfo] = {}
        self._topic_ids: list[dict[int, str]] = []
        for path in self.files:
            con = self._connect(path)
            ids = {}
            for tid, name, msgtype in con.execute("SELECT id, name, type FROM topics"):
                ids[int(tid)] = name
                self.topics.setdefault(name, TopicInfo(name, msgtype, None))
            self._topic_ids.append(ids)
            con.close()
            self._forget(path)
        if not self.topics:
            raise ValueError("no topics in the readable part")

    @staticmethod
    def _connect(path: Path) -> Any:
        import apsw  # noqa: F401  (the salvage needs it: fail here, before any file is touched)

        return apsw.Connection(f"file:{path.resolve()}?immutable=1", flags=apsw.SQLITE_OPEN_READONLY | apsw.SQLITE_OPEN_URI,
                               vfs=_PAD_VFS)

    @staticmethod
    def _forget(path: Path) -> None:
        for name in [n for n in _VFS.files if n.endswith(path.name)]:
            del _VFS.files[name]

    def messages(self, names: set[str]) -> Iterator[tuple[str, int, bytes]]:
        self.error = None
        for path, ids in zip(self.files, self._topic_ids):
            con = self._connect(path)
            handle = _VFS.files.get(str(path.resolve()))
            if handle is None:  # apsw passes the name through; look it up by suffix if it normalised it
                handle = next((f for n, f in _VFS.files.items() if n.endswith(path.name)), None)
            try:
                if handle is not None:
                    handle.padded = False
                for tid, stamp, data in con.execute("SELECT topic_id, timestamp, data FROM messages ORDER BY id"):
                    if handle is None or handle.padded:
                        self.error = f"{path.name}: truncated (rows beyond the end of the file are missing)"
                        return
                    name = ids.get(int(tid))
                    if name in names:
                        yield name, int(stamp), bytes(data)
            except Exception as exc:  # apsw.CorruptError at the first missing page
                self.error = f"{path.name}: {type(exc).__name__}: {exc}"
                return
            finally:
                con.close()
                self._forget(path)


# ----------------------------------------------------------------------------------------------- ground truth


def _decode_32sc1(msg: Any) -> np.ndarray:
    h, w, step = int(msg.height), int(msg.width), int(msg.step)
    if h <= 0 or w <= 0 or step < 4 * w:
        raise MalformedImageError(f"32SC1 image {w}x{h} with step {step} is malformed")
    buf = np.asarray(msg.data, dtype=np.uint8).reshape(-1)
    if buf.size != h * step:
        raise MalformedImageError(f"32SC1 image data is {buf.size} bytes, expected {h * step}")
    rows = np.ascontiguousarray(buf.reshape(h, step)[:, : 4 * w])
    return rows.view(">i4" if msg.is_bigendian else "<i4").astype(np.int32)


def gt_label_image(msg: Any) -> np.ndarray:
    """Instance ids (int64 H×W, 0 = background) from a ground-truth Image/CompressedImage: mono8/mono16/16UC1/32SC1
    values are ids (32SC1 values <= 0 are background); colour images give one instance per colour, black = background
    (the id packs the RGB colour, so the same colour is the same object in every frame)."""
    if hasattr(msg, "format"):
        pixels, encoding = compressed_to_numpy(msg)
    elif msg.encoding == "32SC1":
        pixels, encoding = _decode_32sc1(msg), "32SC1"
    else:
        pixels, encoding = image_to_numpy(msg), msg.encoding
    if encoding in GT_ID_ENCODINGS:
        labels = pixels.astype(np.int64)
        labels[labels < 0] = 0
        return labels
    if encoding in GT_COLOUR_ENCODINGS:
        rgb = to_rgb8(pixels, encoding).astype(np.int64)
        return (rgb[..., 0] << 16) | (rgb[..., 1] << 8) | rgb[..., 2]
    raise UnsupportedEncodingError(f"ground truth must hold instance ids ({', '.join(GT_ID_ENCODINGS)}) or instance "
                                   f"colours ({', '.join(GT_COLOUR_ENCODINGS)}), got {encoding!r}")


class CocoGroundTruth:
    """COCO instance annotations keyed by the frame's header stamp: each ``images`` entry has ``stamp_ns`` (int) or
    ``stamp: {sec, nanosec}``. An annotation's ``track_id`` (or ``instance_id``) identifies the object across frames
    for the temporal metric; without one, ids are per annotation and that metric has no pairs."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        try:
            data = json.loads(self.path.read_text())
        except OSError as exc:
            raise OSError(f"{self.path}: cannot read ({exc.strerror})") from exc
        except json.JSONDecodeError as exc:
            raise ValueError(f"{self.path}: not valid JSON ({exc})") from exc
        if not isinstance(data, dict) or not isinstance(data.get("images"), list) or not isinstance(data.get("annotations"), list):
            raise ValueError(f"{self.path}: not a COCO instances file (needs 'images' and 'annotations' lists)")
        self.images: dict[int, dict] = {}
        by_id: dict[Any, int] = {}
        for img in data["images"]:
            try:
                stamp = int(img["stamp_ns"]) if "stamp_ns" in img else int(img["stamp"]["sec"]) * 10**9 + int(img["stamp"]["nanosec"])
                height, width = int(img["height"]), int(img["width"])
            except (KeyError, TypeError, ValueError):
                raise ValueError(f"{self.path}: image {img.get('id')!r} needs height, width and stamp_ns (or stamp "
                                 "{sec, nanosec}) to be matched to a frame") from None
            if stamp in self.images:
                raise ValueError(f"{self.path}: images {self.images[stamp]['id']!r} and {img.get('id')!r} have the same stamp {stamp}")
            self.images[stamp] = {"id": img.get("id"), "height": height, "width": width, "annotations": []}
            by_id[img.get("id")] = stamp
        for ann in data["annotations"]:
            stamp = by_id.get(ann.get("image_id"))
            if stamp is None:
                raise ValueError(f"{self.path}: annotation {ann.get('id')!r} refers to unknown image {ann.get('image_id')!r}")
            if "segmentation" not in ann:
                raise ValueError(f"{self.path}: annotation {ann.get('id')!r} has no segmentation")
            self.images[stamp]["annotations"].append(ann)
        self.unused = set(self.images)

    def take(self, stamp: int) -> M.GtFrame | None:
        img = self.images.get(stamp)
        if img is None:
            return None
        self.unused.discard(stamp)
        return M.GtFrame.from_coco(img["annotations"], img["height"], img["width"])


# ----------------------------------------------------------------------------------------------- frame sync


@dataclass
class _Pending:
    seq: int
    log_time: int
    stamp: int
    msg: Any


@dataclass
class _Released:
    seq: int
    log_time: int
    stamp: int
    msg: Any
    gt: Any
    depth: Any
    info: Any


class _Sync:
    """Pairs image frames with ground truth (exact header stamp), depth (nearest stamp within a tolerance) and camera
    info (the latest), waiting up to ``window`` ns of bag time. Frames leave in the order they were logged."""

    def __init__(self, want_gt: bool, want_depth: bool, want_info: bool, window: int, depth_tolerance: int) -> None:
        self.want_gt, self.want_depth, self.want_info = want_gt, want_depth, want_info
        self.window, self.tolerance = window, depth_tolerance
        self.pending: deque[_Pending] = deque()
        self.gt: dict[int, deque[tuple[int, Any]]] = {}
        self.depth: deque[tuple[int, int, Any]] = deque()
        self.info: Any = None
        self.now = -(2**63)
        self.seq = 0
        self.gt_messages = 0
        self.gt_unmatched: list[int] = []  # stamps

    def push(self, kind: str, log_time: int, msg: Any) -> list[_Released]:
        self.now = max(self.now, log_time)
        if kind == "image":
            self.pending.append(_Pending(self.seq, log_time, stamp_ns(msg.header), msg))
            self.seq += 1
        elif kind == "gt":
            self.gt.setdefault(stamp_ns(msg.header), deque()).append((log_time, msg))
            self.gt_messages += 1
        elif kind == "depth":
            self.depth.append((stamp_ns(msg.header), log_time, msg))
        elif kind == "info":
            self.info = msg
        return self._release(False)

    def flush(self) -> list[_Released]:
        return self._release(True)

    def _ready(self, f: _Pending) -> bool:
        if self.want_gt and f.stamp not in self.gt:
            return False
        if self.want_depth and not (any(abs(s - f.stamp) <= self.tolerance for s, _, _ in self.depth)
                                    and any(s >= f.stamp for s, _, _ in self.depth)):
            return False
        return not (self.want_info and self.info is None)

    def _release(self, final: bool) -> list[_Released]:
        out = []
        while self.pending:
            f = self.pending[0]
            if not (final or self._ready(f) or self.now - f.log_time > self.window):
                break
            self.pending.popleft()
            gt = None
            queue = self.gt.get(f.stamp)
            if queue:
                gt = queue.popleft()[1]
                if not queue:
                    del self.gt[f.stamp]
            near = [d for d in self.depth if abs(d[0] - f.stamp) <= self.tolerance]
            depth = min(near, key=lambda d: (abs(d[0] - f.stamp), d[0]))[2] if near else None
            out.append(_Released(f.seq, f.log_time, f.stamp, f.msg, gt, depth, self.info))
        horizon = self.now - 2 * self.window
        waiting = {f.stamp for f in self.pending}
        for stamp in list(self.gt):
            queue = self.gt[stamp]
            while queue and (final or (queue[0][0] < horizon and stamp not in waiting)):
                queue.popleft()
                self.gt_unmatched.append(stamp)
            if not queue:
                del self.gt[stamp]
        while self.depth and self.depth[0][1] < horizon:
            self.depth.popleft()
        return out


# ----------------------------------------------------------------------------------------------- inference


@dataclass
class _Frame:
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
class _Job:
    rgb: np.ndarray
    gt: M.GtFrame | None


@dataclass
class _Inferred:
    colour_map: ColourMap | None
    nonfinite: int
    timings: dict[str, float]
    prompts: list[M.PromptResult] | None
    prompt_ms: float
    error: str | None = None


def _prompt_eval(segmenter: Segmenter, colors: np.ndarray, gt: M.GtFrame, clicks: int) -> list[M.PromptResult]:
    tolerance = M.boundary_tolerance(gt.height, gt.width)
    out = []
    for i in range(len(gt)):
        if gt.crowd[i] or gt.areas[i] == 0:
            continue
        mask = gt.mask(i)
        ious, done, first = M.simulate_clicks(mask, lambda p, lab: segmenter.prompt(colors, p, lab), clicks)
        out.append(M.PromptResult(gt.ids[i], gt.areas[i], ious, M.boundary_f(first, mask, tolerance)[0], done))
    return out


def _infer(segmenter: Segmenter, jobs: Sequence[_Job], clicks: int) -> list[_Inferred]:
    out = []
    for job in jobs:
        try:
            timings: dict[str, float] = {}
            cm = segmenter.colour_maps([job.rgb], timings)[0]
            t0 = time.perf_counter()
            prompts = _prompt_eval(segmenter, cm.colors, job.gt, clicks) if clicks and job.gt is not None else None
            out.append(_Inferred(cm, int(cm.nonfinite), timings, prompts, (time.perf_counter() - t0) * 1e3))
        except Exception as exc:  # one frame the network or prompting fails on is skipped and counted, not fatal
            out.append(_Inferred(None, 0, {}, None, 0.0, f"{type(exc).__name__}: {exc}"))
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


def _worker_infer(config: SegmenterConfig, clicks: int, jobs: list[_Job]) -> list[_Inferred]:
    if "error" in _WORKER:
        raise RuntimeError(f"the worker could not load the model: {_WORKER['error']}")
    return _infer(_worker_segmenter(config), jobs, clicks)


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


class _Engine:
    def __init__(self, config: SegmenterConfig, workers: int, clicks: int) -> None:
        self.clicks = clicks
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

    def submit(self, jobs: list[_Job]) -> Future:
        if self.pool is not None:
            return self.pool.submit(_worker_infer, self.worker_config, self.clicks, jobs)
        future: Future = Future()
        future.set_result(_infer(self.segmenter, jobs, self.clicks))
        return future

    def close(self) -> None:
        if self.pool is not None:
            self.pool.shutdown(wait=True, cancel_futures=True)
            self.pool = None
        if hasattr(self, "segmenter"):
            self.segmenter.close()


# ----------------------------------------------------------------------------------------------- output bag


def segment_array_msg(store: Any, header: Any, result: SegmentationResult, missing_flags: int = DEPTH_NOT_PROVIDED) -> Any:
    """seg_msgs/SegmentArray (rosbags type) for one frame's result, header copied as given; the same fields as the
    node's ``ros_convert.segment_array`` (which builds rclpy messages): segments without geometry get
    ``missing_flags`` (DEPTH_NOT_PROVIDED | DEPTH_NO_CAMERA_INFO for what the frame lacked)."""
    t = store.types
    segment_t, array_t = t[SEGMENT], t[SEGMENT_ARRAY]
    roi_t, point_t, pose_t = t["sensor_msgs/msg/RegionOfInterest"], t["geometry_msgs/msg/Point"], t["geometry_msgs/msg/Pose"]
    quat_t, vec_t = t["geometry_msgs/msg/Quaternion"], t["geometry_msgs/msg/Vector3"]

    def point(v: Any) -> Any:
        return point_t(x=float(v[0]), y=float(v[1]), z=float(v[2]))

    def vector(v: Any) -> Any:
        return vec_t(x=float(v[0]), y=float(v[1]), z=float(v[2]))

    def pose(position: Any, rotation: Any) -> Any:
        x, y, z, w = rotation_to_quaternion(np.asarray(rotation))
        return pose_t(position=point(position), orientation=quat_t(x=float(x), y=float(y), z=float(z), w=float(w)))

    zero, eye = np.zeros(3), np.eye(3)
    segments = []
    for s in result.segments:
        inst, shape, g = s.instance, s.shape, s.geometry
        x, y, w, h = (int(v) for v in inst.bbox)
        if g is not None:
            has_3d, flags, points = bool(g.valid), int(g.flags), int(g.num_points)
            centroid, box, extents, normal = point(g.centroid), pose(g.box_center, g.box_rotation), vector(g.extents), vector(g.normal)
            grasp, width = pose(g.grasp_position, g.grasp_rotation), float(g.grasp_width)
        else:
            has_3d, flags, points = False, int(missing_flags), 0
            centroid, box, extents, normal, grasp, width = point(zero), pose(zero, eye), vector(zero), vector(zero), pose(zero, eye), 0.0
        segments.append(segment_t(
            id=int(inst.id), score=float(inst.score), area=int(inst.area), age=int(s.age),
            bbox=roi_t(x_offset=x, y_offset=y, height=h, width=w, do_rectify=False),
            centroid_x=float(shape.centroid_x), centroid_y=float(shape.centroid_y), orientation=float(shape.orientation),
            major_length=float(shape.major_length), minor_length=float(shape.minor_length),
            has_3d=has_3d, depth_flags=flags, num_depth_points=points, centroid_3d=centroid, box_pose=box,
            extents=extents, normal=normal, grasp_pose=grasp, grasp_width=width))
    height, width_ = result.labels.shape
    return array_t(header=header, height=int(height), width=int(width_), segments=segments)


class _OutputBag:
    def __init__(self, path: Path, storage: str, store: Any, namespace: str, colors: bool, overlays: bool) -> None:
        self.path, self.storage, self.store = path, storage, store
        self.writer = open_writer(path, storage)
        ns = namespace.rstrip("/")
        self.topics = {"labels": (f"{ns}/labels", IMAGE), "segments": (f"{ns}/segments", SEGMENT_ARRAY)}
        if colors:
            self.topics["colors"] = (f"{ns}/colors", IMAGE)
        if overlays:
            self.topics["overlay"] = (f"{ns}/overlay", IMAGE)
        self.conns = {k: self.writer.add_connection(topic, msgtype, typestore=store) for k, (topic, msgtype) in self.topics.items()}
        self.count = 0

    def write(self, frame: _Frame, result: SegmentationResult) -> None:
        image_t = self.store.types[IMAGE]
        missing = (DEPTH_NOT_PROVIDED if frame.depth is None else 0) | (DEPTH_NO_CAMERA_INFO if frame.camera_info is None else 0)
        msgs = {"labels": numpy_to_image(result.labels, "mono16", header=frame.header, msg_type=image_t),
                "segments": segment_array_msg(self.store, frame.header, result, missing)}
        if "colors" in self.conns:
            rgb = np.clip(result.colors + 0.5, 0, 255).astype(np.uint8)
            msgs["colors"] = numpy_to_image(rgb, "rgb8", header=frame.header, msg_type=image_t)
        if "overlay" in self.conns:
            msgs["overlay"] = numpy_to_image(overlay(frame.rgb, result.labels), "rgb8", header=frame.header, msg_type=image_t)
        for key, msg in msgs.items():
            self.writer.write(self.conns[key], frame.log_time, self.store.serialize_cdr(msg, self.topics[key][1]))
        self.count += 1

    def close(self) -> None:
        self.writer.close()


# ----------------------------------------------------------------------------------------------- evaluation


def _thumbnail(frame: _Frame, labels: np.ndarray, width: int = 256) -> bytes:
    """PNG: the segments on the frame and, with ground truth, the ground truth beside it; drawn at thumbnail size
    (the label maps are shrunk with nearest-neighbour, so ids stay ids)."""
    h, w = frame.rgb.shape[:2]
    size = (min(width, w), max(1, round(h * min(width, w) / w)))
    rgb = cv2.resize(frame.rgb, size, interpolation=cv2.INTER_AREA)
    panels = [overlay(rgb, cv2.resize(labels, size, interpolation=cv2.INTER_NEAREST))]
    if frame.gt is not None:
        gt = np.zeros(size[::-1], np.uint16)
        for i in range(len(frame.gt)):
            gt[cv2.resize(frame.gt.mask(i).view(np.uint8), size, interpolation=cv2.INTER_NEAREST) > 0] = i + 1
        panels.append(overlay(rgb, gt))
    gap = np.full((size[1], 4, 3), 255, np.uint8)
    img = np.concatenate([x for p in panels for x in (p, gap)][:-1], axis=1)
    ok, png = cv2.imencode(".png", cv2.cvtColor(img, cv2.COLOR_RGB2BGR))
    return png.tobytes() if ok else b""


class _Evaluation:
    def __init__(self, clicks: int, max_dets: Sequence[int], thumbnails: int, sample_every: int) -> None:
        self.clicks = clicks
        self.coco = M.CocoEvaluator(max_dets)
        self.ids = M.IdConsistency()
        self.prompts: list[M.PromptResult] = []
        self.best_ious: list[float] = []
        self.boundary: list[float] = []  # per GT instance, 0 when unmatched
        self.boundary_matched: list[float] = []
        self.latency: dict[str, list[float]] = {}
        self.prompt_ms: list[float] = []
        self.records: list[dict[str, Any]] = []
        self.segment_counts: list[int] = []
        self.nonfinite_frames = 0
        self.evaluated = 0
        self.n_thumbs, self.sample_every = thumbnails, max(1, sample_every)
        self.best: list[tuple[float, int, bytes]] = []  # min-heap of the best (score, -index)
        self.worst: list[tuple[float, int, bytes]] = []  # min-heap of (-score, -index): the worst
        self.samples: list[tuple[int, bytes]] = []

    def add(self, frame: _Frame, result: SegmentationResult, inferred: _Inferred, timings: dict[str, float]) -> None:
        ids = [s.id for s in result.segments]
        rec: dict[str, Any] = {"frame": frame.index, "seq": frame.seq, "stamp_ns": frame.stamp, "log_time_ns": frame.log_time,
                               "segments": len(ids), "nonfinite_pixels": inferred.nonfinite,
                               "timings_ms": {k: round(v, 3) for k, v in timings.items()}}
        for k, v in timings.items():
            self.latency.setdefault(k, []).append(v)
        self.segment_counts.append(len(ids))
        self.nonfinite_frames += inferred.nonfinite > 0
        score = None
        gt = frame.gt
        if gt is not None:
            self.evaluated += 1
            dt_rles = M.label_rles(result.labels, ids)
            self.coco.add(frame.index, gt, dt_rles, [s.instance.score for s in result.segments])
            iou = M.iou_matrix(gt, dt_rles)
            valid = ~np.asarray(gt.crowd, bool)
            matches = M.match_instances(iou, valid_rows=valid)
            tolerance = M.boundary_tolerance(gt.height, gt.width)
            matched = {r: c for r, c, _ in matches}
            best = []
            for r in np.flatnonzero(valid):
                best.append(float(iou[r].max()) if iou.shape[1] else 0.0)
                if r in matched:
                    f = M.boundary_f(result.labels == ids[matched[r]], gt.mask(int(r)), tolerance)[0]
                    self.boundary_matched.append(f)
                else:
                    f = 0.0
                self.boundary.append(f)
            self.best_ious.extend(best)
            switches = self.ids.update([(gt.ids[r], ids[c], v) for r, c, v in matches], int(valid.sum()), len(ids))
            rec.update(gt_instances=int(valid.sum()), matched=len(matches), id_switches=switches,
                       mean_best_iou=round(float(np.mean(best)), 6) if best else None)
            score = rec["mean_best_iou"]
            if inferred.prompts is not None:
                self.prompts.extend(inferred.prompts)
                self.prompt_ms.append(inferred.prompt_ms)
                if inferred.prompts:
                    ious = np.array([p.ious for p in inferred.prompts])
                    rec["miou_1"] = round(float(ious[:, 0].mean()), 6)
                    rec[f"miou_{self.clicks}"] = round(float(ious[:, -1].mean()), 6)
                    score = rec["miou_1"]
        self.records.append(rec)
        self._keep_thumbnail(frame, result, score)

    def _keep_thumbnail(self, frame: _Frame, result: SegmentationResult, score: float | None) -> None:
        if not self.n_thumbs:
            return
        if score is None:
            if frame.gt is None and frame.index % self.sample_every == 0 and len(self.samples) < 2 * self.n_thumbs:
                self.samples.append((frame.index, _thumbnail(frame, result.labels)))
            return
        # Ties go to the earlier frame in both lists, so a run of equal scores does not redraw a thumbnail per frame.
        for heap, key in ((self.best, (score, -frame.index)), (self.worst, (-score, -frame.index))):
            if len(heap) < self.n_thumbs or key > heap[0][:2]:
                item = (*key, _thumbnail(frame, result.labels))
                heapq.heappush(heap, item) if len(heap) < self.n_thumbs else heapq.heapreplace(heap, item)

    def thumbnails(self) -> list[tuple[str, int, float | None, bytes]]:
        """(kind, frame index, score, png) for the report: best first, then worst (worst first), or samples."""
        out = [("best", -i, s, png) for s, i, png in sorted(self.best, reverse=True)]
        out += [("worst", -i, -s, png) for s, i, png in sorted(self.worst, reverse=True)]
        out += [("sample", i, None, png) for i, png in self.samples]
        return out

    def summary(self, latency_stages: Sequence[str]) -> dict[str, Any]:
        out: dict[str, Any] = {}
        lat = {k: M.summarise(v) for k, v in self.latency.items()}
        ordered = {k: lat[k] for k in (*latency_stages, *sorted(set(lat) - set(latency_stages))) if k in lat}
        out["latency_ms"] = ordered
        if self.prompt_ms:
            out["latency_ms_evaluation_only"] = {"prompt_clicks_per_frame": M.summarise(self.prompt_ms)}
        out["segments_per_frame"] = M.summarise(self.segment_counts, 2)
        if not self.evaluated:
            return out
        out["point_prompt"] = {"clicks": self.clicks, **M.prompt_summary(self.prompts, self.clicks)} if self.clicks else None
        coco = self.coco.evaluate()
        out["segment_everything"] = {
            **coco,
            "mean_best_iou": round(float(np.mean(self.best_ious)), 6) if self.best_ious else None,
            "boundary_f": round(float(np.mean(self.boundary)), 6) if self.boundary else None,
            "boundary_f_matched": round(float(np.mean(self.boundary_matched)), 6) if self.boundary_matched else None,
        }
        out["temporal"] = self.ids.result()
        return out


# ----------------------------------------------------------------------------------------------- the run


class _Progress:
    def __init__(self, total: int | None, every: float = 2.0) -> None:
        self.total, self.every = total, every
        self.start = self.last = time.perf_counter()
        self.done = 0

    def tick(self, final: bool = False) -> None:
        if not final:
            self.done += 1
        now = time.perf_counter()
        if not final and now - self.last < self.every:
            return
        self.last = now
        elapsed = max(now - self.start, 1e-9)
        fps = self.done / elapsed
        of = f"/{self.total}" if self.total else ""
        eta = f", ETA {(self.total - self.done) / fps:.0f} s" if self.total and fps > 0 and not final and self.total > self.done else ""
        print(f"bag_eval: {self.done}{of} frames, {fps:.2f} frames/s{eta}", file=sys.stderr, flush=True)

    @property
    def fps(self) -> float:
        return self.done / max(time.perf_counter() - self.start, 1e-9)


class _Run:
    def __init__(self, args: argparse.Namespace, source: BagSource, store: Any, topics: dict[str, str | None],
                 coco: CocoGroundTruth | None, engine: _Engine, writer: _OutputBag | None) -> None:
        self.args, self.source, self.store, self.topics, self.coco = args, source, store, topics, coco
        self.engine, self.writer = engine, writer
        self.skipped: Counter[str] = Counter()
        self.examples: dict[str, list[str]] = {}
        self.gt_rejected: Counter[str] = Counter()
        self.warnings: Counter[str] = Counter()
        self.without_gt = 0
        self.size: tuple[int, int] | None = None
        self.index = 0
        self.image_messages = 0
        self.stopped_early = False
        total = source.expected_count(topics["image"]) if topics["image"] else None
        if args.max_frames:
            total = min(total, args.max_frames) if total is not None else args.max_frames
        self.progress = _Progress(total)
        self.evaluation = _Evaluation(args.clicks, args.max_dets, args.thumbnails, max(1, (total or 1) // max(1, args.thumbnails)))
        self.sync: _Sync | None = None

    def _note(self, counter: Counter[str], reason: str, detail: str) -> None:
        counter[reason] += 1
        examples = self.examples.setdefault(reason, [])
        if len(examples) < 5:
            examples.append(detail)

    def _frames(self) -> Iterator[_Frame]:
        kinds = {self.topics[k]: k for k in ("image", "gt", "depth", "info") if self.topics.get(k)}
        msgtypes = {t: self.source.topics[t].msgtype for t in kinds}
        a = self.args
        self.sync = sync = _Sync(bool(self.topics.get("gt")), bool(self.topics.get("depth")), bool(self.topics.get("info")),
                                 int(a.sync_window * 1e9), int(a.depth_tolerance * 1e9))
        for topic, log_time, raw in self.source.messages(kinds):
            kind = kinds[topic]
            if kind == "image":
                self.image_messages += 1
            try:
                msg = self.store.deserialize_cdr(raw, msgtypes[topic])
            except Exception as exc:  # a corrupt message in a readable bag: rosbags raises several types
                reason = "unreadable_message" if kind == "image" else f"unreadable_{kind}_message"
                self._note(self.skipped if kind == "image" else self.warnings, reason, f"{topic} at {log_time}: {exc}")
                continue
            for released in sync.push(kind, log_time, msg):
                frame = self._prepare(released)
                if frame is not None:
                    yield frame
                if a.max_frames and self.index >= a.max_frames:
                    self.stopped_early = True
                    return
        for released in sync.flush():
            frame = self._prepare(released)
            if frame is not None:
                yield frame
            if a.max_frames and self.index >= a.max_frames:
                self.stopped_early = True
                return

    def _prepare(self, r: _Released) -> _Frame | None:
        where = f"frame {r.seq} (stamp {r.stamp})"
        if self.coco is not None:  # its ground truth has a frame, even if the frame is skipped below
            self.coco.unused.discard(r.stamp)
        try:
            rgb = decode_to_rgb8(r.msg)
        except ImageCodecError as exc:
            self._note(self.skipped, "decode_error", f"{where}: {exc}")
            return None
        hw = rgb.shape[:2]
        if self.size is None:
            self.size = hw
        elif hw != self.size and not self.args.allow_mixed_resolution:
            self._note(self.skipped, "resolution_mismatch",
                       f"{where}: {hw[1]}x{hw[0]}, the first frame was {self.size[1]}x{self.size[0]}")
            return None
        gt: M.GtFrame | None = None
        if self.topics.get("gt"):
            if r.gt is None:
                self.without_gt += 1
            else:
                try:
                    labels = gt_label_image(r.gt)
                    if labels.shape != hw:
                        self._note(self.gt_rejected, "size_mismatch", f"{where}: ground truth {labels.shape[1]}x{labels.shape[0]}, frame {hw[1]}x{hw[0]}")
                    else:
                        gt = M.GtFrame.from_label_image(labels)
                except ImageCodecError as exc:
                    self._note(self.gt_rejected, "decode_error", f"{where}: {exc}")
        elif self.coco is not None:
            try:
                gt = self.coco.take(r.stamp)
                if gt is None:
                    self.without_gt += 1
            except (ValueError, KeyError, TypeError) as exc:
                self._note(self.gt_rejected, "bad_annotation", f"{where}: {exc}")
                gt = None
            if gt is None:
                pass
            elif (gt.height, gt.width) != hw:
                self._note(self.gt_rejected, "size_mismatch", f"{where}: COCO image {gt.width}x{gt.height}, frame {hw[1]}x{hw[0]}")
                gt = None
        depth = None
        if self.topics.get("depth"):
            if r.depth is None:
                self._note(self.warnings, "frames_without_depth", where)
            else:
                try:
                    depth = np.array(decode_depth(r.depth), dtype=np.float32)
                except ImageCodecError as exc:
                    self._note(self.warnings, "depth_decode_error", f"{where}: {exc}")
        info = None
        if self.topics.get("info"):
            if r.info is None:
                self._note(self.warnings, "frames_without_camera_info", where)
            else:
                try:
                    info = CameraIntrinsics.from_camera_info(r.info)
                except ValueError as exc:
                    self._note(self.warnings, "camera_info_invalid", f"{where}: {exc}")
        frame = _Frame(self.index, r.seq, r.log_time, r.stamp, r.msg.header, np.ascontiguousarray(rgb), depth, info, gt)
        self.index += 1
        return frame

    def process(self) -> None:
        chunk_size = self.args.chunk_size
        max_inflight = 2 * self.engine.workers
        inflight: deque[tuple[list[_Frame], Future]] = deque()
        chunk: list[_Frame] = []

        def submit() -> None:
            jobs = [_Job(f.rgb, f.gt) for f in chunk]
            inflight.append((list(chunk), self.engine.submit(jobs)))
            chunk.clear()

        for frame in self._frames():
            chunk.append(frame)
            if len(chunk) >= chunk_size:
                submit()
            while inflight and (len(inflight) > max_inflight or inflight[0][1].done()):
                self._finish(*inflight.popleft())
        if chunk:
            submit()
        while inflight:
            self._finish(*inflight.popleft())
        self.progress.tick(final=True)

    def _finish(self, frames: list[_Frame], future: Future) -> None:
        try:
            results = future.result()
        except RuntimeError as exc:  # a worker that could not load the model (BrokenProcessPool is handled by main)
            if isinstance(exc, BrokenProcessPool):
                raise
            raise BackendError(str(exc)) from exc
        for frame, inferred in zip(frames, results):
            if inferred.error is not None:
                self._note(self.skipped, "inference_error", f"frame {frame.seq} (stamp {frame.stamp}): {inferred.error}")
                continue
            assert inferred.colour_map is not None
            result = self.engine.segmenter.segment_colors(inferred.colour_map, frame.depth, frame.camera_info)
            result.nonfinite_pixels = inferred.nonfinite
            timings = {**inferred.timings, **result.timings_ms}
            timings["total"] = sum(timings.get(k, 0.0) for k in STAGES)
            self.evaluation.add(frame, result, inferred, timings)
            if self.writer is not None:
                self.writer.write(frame, result)
            self.progress.tick()


# ----------------------------------------------------------------------------------------------- CLI


def _fail(message: str) -> int:
    print(f"bag_eval: error: {message}", file=sys.stderr)
    return EXIT_USAGE


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {text}")
    return value


def _non_negative(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {text}")
    return value


def _seconds(text: str) -> float:
    value = float(text)
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"must be >= 0 seconds, got {text}")
    return value


def _max_dets(text: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected three comma-separated integers like 1,10,100, got {text!r}") from None
    if len(values) != 3 or values != sorted(values) or values[0] < 1:
        raise argparse.ArgumentTypeError(f"expected three increasing positive integers like 1,10,100, got {text!r}")
    return values


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="bag_eval",
        description="Run the Segmenter over a ROS 2 bag (sqlite3 or MCAP; no ROS installation needed), score it against "
                    "ground truth, and write metrics.json, report.html and an output bag with the node's topics.",
        epilog="Exit codes: 0 all read and used; 1 done, but frames were skipped, ground truth rejected or part of the "
               "bag unreadable (counted in metrics.json); 2 nothing done (bad arguments, model, config or bag).")
    p.add_argument("bag", type=Path, metavar="BAG", help="bag folder (metadata.yaml + .db3/.mcap) or a bare .db3/.mcap file")
    p.add_argument("--model", required=True, type=Path, help="checkpoint folder (gen2seg SD or MAE) or .onnx file")
    p.add_argument("--output", required=True, type=Path, help="folder for metrics.json, report.html, frames.jsonl and bag/")
    g = p.add_argument_group("topics")
    g.add_argument("--image-topic", help="Image or CompressedImage topic (default: the bag's only image topic not named "
                                         "like depth, ground truth or labels)")
    g.add_argument("--gt-topic", help="ground-truth instance label images: mono16/16UC1/32SC1/mono8 ids or rgb8/bgr8 colours, "
                                      "matched to frames by header stamp")
    g.add_argument("--gt-coco", type=Path, help="ground truth as COCO instances JSON whose images carry stamp_ns")
    g.add_argument("--depth-topic", help="depth Image (32FC1 m or 16UC1 mm) for 3D segment geometry")
    g.add_argument("--camera-info-topic", help="CameraInfo for 3D segment geometry")
    g.add_argument("--sync-window", type=_seconds, default=1.0, help="bag seconds a frame waits for its ground truth and depth (default 1)")
    g.add_argument("--depth-tolerance", type=_seconds, default=0.02, help="max depth/image stamp difference, s (default 0.02)")
    m = p.add_argument_group("model")
    m.add_argument("--config", type=Path, help="YAML config (sections model, backend, instances, prompting, depth, tracking)")
    m.add_argument("--set", action="append", default=[], metavar="NAME=VALUE",
                   help="override one config value by dotted name, e.g. --set tracking.enabled=false (repeatable)")
    m.add_argument("--reference-mode", action="store_true", help="the official gen2seg pipeline instead of robot mode")
    m.add_argument("--backend", choices=("auto", "torch", "onnxruntime"))
    m.add_argument("--device", help="cpu, cuda or cuda:N")
    m.add_argument("--precision", choices=("fp32", "fp16", "bf16"))
    m.add_argument("--threads", type=_non_negative, help="backend threads per process (default: cpu_count / workers)")
    m.add_argument("--processing-resolution", type=_non_negative, help="SD: long edge fed to the network (0 = input size)")
    e = p.add_argument_group("evaluation")
    e.add_argument("--clicks", type=_non_negative, default=5, help="point-prompt clicks per object, mIoU reported for 1..k (default 5; 0 = off)")
    e.add_argument("--max-dets", type=_max_dets, default=[1, 10, 100], help="COCO max detections per frame (default 1,10,100)")
    e.add_argument("--thumbnails", type=_non_negative, default=4, help="best and worst frames shown in the report (default 4)")
    e.add_argument("--max-frames", type=_non_negative, default=0, help="stop after this many frames (default: all)")
    e.add_argument("--allow-mixed-resolution", action="store_true",
                   help="process frames whose size differs from the first frame's (default: skip and count them)")
    r = p.add_argument_group("run and output")
    r.add_argument("--workers", type=_positive, default=1, help="processes running the network (default 1); results are identical for any N")
    r.add_argument("--chunk-size", type=_positive, default=4, help="consecutive frames per worker task (default 4)")
    r.add_argument("--storage", choices=STORAGES, help="output bag storage (default: the input's)")
    r.add_argument("--namespace", default=DEFAULT_NAMESPACE, help=f"output topic namespace, the node's name (default {DEFAULT_NAMESPACE})")
    r.add_argument("--colors", action="store_true", help="also write <ns>/colors (rgb8 colour map)")
    r.add_argument("--overlay", action="store_true", help="also write <ns>/overlay (rgb8 segments on the image)")
    r.add_argument("--no-bag", action="store_true", help="do not write the output bag")
    r.add_argument("--overwrite", action="store_true", help="replace an output bag left by an earlier run")
    return p


def _build_config(args: argparse.Namespace) -> SegmenterConfig:
    overrides: dict[str, Any] = {"model.path": str(args.model)}
    if args.reference_mode:
        overrides["model.mode"] = "reference"
    for name, value in (("backend.name", args.backend), ("backend.device", args.device), ("backend.precision", args.precision),
                        ("backend.threads", args.threads), ("model.processing_resolution", args.processing_resolution)):
        if value is not None:
            overrides[name] = value
    for item in args.set:
        name, sep, text = item.partition("=")
        if not sep or not name.strip():
            raise ConfigError(f"--set {item!r}: expected NAME=VALUE, e.g. tracking.enabled=false")
        try:
            overrides[name.strip()] = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise ConfigError(f"--set {item!r}: value is not valid YAML ({exc})") from exc
    if args.config is not None:
        return load_config(args.config, overrides)
    return config_from_dict(unflatten({**flatten(SegmenterConfig()), **overrides}))


def _topic_list(source: BagSource) -> str:
    return "; ".join(f"{t.name} ({t.msgtype}, {t.count if t.count is not None else '?'} messages)"
                     for t in sorted(source.topics.values(), key=lambda t: t.name)) or "none"


_NOT_CAMERA = re.compile(r"depth|(^|[/_])gt([/_]|$)|label|mask|ground_?truth|segment|overlay|colors")


def _resolve_topics(source: BagSource, args: argparse.Namespace) -> dict[str, str | None]:
    def check(name: str | None, allowed: Sequence[str], flag: str) -> str | None:
        if name is None:
            return None
        if name not in source.topics:
            if source.recovered:
                listed = ", ".join(sorted(source.expected)) or "unknown"
                raise BagReadError(f"{flag} {name}: not in the readable part of the damaged bag {source.path} "
                                   f"({source.open_error}; reading stops at: {source.read_error}). Readable topics: "
                                   f"{_topic_list(source)}. Topics its metadata.yaml lists: {listed}")
            raise BagReadError(f"{flag} {name}: no such topic in {source.path}. Topics: {_topic_list(source)}")
        msgtype = source.topics[name].msgtype
        if msgtype not in allowed:
            raise BagReadError(f"{flag} {name} has message type {msgtype}; it needs {' or '.join(allowed)}")
        return name

    topics = {"gt": check(args.gt_topic, IMAGE_TYPES, "--gt-topic"), "depth": check(args.depth_topic, IMAGE_TYPES, "--depth-topic"),
              "info": check(args.camera_info_topic, (CAMERA_INFO,), "--camera-info-topic")}
    if args.image_topic:
        topics["image"] = check(args.image_topic, IMAGE_TYPES, "--image-topic")
    else:
        taken = {t for t in topics.values() if t}
        candidates = [t.name for t in source.topics.values() if t.msgtype in IMAGE_TYPES and t.name not in taken]
        if len(candidates) > 1:  # leave out what is named like depth, ground truth or labels
            camera = [c for c in candidates if not _NOT_CAMERA.search(c.lower())]
            candidates = camera if len(camera) == 1 else candidates
        if len(candidates) != 1:
            found = ", ".join(sorted(candidates)) if candidates else "none"
            raise BagReadError(f"{source.path}: cannot tell which topic holds the camera frames (image topics: {found}); "
                               f"choose one with --image-topic. Topics: {_topic_list(source)}")
        topics["image"] = candidates[0]
        if not args.image_topic and len(source.topics) > 1:
            print(f"bag_eval: camera frames from {topics['image']} (choose another with --image-topic)", file=sys.stderr)
    if topics["image"] in (topics["gt"], topics["depth"]):
        raise BagReadError(f"--image-topic {topics['image']} is also given as ground truth or depth")
    return topics


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.gt_topic and args.gt_coco:
        return _fail("give ground truth either as --gt-topic or as --gt-coco, not both")
    try:
        config = _build_config(args)
    except ConfigError as exc:
        return _fail(str(exc))

    out: Path = args.output
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        return _fail(f"cannot create output folder {out}: {exc.strerror}")
    if not os.access(out, os.W_OK | os.X_OK):
        return _fail(f"output folder {out} is not writable")
    bag_out = out / "bag"
    if not args.no_bag and bag_out.exists() and not args.overwrite:
        return _fail(f"{bag_out} exists (an earlier run?); pass --overwrite to replace it, or choose another --output")

    source = None
    try:
        store = make_typestore()
        source = BagSource(args.bag)
        topics = _resolve_topics(source, args)
        coco = CocoGroundTruth(args.gt_coco) if args.gt_coco else None
    except (BagReadError, ImportError, OSError, ValueError) as exc:
        if source is not None:
            source.close()
        return _fail(str(exc))
    if source.recovered:
        print(f"bag_eval: warning: {args.bag} is damaged ({source.open_error}); reading what is intact "
              f"(up to: {source.read_error})", file=sys.stderr)

    t0 = time.perf_counter()
    try:
        engine = _Engine(config, args.workers, args.clicks)
    except (ConfigError, CheckpointError, BackendError, ImportError, ValueError, OSError, BrokenProcessPool) as exc:
        source.close()
        return _fail(str(exc) if not isinstance(exc, BrokenProcessPool) else
                     f"a worker process died while loading the model ({exc}); run with --workers 1 to see why")
    engine.description = engine.segmenter.backend.describe()
    print(f"bag_eval: loaded {args.model} ({engine.segmenter.spec.family}, {engine.description}, "
          f"mode {config.model.mode}) in {time.perf_counter() - t0:.1f} s", file=sys.stderr)

    storage = args.storage or source.storage
    writer = None
    try:
        if not args.no_bag and bag_out.exists():
            shutil.rmtree(bag_out)  # --overwrite, checked above
        writer = None if args.no_bag else _OutputBag(bag_out, storage, store, args.namespace, args.colors, args.overlay)
        run = _Run(args, source, store, topics, coco, engine, writer)
        t_run = time.perf_counter()
        run.process()
        wall = time.perf_counter() - t_run
    except BrokenProcessPool as exc:
        return _fail(f"a worker process died ({exc}); run with --workers 1 to see the error")
    except BackendError as exc:
        return _fail(str(exc))
    except KeyboardInterrupt:
        print("bag_eval: interrupted", file=sys.stderr)
        return 130
    finally:
        engine.close()
        if writer is not None:
            writer.close()
        source.close()

    metrics = _metrics(args, config, source, topics, engine, run, storage, wall)
    problems = _problems(metrics)
    written = _write_outputs(out, metrics, run, writer)
    _print_summary(metrics, problems, written)
    return EXIT_PARTIAL if problems else EXIT_OK


def _metrics(args: argparse.Namespace, config: SegmenterConfig, source: BagSource, topics: dict[str, str | None],
             engine: _Engine, run: _Run, storage: str, wall: float) -> dict[str, Any]:
    ev = run.evaluation
    image_topic = topics["image"]
    assert image_topic is not None
    expected = source.expected_count(image_topic)
    unreadable = max(0, expected - run.image_messages) if expected is not None and source.read_error and not run.stopped_early else 0
    skipped = dict(run.skipped)
    if unreadable:
        skipped["unreadable_bag_tail"] = unreadable
    gt_source = f"topic {topics['gt']}" if topics["gt"] else f"coco {args.gt_coco}" if args.gt_coco else None
    gt_unmatched = list(run.sync.gt_unmatched) if run.sync and topics["gt"] else []
    if run.coco is not None and not run.stopped_early:
        gt_unmatched += sorted(run.coco.unused)
    processed = len(ev.records)
    summary = ev.summary(STAGES)
    metrics: dict[str, Any] = {
        "tool": "bag_eval",
        "format_version": 1,
        "bag": {"path": str(args.bag), "storage": source.storage, "recovered": source.recovered,
                "open_error": source.open_error, "read_error": source.read_error,
                "topics": topics, "image_messages_expected": expected, "image_messages_read": run.image_messages},
        "model": {"path": str(args.model), "family": engine.segmenter.spec.family, "backend": engine.description,
                  "mode": config.model.mode},
        "config": config_to_dict(config),
        "frames": {"processed": processed, "evaluated": ev.evaluated, "without_gt": run.without_gt if gt_source else None,
                   "skipped": skipped, "skipped_total": sum(skipped.values()), "stopped_at_max_frames": run.stopped_early,
                   "nonfinite_frames": ev.nonfinite_frames, "warnings": dict(run.warnings),
                   "examples": run.examples},
        "ground_truth": None if gt_source is None else {
            "source": gt_source,
            "frames": run.sync.gt_messages if topics["gt"] and run.sync else len(run.coco.images) if run.coco else None,
            "frames_matched": ev.evaluated + sum(run.gt_rejected.values()),
            "without_frame": len(gt_unmatched), "without_frame_stamps": gt_unmatched[:20],
            "rejected": dict(run.gt_rejected), "instances": ev.ids.gt_instances},
        "point_prompt": summary.get("point_prompt"),
        "segment_everything": summary.get("segment_everything"),
        "temporal": summary.get("temporal"),
        "latency_ms": summary["latency_ms"],
        "latency_ms_evaluation_only": summary.get("latency_ms_evaluation_only"),
        "segments_per_frame": summary["segments_per_frame"],
        "throughput": {"wall_s": round(wall, 3), "frames_per_s": round(processed / wall, 3) if wall > 0 else None,
                       "workers": args.workers, "chunk_size": args.chunk_size},
        "output_bag": None if run.writer is None else {
            "path": str(run.writer.path), "storage": storage, "messages_per_topic": run.writer.count,
            "topics": {k: {"name": n, "type": t} for k, (n, t) in run.writer.topics.items()}},
        "definitions": {
            "point_prompt": "SAM protocol (docs/design.md, Evaluation protocol): per non-crowd GT instance, click 1 at the maximum of the mask's "
                            "distance transform (1 px zero border), each next click at the distance-transform maximum of the "
                            "deeper error region (false negatives -> positive, false positives -> negative; positive only if "
                            "strictly deeper), all clicks given to Segmenter.prompt; miou[k] = mean IoU after k clicks; "
                            "boundary_f of the 1-click mask.",
            "segment_everything": "pycocotools COCOeval iouType=segm, one category, scores = Segment.score; AP = IoU .50:.95; "
                                  "size buckets small < 32^2, medium < 96^2 px; mean_best_iou = mean over GT of the best IoU "
                                  "with any segment; boundary_f = DAVIS F (tolerance ceil(0.008 x diagonal) px) of each GT "
                                  "with its IoU >= 0.5 match, 0 when unmatched; boundary_f_matched over matches only.",
            "temporal": M.IdConsistency.DEFINITION,
            "latency_ms": "per frame and stage as the node runs it: preprocess/network/postprocess (worker), "
                          "instances/geometry/tracking (Segmenter.segment_colors); total = their sum.",
            "skipped": "frames not processed, by reason; unreadable_bag_tail = image messages metadata.yaml lists but the "
                       "damaged bag no longer holds.",
        },
    }
    return metrics


def _problems(metrics: dict[str, Any]) -> list[str]:
    problems = []
    frames = metrics["frames"]
    for reason, n in sorted(frames["skipped"].items()):
        problems.append(f"{n} frame(s) skipped: {reason}")
    if metrics["bag"]["read_error"]:
        problems.append(f"bag partly unreadable: {metrics['bag']['read_error']}")
    gt = metrics["ground_truth"]
    if gt:
        if gt["without_frame"]:
            problems.append(f"{gt['without_frame']} ground-truth frame(s) match no image frame")
        for reason, n in sorted(gt["rejected"].items()):
            problems.append(f"{n} ground-truth frame(s) rejected: {reason}")
    return problems


def _write_outputs(out: Path, metrics: dict[str, Any], run: _Run, writer: _OutputBag | None) -> list[str]:
    from seg_node.evaluation.report import write_report

    written = []
    (out / "metrics.json").write_text(json.dumps(metrics, indent=1))
    written.append(f"{out / 'metrics.json'}")
    with open(out / "frames.jsonl", "w") as f:
        for rec in run.evaluation.records:
            f.write(json.dumps(rec) + "\n")
    written.append(f"{out / 'frames.jsonl'} ({len(run.evaluation.records)} frames)")
    prompts = run.evaluation.prompts
    report, thumbs = write_report(out, metrics, run.evaluation.records, [p.ious for p in prompts],
                                  [p.bucket for p in prompts], run.evaluation.best_ious, run.evaluation.thumbnails())
    written.append(f"{report}" + (f" (+ {thumbs} thumbnails in {out / 'thumbnails'})" if thumbs else ""))
    if writer is not None:
        names = ", ".join(n for n, _ in writer.topics.values())
        written.append(f"{writer.path} ({writer.storage}, {writer.count} frames on {names})")
    return written


def _print_summary(metrics: dict[str, Any], problems: list[str], written: list[str]) -> None:
    f, b = metrics["frames"], metrics["bag"]
    print(f"bag_eval: {b['image_messages_read']} image messages read from {b['path']} ({b['storage']}); "
          f"{f['processed']} frames processed, {f['evaluated']} with ground truth, {f['skipped_total']} skipped")
    pp = metrics.get("point_prompt")
    if pp and pp.get("miou"):
        k = max(pp["miou"], key=int)
        more = f", mIoU@{k} {pp['miou'][k]:.3f}" if k != "1" else ""
        print(f"  point prompts: mIoU@1 {pp['miou']['1']:.3f}{more} over {pp['instances']} instances")
    se = metrics.get("segment_everything")
    if se:
        fmt = lambda v: "n/a" if v is None else f"{v:.3f}"  # noqa: E731
        top = max(int(k[2:]) for k in se if k.startswith("AR") and k[2:].isdigit())
        print(f"  segment everything: AP {fmt(se['AP'])}, AP50 {fmt(se['AP50'])}, AR{top} {fmt(se[f'AR{top}'])}, "
              f"boundary F {fmt(se['boundary_f'])}")
    tm = metrics.get("temporal")
    if tm and tm.get("id_switch_rate") is not None:
        print(f"  temporal: id switch rate {tm['id_switch_rate']:.3f} ({tm['id_switches']} of {tm['matched_pairs']} pairs)")
    tp, lat = metrics["throughput"], metrics["latency_ms"]
    if tp["frames_per_s"] is not None and "total" in lat and lat["total"]["p50"] is not None:
        print(f"  throughput: {tp['frames_per_s']:.2f} frames/s with {tp['workers']} worker(s); "
              f"latency p50 {lat['total']['p50']:.1f} ms (network {lat.get('network', {}).get('p50') or 0:.1f} ms)")
    for p in problems:
        print(f"bag_eval: warning: {p}", file=sys.stderr)
    for w in written:
        print(f"wrote {w}")


if __name__ == "__main__":
    sys.exit(main())
