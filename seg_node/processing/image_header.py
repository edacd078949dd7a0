"""The size a compressed image declares, read from its header without decoding any pixel.

``image_codec`` checks this size against its limits before OpenCV's ``imdecode`` allocates anything: OpenCV's own
limit (``CV_IO_MAX_IMAGE_PIXELS``, 2^30 pixels) is far above what a robot should decode and raises instead of
refusing. The format is chosen by the signature OpenCV's ``findDecoder`` uses, so the header read here is the one the
decoder will read; a blob whose signature matches no supported decoder is refused, never handed to ``imdecode``.

Most headers are read by Pillow's format plugins, whose openers parse the header only. The plugin's opener is called
directly (``Image.OPEN``) rather than through ``Image.open``, whose decompression-bomb check is a process-wide setting
that would warn or fail by Pillow's limits instead of ours. Hand-written parsers remain where Pillow cannot be used,
each saying why. OpenEXR is not listed: the OpenCV wheels are built without it, so ``imdecode`` cannot read it anyway.
"""
from __future__ import annotations

import io
import re
import struct
from typing import Callable, NamedTuple

__all__ = ["DeclaredSize", "HeaderError", "declared_size", "FORMATS"]


class HeaderError(ValueError):
    """The header is missing, cut off or unreadable, or the format is not one whose size can be read."""


class DeclaredSize(NamedTuple):
    format: str
    width: int
    height: int


def _pillow(name: str) -> Callable[[bytes], tuple[int, int]]:
    def read(data: bytes) -> tuple[int, int]:
        from PIL import Image

        Image.init()
        factory, _accept = Image.OPEN[name]
        try:
            with factory(io.BytesIO(data)) as img:  # runs the plugin's header parser only
                return int(img.size[0]), int(img.size[1])
        except Exception as exc:  # Pillow's plugins raise SyntaxError, OSError, struct.error, ... on bad headers
            raise HeaderError(f"unreadable {name} header ({type(exc).__name__}: {exc})") from None
    return read


def _webp(data: bytes) -> tuple[int, int]:
    # By hand: Pillow's WebP opener gives the whole file to libwebp's animation decoder, which allocates the canvas.
    chunk = data[12:16]
    if chunk == b"VP8X" and len(data) >= 30:
        return 1 + int.from_bytes(data[24:27], "little"), 1 + int.from_bytes(data[27:30], "little")
    if chunk == b"VP8L" and len(data) >= 25 and data[20] == 0x2F:
        bits = int.from_bytes(data[21:25], "little")
        return 1 + (bits & 0x3FFF), 1 + ((bits >> 14) & 0x3FFF)
    if chunk == b"VP8 " and len(data) >= 30 and data[23:26] == b"\x9d\x01\x2a":
        w, h = struct.unpack_from("<HH", data, 26)
        return w & 0x3FFF, h & 0x3FFF
    raise HeaderError("unreadable WebP header (no VP8, VP8L or VP8X chunk where the format puts it)")


def _j2k_siz(data: bytes, at: int) -> tuple[int, int]:
    if data[at:at + 4] != b"\xff\x4f\xff\x51" or len(data) < at + 42:
        raise HeaderError("JPEG 2000 codestream does not start with SOC and SIZ markers")
    xsiz, ysiz, xo, yo = struct.unpack_from(">IIII", data, at + 8)
    (components,) = struct.unpack_from(">H", data, at + 40)
    if not (xsiz > xo and ysiz > yo and 1 <= components <= 4):
        raise HeaderError(f"JPEG 2000 SIZ declares an image area {xo}..{xsiz} x {yo}..{ysiz} with {components} "
                          "components (1 to 4 can be decoded)")
    return xsiz - xo, ysiz - yo


def _jp2(data: bytes) -> tuple[int, int]:
    # By hand: Pillow takes a JP2's size from its ihdr box, OpenJPEG allocates by the codestream's SIZ marker, and a
    # forged file can declare different ones. Walk the top-level boxes to the codestream (jp2c).
    pos = 0
    while pos + 8 <= len(data):
        length, kind = struct.unpack_from(">I4s", data, pos)
        header = 8
        if length == 1:
            if pos + 16 > len(data):
                break
            (length,) = struct.unpack_from(">Q", data, pos + 8)
            header = 16
        if kind == b"jp2c":
            return _j2k_siz(data, pos + header)
        if length == 0 or length < header:
            break
        pos += length
    raise HeaderError("JP2 file has no readable codestream box (jp2c)")


