"""Size limits of image_codec: headers of every format OpenCV decodes are read and checked before any decoder runs;
forged headers, truncations and random damage end in an ImageCodecError, never in a decode past the limits."""
import re
import struct
import zlib
from types import SimpleNamespace

import cv2
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from seg_node.processing import image_codec
from seg_node.processing.image_header import DeclaredSize
from seg_node.processing.image_codec import (
    CorruptCompressedImageError,
    ImageCodecError,
    ImageTooLargeError,
    SizeLimits,
    compressed_size,
    compressed_to_numpy,
    decode_depth,
    decode_image_bytes,
    decode_to_rgb8,
    image_to_numpy,
)

FUZZ = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
H, W = 37, 53
# (extension, imencode parameters, what to encode): every format the OpenCV wheel both writes and reads.
FORMATS = {
    "png": (".png", [], "bgr"), "jpeg": (".jpg", [], "bgr"), "bmp": (".bmp", [], "bgr"), "tiff": (".tiff", [], "bgr"),
    "webp_lossy": (".webp", [cv2.IMWRITE_WEBP_QUALITY, 80], "bgr"),
    "webp_lossless": (".webp", [cv2.IMWRITE_WEBP_QUALITY, 101], "bgr"),
    "webp_alpha": (".webp", [cv2.IMWRITE_WEBP_QUALITY, 101], "bgra"),
    "pbm": (".pbm", [], "bits"), "pgm": (".pgm", [], "grey"), "ppm": (".ppm", [], "bgr"), "pam": (".pam", [], "bgr"),
    "pfm": (".pfm", [], "float"), "hdr": (".hdr", [], "float"), "jp2": (".jp2", [], "bgr"), "sunraster": (".sr", [], "bgr"),
    "gif": (".gif", [], "bgr"), "avif": (".avif", [], "bgr"),
}


def encode(name: str, height: int = H, width: int = W) -> bytes:
    ext, params, kind = FORMATS[name]
    bgr = np.random.default_rng(height * width).integers(0, 256, (height, width, 3), dtype=np.uint8)
    src = {"bgr": bgr, "bgra": cv2.cvtColor(bgr, cv2.COLOR_BGR2BGRA), "grey": bgr[..., 0],
           "bits": np.where(bgr[..., 0] > 127, 255, 0).astype(np.uint8), "float": bgr.astype(np.float32) / 255}[kind]
    ok, buf = cv2.imencode(ext, src, params)
    assert ok
    return buf.tobytes()


def forge(name: str, data: bytes, width: int, height: int) -> bytes:
    """``data`` with its header changed to declare width x height (a valid header otherwise, checksums included)."""
    b = bytearray(data)
    if name == "png":
        struct.pack_into(">II", b, 16, width, height)
        struct.pack_into(">I", b, 29, zlib.crc32(bytes(b[12:29])))
    elif name == "jpeg":
        sof = re.search(rb"\xff[\xc0-\xc3]", data).start()
        struct.pack_into(">HH", b, sof + 5, height, width)
    elif name == "bmp":
        struct.pack_into("<ii", b, 18, width, height)
    elif name == "sunraster":
        struct.pack_into(">II", b, 4, width, height)
    elif name == "gif":
        struct.pack_into("<HH", b, 6, width, height)
    elif name == "webp_lossy":
        struct.pack_into("<HH", b, 26, width, height)
    elif name == "webp_lossless":
        struct.pack_into("<I", b, 21, (width - 1) | (height - 1) << 14)
    elif name == "jp2":
        siz = data.index(b"\xff\x4f\xff\x51")
        struct.pack_into(">IIII", b, siz + 8, width, height, 0, 0)
    elif name in ("ppm", "pgm", "pfm"):
        return re.sub(rb"^(P.\s+)\d+ \d+", rb"\g<1>%d %d" % (width, height), data, count=1)
    elif name == "pam":
        return data.replace(b"WIDTH %d" % W, b"WIDTH %d" % width).replace(b"HEIGHT %d" % H, b"HEIGHT %d" % height)
    elif name == "hdr":
        return data.replace(b"-Y %d +X %d" % (H, W), b"-Y %d +X %d" % (height, width))
    else:
        raise AssertionError(name)
    return bytes(b)


# Largest value each format's size fields hold (WebP 14 bits, GIF and JPEG 16, BMP signed 32, the rest 32).
FIELD_MAX = {"webp_lossy": 16383, "webp_lossless": 16384, "gif": 65535, "jpeg": 65535, "bmp": 2**31 - 1}


def fit(name: str, value: int) -> int:
    return (value - 1) % FIELD_MAX.get(name, 2**32 - 1) + 1


FORGEABLE = ("png", "jpeg", "bmp", "sunraster", "gif", "webp_lossy", "webp_lossless", "jp2", "ppm", "pgm", "pfm", "pam", "hdr")


@pytest.fixture
def no_decoder(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*_args: object) -> None:
        raise AssertionError("cv2.imdecode was called on an image the header check should have refused")
    monkeypatch.setattr(image_codec.cv2, "imdecode", refuse)


def compressed(data: bytes, fmt: str = "bgr8; png compressed bgr8") -> SimpleNamespace:
    return SimpleNamespace(format=fmt, data=data)


@pytest.mark.parametrize("name", FORMATS)
def test_every_format_declares_its_size_and_decodes(name):
    data = encode(name)
    assert compressed_size(data) == (W, H)
    assert decode_image_bytes(data, cv2.IMREAD_UNCHANGED).shape[:2] == (H, W)


