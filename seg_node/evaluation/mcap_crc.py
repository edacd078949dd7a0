"""Chunk CRCs for the MCAP files rosbags writes.

rosbags' MCAP writer (0.11) stores 0 as every chunk's ``uncompressed_crc``, which the MCAP specification reads as
"no checksum", so a reader cannot tell a damaged chunk from a good one. ``fill_chunk_crcs`` writes the CRC-32 of each
chunk's uncompressed records into that field after the file is closed. The field has a fixed size, so no offset in
the file or its summary moves. Written by hand because neither rosbags nor the bag tools here offer it; rosbags'
reader and ``salvage`` verify the CRCs on reading.
"""
from __future__ import annotations

import struct
from binascii import crc32
from pathlib import Path

MAGIC = b"\x89MCAP0\r\n"
_CHUNK, _FOOTER = 0x06, 0x02


def fill_chunk_crcs(path: Path) -> int:
    """Write the CRC of every chunk of the MCAP file ``path`` in place; returns the number of chunks."""
    from rosbags.rosbag2.storage_mcap import decompress

    with open(path, "r+b") as f:
        data = f.read()
        if not data.startswith(MAGIC):
            raise ValueError(f"{path}: not an MCAP file")
        pos, chunks = len(MAGIC), 0
        while pos + 9 <= len(data):
            op, length = data[pos], struct.unpack_from("<Q", data, pos + 1)[0]
            body = pos + 9
            if op == _FOOTER:
                break
            if op == _CHUNK:
                size = struct.unpack_from("<Q", data, body + 16)[0]
                (name_len,) = struct.unpack_from("<I", data, body + 28)
                compression = data[body + 32: body + 32 + name_len].decode()
                (records_len,) = struct.unpack_from("<Q", data, body + 32 + name_len)
                start = body + 40 + name_len
                records = decompress(data[start: start + records_len], compression, size, 0)
                f.seek(body + 24)
                f.write(struct.pack("<I", crc32(records)))
                chunks += 1
            pos = body + length
    return chunks


def count_chunk_crcs(path: Path) -> tuple[int, int]:
    """(chunks, chunks with a CRC) of an MCAP file, reading only record headers; stops at damage or the footer."""
    chunks = with_crc = 0
    with open(path, "rb") as f:
        if f.read(len(MAGIC)) != MAGIC:
            raise ValueError(f"{path}: not an MCAP file")
        while len(head := f.read(9)) == 9:
            op, length = head[0], struct.unpack_from("<Q", head, 1)[0]
            if op == _FOOTER:
                break
            if op == _CHUNK:
                body = f.read(28)
                if len(body) < 28:
                    break
                chunks += 1
                with_crc += struct.unpack_from("<I", body, 24)[0] != 0
                length -= 28
            f.seek(length, 1)
    return chunks, with_crc
