"""Bags through rosbags: the typestore with seg_msgs registered, the writer, and the reader that falls back to
salvage for damaged storage files."""
from __future__ import annotations

import os
import sys
from functools import lru_cache
from pathlib import Path
from typing import Any, Iterable, Iterator

import yaml

from seg_node.evaluation.mcap_crc import count_chunk_crcs, fill_chunk_crcs
from seg_node.evaluation.salvage import McapSalvage, SqliteSalvage, TopicInfo

IMAGE = "sensor_msgs/msg/Image"
COMPRESSED = "sensor_msgs/msg/CompressedImage"
CAMERA_INFO = "sensor_msgs/msg/CameraInfo"
IMAGE_TYPES = (IMAGE, COMPRESSED)
STORAGES = ("sqlite3", "mcap")
# Topic names make_bag writes and bag_eval looks for when none is given: the two tools must agree.
DEFAULT_TOPICS = {"image": "/camera/image_raw", "compressed": "/camera/image_raw/compressed",
                  "gt": "/camera/gt_labels", "depth": "/camera/depth/image_raw", "info": "/camera/camera_info"}


class BagReadError(Exception):
    """The bag cannot be used at all (missing, not a bag, missing or mistyped topics). Exit code 2."""


def _eval_extra(package: str, exc: ImportError) -> ImportError:
    return ImportError(f"bag evaluation needs the Python package '{package}', which is not installed. Install it with: "
                       f"pip install 'seg_node[eval]' (or pip install {package})")




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
    """An open rosbags Writer (bag format version 9) for a new bag folder ``path``; MCAP files get chunk CRCs."""
    from rosbags.rosbag2 import StoragePlugin, Writer

    class _Writer(Writer):
        def close(self) -> None:
            super().close()
            if storage == "mcap":
                for file in sorted(Path(path).glob("*.mcap")):
                    fill_chunk_crcs(file)

    if storage not in STORAGES:
        raise ValueError(f"storage must be one of {', '.join(STORAGES)}, got {storage!r}")
    writer = _Writer(path, version=9, storage_plugin=StoragePlugin.MCAP if storage == "mcap" else StoragePlugin.SQLITE3)
    writer.open()
    return writer


def make_header(store: Any, stamp: int, frame_id: str) -> Any:
    header, time_ = store.types["std_msgs/msg/Header"], store.types["builtin_interfaces/msg/Time"]
    return header(stamp=time_(sec=int(stamp // 10**9), nanosec=int(stamp % 10**9)), frame_id=frame_id)


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
        self._salvage: McapSalvage | SqliteSalvage | None = None
        try:
            reader = Reader(path)
            reader.open()
        except Exception as exc:  # rosbags raises ReaderError, apsw errors, OSError, KeyError... on bad files
            first = f"{type(exc).__name__}: {exc}"
            try:
                files = _storage_files(path, self.storage)
                if not files:
                    raise BagReadError("no storage file") from None
                self._salvage = McapSalvage(files) if self.storage == "mcap" else SqliteSalvage(files)
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

    def checksums(self) -> str:
        """What protects the payloads against damage, for the report (sqlite3 has nothing; MCAP has chunk CRCs)."""
        if self.storage == "sqlite3":
            return "none: sqlite3 stores no checksums, so damaged payloads are found only by the checks on their content"
        chunks = with_crc = 0
        for file in _storage_files(self.path, "mcap"):
            try:
                c, w = count_chunk_crcs(file)
            except (OSError, ValueError):
                return f"unknown: {file} could not be scanned"
            chunks, with_crc = chunks + c, with_crc + w
        if with_crc == chunks:
            return f"all {chunks} MCAP chunks carry a CRC, checked as they are read"
        return (f"{chunks - with_crc} of {chunks} MCAP chunks carry no CRC (written without one): damage to them is "
                "found only by the checks on their content")

    def close(self) -> None:
        if self._reader is not None:
            self._reader.close()
            self._reader = None
