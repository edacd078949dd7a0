"""Reading what is still intact from a damaged bag: MCAP scanned record by record up to the damage; sqlite3 read row
by row with missing pages served as zeros and every row that touched one discarded."""
from __future__ import annotations

import struct
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Sequence


@dataclass
class TopicInfo:
    name: str
    msgtype: str
    count: int | None  # messages in the bag (readable ones for a recovered bag), None when unknown


_MCAP_MAGIC = b"\x89MCAP0\r\n"


class McapSalvage:
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


class SqliteSalvage:
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