def _pam(data: bytes) -> tuple[int, int]:
    # By hand: Pillow has no PAM (P7) reader. The header is text lines up to ENDHDR.
    head = data[:4096].split(b"ENDHDR", 1)
    fields = dict(re.findall(rb"^\s*(WIDTH|HEIGHT|DEPTH)\s+(\d+)", head[0], re.M))
    if len(head) < 2 or b"WIDTH" not in fields or b"HEIGHT" not in fields:
        raise HeaderError("PAM header without WIDTH, HEIGHT and ENDHDR in its first 4 KiB")
    if not 1 <= int(fields.get(b"DEPTH", b"1")) <= 4:
        raise HeaderError(f"PAM header declares DEPTH {int(fields[b'DEPTH'])} (1 to 4 can be decoded)")
    return int(fields[b"WIDTH"]), int(fields[b"HEIGHT"])


def _hdr(data: bytes) -> tuple[int, int]:
    # By hand: Pillow has no Radiance HDR reader. OpenCV reads text lines up to a blank one, then accepts only the
    # "-Y <height> +X <width>" resolution line.
    end = data.find(b"\n\n", 0, 4096)
    match = re.compile(rb"-Y (\d+) \+X (\d+)\n").match(data, end + 2) if end >= 0 else None
    if match is None:
        raise HeaderError("Radiance HDR header without a '-Y <height> +X <width>' line in its first 4 KiB")
    return int(match[2]), int(match[1])


def _pfm(data: bytes) -> tuple[int, int]:
    # By hand: Pillow reads grey PFM (Pf) only, not colour (PF). The header is "PF <width> <height> <scale>".
    match = re.match(rb"P[fF]\s+(\d+)\s+(\d+)\s", data[:256])
    if match is None:
        raise HeaderError("PFM header without '<width> <height>' after its signature")
    return int(match[1]), int(match[2])


def _is_pnm(data: bytes, kinds: bytes) -> bool:
    return len(data) >= 3 and data[:1] == b"P" and data[1:2] in kinds and data[2:3].isspace()


# (name, signature test as OpenCV's decoders do it, size reader), in OpenCV's findDecoder order where it matters.
FORMATS: tuple[tuple[str, Callable[[bytes], bool], Callable[[bytes], tuple[int, int]]], ...] = (
    ("AVIF", lambda d: d[4:8] == b"ftyp" and b"avi" in d[8:64], _pillow("AVIF")),
    ("BMP", lambda d: d[:2] == b"BM", _pillow("BMP")),
    ("HDR", lambda d: d.startswith((b"#?RGBE", b"#?RADIANCE")), _hdr),
    ("JPEG", lambda d: d[:3] == b"\xff\xd8\xff", _pillow("JPEG")),
    ("WEBP", lambda d: d[:4] == b"RIFF" and d[8:12] == b"WEBP", _webp),
    ("SUN", lambda d: d[:4] == b"\x59\xa6\x6a\x95", _pillow("SUN")),
    ("PNM", lambda d: _is_pnm(d, b"123456"), _pillow("PPM")),
    ("PFM", lambda d: _is_pnm(d, b"fF"), _pfm),
    ("PAM", lambda d: d[:2] == b"P7" and d[2:3].isspace(), _pam),
    ("TIFF", lambda d: d[:4] in (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+"), _pillow("TIFF")),
    ("JPEG2000", lambda d: d[:4] == b"\xff\x4f\xff\x51", lambda d: _j2k_siz(d, 0)),
    ("JP2", lambda d: d[:12] == b"\x00\x00\x00\x0cjP  \r\n\x87\n", _jp2),
    ("PNG", lambda d: d[:8] == b"\x89PNG\r\n\x1a\n", _pillow("PNG")),
    ("GIF", lambda d: d[:6] in (b"GIF87a", b"GIF89a"), _pillow("GIF")),
)


def declared_size(data: bytes) -> DeclaredSize:
    """The format and the width and height its header declares; ``HeaderError`` when that cannot be read."""
    for name, matches, read in FORMATS:
        if matches(data):
            width, height = read(data)
            return DeclaredSize(name, width, height)
    raise HeaderError(f"not a format whose size can be checked before decoding (starts {data[:8].hex(' ')}; "
                      f"supported: {', '.join(name for name, _, _ in FORMATS)})")