@pytest.mark.parametrize("name", FORGEABLE)
@pytest.mark.parametrize("width, height, problem", [(100000, 100000, "max_pixels"), (16000, 100, "aspect ratio"),
                                                    (40000, 200, "max_side")])
def test_forged_sizes_are_refused_with_the_numbers_before_decoding(name, width, height, problem, no_decoder):
    if max(width, height) > FIELD_MAX.get(name, 2**31):
        width, height, problem = 16383, 16383, "max_pixels"
    data = forge(name, encode(name), width, height)
    if name == "gif":  # Pillow's GIF size is the screen grown to hold the first frame (H rows here)
        height = max(height, H)
    with pytest.raises(ImageTooLargeError, match=rf"is {width}x{height}: .*{problem}") as info:
        compressed_to_numpy(compressed(data))
    assert "CompressedImage" in str(info.value)


def test_an_image_that_decodes_to_another_size_than_declared_is_refused(monkeypatch):
    monkeypatch.setattr(image_codec, "declared_size", lambda data: DeclaredSize("PNG", W, H + 1))
    with pytest.raises(CorruptCompressedImageError, match=f"decoded to {W}x{H} but its header declares {W}x{H + 1}"):
        decode_to_rgb8(compressed(encode("png")))


def test_unknown_formats_and_openexr_are_refused_without_decoding(no_decoder):
    for data in (b"\x76\x2f\x31\x01" + bytes(100), b"GIF90a" + bytes(20), b"hello world"):
        with pytest.raises(CorruptCompressedImageError, match="not a format whose size can be checked"):
            compressed_to_numpy(compressed(data))


def test_png_with_a_huge_ihdr_but_a_wrong_checksum_is_refused_without_decoding(no_decoder):
    data = bytearray(encode("png"))
    struct.pack_into(">II", data, 16, 100000, 100000)  # CRC left as it was: Pillow finds the header broken
    with pytest.raises(CorruptCompressedImageError, match="unreadable PNG header"):
        compressed_to_numpy(compressed(bytes(data)))


def test_limits_are_the_callers():
    data = encode("png", 64, 64)
    assert compressed_to_numpy(compressed(data), SizeLimits(max_pixels=64 * 64))[0].shape == (64, 64, 3)
    with pytest.raises(ImageTooLargeError, match=r"4096 pixels > max_pixels 4095"):
        compressed_to_numpy(compressed(data), SizeLimits(max_pixels=64 * 64 - 1))
    with pytest.raises(ImageTooLargeError, match=r"side 64 > max_side 63"):
        decode_image_bytes(data, cv2.IMREAD_COLOR, SizeLimits(max_side=63))
    with pytest.raises(ValueError):
        SizeLimits(max_aspect_ratio=0.5)


def raw(width: int, height: int, encoding: str = "mono8", data: bytes = b"") -> SimpleNamespace:
    return SimpleNamespace(height=height, width=width, encoding=encoding, is_bigendian=0, step=width, data=data,
                           header=None)


def test_degenerate_raw_frames_are_refused_by_side_and_aspect_ratio():
    # 16777216x1 mono8 fits 16 MP but took 9.5 s in the node; refused by its fields, before the payload is looked at.
    with pytest.raises(ImageTooLargeError, match=r"16777216x1: side 16777216 > max_side 16384; aspect ratio "
                                                 r"1\.678e\+07 > max_aspect_ratio 64"):
        image_to_numpy(raw(16777216, 1))
    with pytest.raises(ImageTooLargeError, match="aspect ratio 80 > max_aspect_ratio 64"):
        decode_to_rgb8(raw(8000, 100, data=bytes(800000)))
    with pytest.raises(ImageTooLargeError, match="max_pixels"):
        decode_depth(raw(5000, 5000, "16UC1"))
    assert decode_to_rgb8(raw(160, 10, data=bytes(1600))).shape == (10, 160, 3)


@FUZZ
@given(name=st.sampled_from(sorted(FORMATS)), cut=st.floats(0.0, 1.0), damage=st.lists(
    st.tuples(st.integers(0, 200), st.integers(0, 255)), max_size=6))
def test_truncated_and_damaged_images_decode_within_the_limits_or_fail_cleanly(name, cut, damage):
    data = bytearray(encode(name))
    for pos, value in damage:  # the first 200 bytes hold every header field
        if pos < len(data):
            data[pos] = value
    data = bytes(data[:max(1, int(len(data) * cut))])
    limits = SizeLimits(max_pixels=64 * 64, max_side=128, max_aspect_ratio=4)
    try:
        pixels, _ = compressed_to_numpy(compressed(data), limits)
    except ImageCodecError:
        return
    h, w = pixels.shape[:2]
    assert h * w <= limits.max_pixels and max(h, w) <= limits.max_side and max(h, w) <= 4 * min(h, w)


@FUZZ
@given(name=st.sampled_from(FORGEABLE), width=st.integers(1, 2**32 - 1), height=st.integers(1, 2**32 - 1))
def test_any_forged_size_is_decoded_exactly_or_refused(name, width, height):
    width, height = fit(name, width), fit(name, height)
    limits = SizeLimits(max_pixels=64 * 64, max_side=128, max_aspect_ratio=4)
    try:
        pixels, _ = compressed_to_numpy(compressed(forge(name, encode(name), width, height)), limits)
    except ImageCodecError:
        return
    assert pixels.shape[:2] == (height, width)  # decoders follow the header: a smaller one gives a smaller image
