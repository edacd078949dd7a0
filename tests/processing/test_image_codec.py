"""Tests for seg_node.processing.image_codec: round trips (hand-built, CDR via rclpy, rosbags), zero-copy, errors, compression."""
import array
import os
import re
import subprocess
import sys
import tempfile
from types import SimpleNamespace

# Serialisation needs no rclpy.init, but keep anything ROS-side local and its logs out of the home directory.
os.environ.setdefault("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")
os.environ.setdefault("ROS_DOMAIN_ID", "87")
if "ROS_LOG_DIR" not in os.environ:
    os.environ["ROS_LOG_DIR"] = tempfile.mkdtemp(prefix="seg_node_test_ros_log_")

import cv2  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
from hypothesis import given, settings, strategies as st  # noqa: E402

from seg_node.processing.image_codec import (  # noqa: E402
    ENCODINGS,
    CorruptCompressedImageError,
    ImageCodecError,
    MalformedImageError,
    UnsupportedEncodingError,
    compressed_to_numpy,
    decode_depth,
    decode_to_rgb8,
    image_to_numpy,
    numpy_to_compressed,
    numpy_to_image,
    to_rgb8,
)

PROPERTY = settings(max_examples=25, deadline=None)
SIDES = st.integers(1, 64)
SEEDS = st.integers(0, 2**32 - 1)


def random_image(encoding: str, height: int, width: int, seed: int) -> np.ndarray:
    """Random bit patterns in the encoding's dtype; for 32FC1 that includes NaNs (with payloads), infs and -0."""
    dtype, channels = ENCODINGS[encoding]
    rng = np.random.default_rng(seed)
    raw = rng.integers(0, 256, size=height * width * channels * dtype.itemsize, dtype=np.uint8)
    arr = raw.view(dtype).reshape((height, width) if channels == 1 else (height, width, channels))
    if dtype == np.float32:
        specials = np.array([np.nan, np.inf, -np.inf, -0.0], dtype=np.float32)
        arr.flat[rng.integers(0, arr.size, size=4)] = specials
    return arr


def same_bits(a: np.ndarray, b: np.ndarray) -> bool:
    """Exact equality that also holds for NaNs, compared as bytes."""
    return a.shape == b.shape and a.dtype == b.dtype and np.array_equal(
        np.ascontiguousarray(a).view(np.uint8), np.ascontiguousarray(b).view(np.uint8))


# Every form rclpy, rosbags and hand-written code give ``data`` in.
CONTAINERS = {
    "bytes": bytes,
    "bytearray": bytearray,
    "memoryview": memoryview,
    "array": lambda b: array.array("B", b),
    "list": list,
    "ndarray": lambda b: np.frombuffer(b, np.uint8),
}
BUFFER_CONTAINERS = {name: make for name, make in CONTAINERS.items() if name not in ("list", "memoryview")}


def raw_msg(arr: np.ndarray, encoding: str, pad: int = 0, big_endian: bool = False, container=bytes, seed: int = 0):
    """A hand-built duck-typed Image with ``pad`` garbage bytes after each row."""
    height, width = arr.shape[:2]
    wire = arr.astype(arr.dtype.newbyteorder(">" if big_endian else "<"))
    rows = np.ascontiguousarray(wire).reshape(height, -1).view(np.uint8)
    garbage = np.random.default_rng(seed).integers(0, 256, size=(height, pad), dtype=np.uint8)
    payload = np.concatenate([rows, garbage], axis=1).tobytes()
    return SimpleNamespace(height=height, width=width, encoding=encoding, is_bigendian=int(big_endian),
                           step=rows.shape[1] + pad, data=container(payload))


def compressed_msg(data, fmt: str):
    return SimpleNamespace(format=fmt, data=data)


def smooth_rgb(height: int = 48, width: int = 64) -> np.ndarray:
    y, x = np.mgrid[0:height, 0:width]
    return np.stack([x * 255 // (width - 1), y * 255 // (height - 1), (x + y) * 255 // (width + height - 2)],
                    axis=-1).astype(np.uint8)


@pytest.fixture(scope="module")
def sensor_msgs():
    pytest.importorskip("rclpy")
    return pytest.importorskip("sensor_msgs.msg")


@pytest.fixture(scope="module")
def rosbags_store():
    typesys = pytest.importorskip("rosbags.typesys")
    return typesys.get_typestore(typesys.Stores.ROS2_KILTED)


def rosbags_header(store, frame_id: str = "cam"):
    time = store.types["builtin_interfaces/msg/Time"](sec=12, nanosec=34)
    return store.types["std_msgs/msg/Header"](stamp=time, frame_id=frame_id)


# --- round trips -------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("encoding", list(ENCODINGS))
@PROPERTY
@given(height=SIDES, width=SIDES, seed=SEEDS)
def test_numpy_image_round_trip(encoding, height, width, seed):
    arr = random_image(encoding, height, width, seed)
    msg = numpy_to_image(arr, encoding, msg_type=SimpleNamespace)
    assert (msg.height, msg.width, msg.encoding, msg.is_bigendian) == (height, width, encoding, 0)
    assert msg.step == arr.nbytes // height and len(msg.data) == arr.nbytes
    assert same_bits(image_to_numpy(msg), arr)


@pytest.mark.parametrize("encoding", list(ENCODINGS))
@PROPERTY
@given(height=SIDES, width=SIDES, seed=SEEDS, pad=st.integers(0, 9), big_endian=st.booleans())
def test_padded_and_big_endian_messages_decode_to_the_same_values(encoding, height, width, seed, pad, big_endian):
    arr = random_image(encoding, height, width, seed)
    out = image_to_numpy(raw_msg(arr, encoding, pad=pad, big_endian=big_endian, seed=seed))
    assert same_bits(out, arr)
    assert out.dtype.isnative and out.flags.c_contiguous


@pytest.mark.parametrize("container", CONTAINERS.values(), ids=CONTAINERS.keys())
def test_every_data_container_decodes(container):
    arr = random_image("16UC1", 5, 7, seed=1)
    assert same_bits(image_to_numpy(raw_msg(arr, "16UC1", container=container)), arr)
    assert same_bits(image_to_numpy(raw_msg(arr, "16UC1", pad=3, big_endian=True, container=container)), arr)


def test_numpy_to_image_copies_non_contiguous_and_big_endian_input():
    base = random_image("rgb8", 10, 20, seed=2)
    view = base[:, ::2]
    msg = numpy_to_image(view, "rgb8", msg_type=SimpleNamespace)
    assert msg.step == 10 * 3 and same_bits(image_to_numpy(msg), np.ascontiguousarray(view))
    depth = random_image("16UC1", 4, 6, seed=3)
    msg = numpy_to_image(depth.astype(">u2"), "16UC1", msg_type=SimpleNamespace)
    assert msg.is_bigendian == 0 and same_bits(image_to_numpy(msg), depth)
    mono = random_image("mono8", 4, 6, seed=4)
    assert same_bits(image_to_numpy(numpy_to_image(mono[..., None], "mono8", msg_type=SimpleNamespace)), mono)


def test_numpy_to_image_does_not_alias_the_input(rosbags_store):
    arr = random_image("mono8", 3, 4, seed=5)
    msgs = [numpy_to_image(arr, "mono8", msg_type=SimpleNamespace),
            numpy_to_image(arr, "mono8", header=rosbags_header(rosbags_store),
                           msg_type=rosbags_store.types["sensor_msgs/msg/Image"])]
    arr[:] = 0
    assert all(image_to_numpy(msg).any() for msg in msgs)


def test_big_endian_arrays_are_encoded_by_value():
    depth = random_image("mono16", 6, 5, seed=19)
    swapped = depth.astype(">u2")
    assert np.array_equal(compressed_to_numpy(numpy_to_compressed(swapped, "mono16", msg_type=SimpleNamespace))[0],
                          depth)
    assert np.array_equal(to_rgb8(swapped, "mono16"), to_rgb8(depth, "mono16"))


@pytest.mark.parametrize("encoding", list(ENCODINGS))
def test_cdr_round_trip_with_rclpy(sensor_msgs, encoding):
    from rclpy.serialization import deserialize_message, serialize_message
    from std_msgs.msg import Header

    arr = random_image(encoding, 17, 23, seed=len(encoding))
    msg = numpy_to_image(arr, encoding, header=Header(frame_id="cam"))
    assert isinstance(msg, sensor_msgs.Image) and isinstance(msg.data, array.array)
    received = deserialize_message(serialize_message(msg), sensor_msgs.Image)
    assert isinstance(received.data, array.array) and received.header.frame_id == "cam"
    assert same_bits(image_to_numpy(received), arr)


def test_cdr_round_trip_of_padded_big_endian_message(sensor_msgs):
    from rclpy.serialization import deserialize_message, serialize_message

    arr = random_image("32FC1", 9, 11, seed=6)
    hand = raw_msg(arr, "32FC1", pad=5, big_endian=True, container=CONTAINERS["array"])
    msg = sensor_msgs.Image(height=hand.height, width=hand.width, encoding=hand.encoding, is_bigendian=1,
                            step=hand.step, data=hand.data)
    assert same_bits(image_to_numpy(deserialize_message(serialize_message(msg), sensor_msgs.Image)), arr)


@pytest.mark.parametrize("encoding", ["rgb8", "16UC1", "32FC1"])
def test_rosbags_messages_round_trip(rosbags_store, encoding):
    image_type = rosbags_store.types["sensor_msgs/msg/Image"]
    arr = random_image(encoding, 13, 9, seed=7)
    msg = numpy_to_image(arr, encoding, header=rosbags_header(rosbags_store), msg_type=image_type)
    assert isinstance(msg.data, np.ndarray) and msg.data.dtype == np.uint8
    assert same_bits(image_to_numpy(msg), arr)
    received = rosbags_store.deserialize_cdr(rosbags_store.serialize_cdr(msg, image_type.__msgtype__),
                                             image_type.__msgtype__)
    out = image_to_numpy(received)
    assert same_bits(out, arr) and received.header.frame_id == "cam"
    assert np.shares_memory(out, received.data)  # rosbags hands out a view on the CDR buffer; so do we


def test_rclpy_cdr_bytes_decode_through_rosbags(sensor_msgs, rosbags_store):
    from rclpy.serialization import serialize_message

    arr = random_image("bgr8", 6, 5, seed=8)
    wire = serialize_message(numpy_to_image(arr, "bgr8"))
    received = rosbags_store.deserialize_cdr(wire, "sensor_msgs/msg/Image")
    assert same_bits(image_to_numpy(received), arr)


def test_rosbags_compressed_image(rosbags_store):
    compressed_type = rosbags_store.types["sensor_msgs/msg/CompressedImage"]
    arr = random_image("rgb8", 12, 10, seed=9)
    msg = numpy_to_compressed(arr, "rgb8", header=rosbags_header(rosbags_store), msg_type=compressed_type)
    received = rosbags_store.deserialize_cdr(rosbags_store.serialize_cdr(msg, compressed_type.__msgtype__),
                                             compressed_type.__msgtype__)
    assert np.array_equal(decode_to_rgb8(received), arr)


# --- zero-copy -----------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("container", BUFFER_CONTAINERS.values(), ids=BUFFER_CONTAINERS.keys())
@pytest.mark.parametrize("encoding", list(ENCODINGS))
def test_unpadded_native_message_is_decoded_without_copy(encoding, container):
    msg = raw_msg(random_image(encoding, 8, 6, seed=10), encoding, container=container)
    assert np.shares_memory(image_to_numpy(msg), np.frombuffer(msg.data, np.uint8))


def test_big_endian_8_bit_needs_no_copy_but_padding_and_16_bit_swaps_do():
    mono = random_image("mono8", 4, 4, seed=11)
    msg = raw_msg(mono, "mono8", big_endian=True)
    assert np.shares_memory(image_to_numpy(msg), np.frombuffer(msg.data, np.uint8))
    for msg in (raw_msg(mono, "mono8", pad=2), raw_msg(random_image("16UC1", 4, 4, seed=12), "16UC1", big_endian=True)):
        assert not np.shares_memory(image_to_numpy(msg), np.frombuffer(msg.data, np.uint8))


def test_rclpy_message_is_decoded_without_copy(sensor_msgs):
    msg = numpy_to_image(random_image("rgba8", 5, 5, seed=13), "rgba8")
    assert np.shares_memory(image_to_numpy(msg), np.frombuffer(msg.data, np.uint8))


# --- malformed input -----------------------------------------------------------------------------------------------

@PROPERTY
@given(encoding=st.sampled_from(list(ENCODINGS)), height=SIDES, width=SIDES, pad=st.integers(0, 4),
       delta=st.integers(-64, 64).filter(bool))
def test_data_length_mismatch_is_malformed(encoding, height, width, pad, delta):
    msg = raw_msg(random_image(encoding, height, width, seed=0), encoding, pad=pad)
    expected = height * msg.step
    msg.data = bytes(max(expected + delta, 0))
    with pytest.raises(MalformedImageError) as err:
        image_to_numpy(msg)
    assert f"Image data is {len(msg.data)} bytes, expected {expected} (height {height} × step {msg.step})" \
        in str(err.value)


@PROPERTY
@given(encoding=st.sampled_from(list(ENCODINGS)), height=SIDES, width=SIDES, short=st.integers(1, 64))
def test_step_smaller_than_a_row_is_malformed(encoding, height, width, short):
    msg = raw_msg(random_image(encoding, height, width, seed=0), encoding)
    row_bytes = msg.step
    msg.step = max(row_bytes - short, 0)
    with pytest.raises(MalformedImageError) as err:
        image_to_numpy(msg)
    assert f"Image {width}x{height} {encoding} needs step >= {row_bytes} bytes, got {msg.step}" in str(err.value)


@pytest.mark.parametrize("height, width", [(480, 0), (0, 640), (0, 0), (-1, 4)])
def test_empty_dimensions_are_malformed(height, width):
    msg = SimpleNamespace(height=height, width=width, encoding="rgb8", is_bigendian=0, step=0, data=b"")
    with pytest.raises(MalformedImageError, match=f"Image {width}x{height} rgb8 has no pixels"):
        image_to_numpy(msg)


def test_example_messages_from_the_spec():
    msg = SimpleNamespace(height=480, width=640, encoding="rgb8", is_bigendian=0, step=1000, data=bytes(480000))
    with pytest.raises(MalformedImageError, match="Image 640x480 rgb8 needs step >= 1920 bytes, got 1000"):
        image_to_numpy(msg)
    msg.step, msg.data = 1920, bytes(1000)
    expected = "Image data is 1000 bytes, expected 921600 (height 480 × step 1920)"
    with pytest.raises(MalformedImageError, match=re.escape(expected)):
        image_to_numpy(msg)


def test_list_data_outside_byte_range_is_malformed():
    msg = SimpleNamespace(height=1, width=2, encoding="mono8", is_bigendian=0, step=2, data=[1, 300])
    with pytest.raises(MalformedImageError, match="0..255"):
        image_to_numpy(msg)


@pytest.mark.parametrize("encoding", ["yuv422", "bayer_rggb8", "8UC3", "8UC1", "RGB8", "bgr16", ""])
def test_unsupported_encodings(encoding):
    msg = SimpleNamespace(height=2, width=2, encoding=encoding, is_bigendian=0, step=6, data=bytes(12))
    for call in (lambda: image_to_numpy(msg), lambda: numpy_to_image(np.zeros((2, 2, 3), np.uint8), encoding),
                 lambda: to_rgb8(np.zeros((2, 2, 3), np.uint8), encoding)):
        with pytest.raises(UnsupportedEncodingError) as err:
            call()
        assert repr(encoding) in str(err.value) and "rgb8, bgr8" in str(err.value)


@pytest.mark.parametrize("arr, encoding, needle", [
    (np.zeros((4, 4, 3), np.float32), "rgb8", "rgb8 needs uint8 data, got float32"),
    (np.zeros((4, 4), np.uint8), "16UC1", "16UC1 needs uint16 data, got uint8"),
    (np.zeros((4, 4), np.uint8), "rgb8", "rgb8 needs shape (H, W, 3), got (4, 4)"),
    (np.zeros((4, 4, 3), np.uint8), "rgba8", "rgba8 needs shape (H, W, 4), got (4, 4, 3)"),
    (np.zeros((4, 4, 2), np.uint16), "mono16", "mono16 needs shape (H, W) or (H, W, 1), got (4, 4, 2)"),
    (np.zeros((0, 4), np.float32), "32FC1", "32FC1 array of shape (0, 4) has no pixels"),
])
def test_arrays_that_do_not_fit_the_encoding_are_rejected(arr, encoding, needle):
    calls = [lambda: numpy_to_image(arr, encoding, msg_type=SimpleNamespace),
             lambda: numpy_to_compressed(arr, encoding, msg_type=SimpleNamespace)]
    if encoding != "32FC1":  # to_rgb8 rejects depth before looking at the array
        calls.append(lambda: to_rgb8(arr, encoding))
    for call in calls:
        with pytest.raises(MalformedImageError) as err:
            call()
        assert needle in str(err.value)


@PROPERTY
@given(junk=st.binary(min_size=0, max_size=200))
def test_undecodable_compressed_bytes_are_corrupt(junk):
    data = b"\x01" + junk  # no image format OpenCV reads starts with 0x01
    with pytest.raises(CorruptCompressedImageError) as err:
        compressed_to_numpy(compressed_msg(data, "jpeg"))
    assert f"{len(data)} bytes" in str(err.value) and "'jpeg'" in str(err.value)


def test_truncated_png_and_empty_data_are_corrupt():
    png = numpy_to_compressed(random_image("bgr8", 32, 32, seed=14), "bgr8", msg_type=SimpleNamespace)
    with pytest.raises(CorruptCompressedImageError, match=f"{len(png.data) // 2} bytes"):
        compressed_to_numpy(compressed_msg(png.data[:len(png.data) // 2], png.format))
    for empty in (b"", array.array("B"), np.zeros(0, np.uint8)):
        with pytest.raises(CorruptCompressedImageError, match="CompressedImage data is empty"):
            decode_to_rgb8(compressed_msg(empty, "png"))


@pytest.mark.parametrize("fmt", ["16UC1; compressedDepth png", "32FC1; compressedDepth", "compressedDepth png"])
def test_compressed_depth_is_unsupported(fmt):
    png = numpy_to_compressed(np.zeros((4, 4), np.uint16), "16UC1", msg_type=SimpleNamespace)
    with pytest.raises(UnsupportedEncodingError) as err:
        decode_depth(compressed_msg(b"\x00" * 12 + bytes(png.data), fmt))
    assert "compressedDepth" in str(err.value) and "'compressed' transport as png" in str(err.value)


@pytest.mark.parametrize("encoding, fmt, needle", [
    ("16UC1", "jpeg", "JPEG stores 8-bit images with 1 or 3 channels, not 16UC1"),
    ("rgba8", "jpeg", "not rgba8 (4-channel uint8)"),
    ("32FC1", "png", "PNG cannot store 32FC1"),
    ("rgb8", "webp", "Unsupported compression format 'webp'"),
])
def test_compression_limits(encoding, fmt, needle):
    dtype, channels = ENCODINGS[encoding]
    arr = np.zeros((4, 4) if channels == 1 else (4, 4, channels), dtype)
    with pytest.raises(UnsupportedEncodingError, match=re.escape(needle)):
        numpy_to_compressed(arr, encoding, fmt=fmt, msg_type=SimpleNamespace)


def test_errors_share_the_value_error_base():
    for cls in (UnsupportedEncodingError, MalformedImageError, CorruptCompressedImageError):
        assert issubclass(cls, ImageCodecError) and issubclass(cls, ValueError)


# --- compression ---------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("encoding, decoded_encoding", [
    ("bgr8", "bgr8"), ("rgb8", "bgr8"), ("bgra8", "bgra8"), ("rgba8", "bgra8"),
    ("mono8", "mono8"), ("mono16", "mono16"), ("16UC1", "16UC1"),
])
def test_png_round_trip_is_lossless(encoding, decoded_encoding):
    arr = random_image(encoding, 21, 34, seed=15)
    msg = numpy_to_compressed(arr, encoding, msg_type=SimpleNamespace)
    assert msg.format == f"{encoding}; png compressed {decoded_encoding}"
    assert bytes(msg.data[:8]) == b"\x89PNG\r\n\x1a\n"
    out, out_encoding = compressed_to_numpy(msg)
    assert out_encoding == decoded_encoding and out.dtype == arr.dtype
    swap = {"rgb8": cv2.COLOR_BGR2RGB, "rgba8": cv2.COLOR_BGRA2RGBA}.get(encoding)
    assert np.array_equal(out if swap is None else cv2.cvtColor(out, swap), arr)
    assert np.array_equal(decode_to_rgb8(msg), to_rgb8(arr, encoding))


def test_rgb8_keeps_its_colors_through_png_and_rclpy(sensor_msgs):
    from rclpy.serialization import deserialize_message, serialize_message

    arr = random_image("rgb8", 16, 16, seed=16)
    msg = numpy_to_compressed(arr, "rgb8")
    assert isinstance(msg, sensor_msgs.CompressedImage)
    received = deserialize_message(serialize_message(msg), sensor_msgs.CompressedImage)
    assert np.array_equal(to_rgb8(*compressed_to_numpy(received)), arr)


@pytest.mark.parametrize("fmt, expected", [
    ("16UC1; png compressed ", "16UC1"),  # what image_transport writes for non-colour images
    ("16UC1; png compressed", "16UC1"),
    ("mono16; png compressed ", "mono16"),
    ("png", "mono16"),
    ("32FC1; png compressed mono8", "mono16"),  # a declared layout that does not fit is ignored
])
def test_16_bit_png_encoding_follows_the_format_string(fmt, expected):
    png = numpy_to_compressed(random_image("16UC1", 5, 5, seed=17), "16UC1", msg_type=SimpleNamespace)
    assert compressed_to_numpy(compressed_msg(png.data, fmt))[1] == expected


@pytest.mark.parametrize("fmt, expected", [
    ("jpeg", "bgr8"), ("png", "bgr8"), ("rgb8; png compressed bgr8", "bgr8"), ("rgb8; png compressed rgb8", "rgb8"),
    ("rgb8; png compressed", "bgr8"),  # no target: colour order is OpenCV's
])
def test_color_encoding_follows_the_target_layout(fmt, expected):
    png = numpy_to_compressed(random_image("bgr8", 5, 5, seed=18), "bgr8", msg_type=SimpleNamespace)
    assert compressed_to_numpy(compressed_msg(png.data, fmt))[1] == expected


@pytest.mark.parametrize("encoding", ["rgb8", "bgr8", "mono8"])
def test_jpeg_round_trip_is_close(encoding):
    rgb = smooth_rgb()
    arr = {"rgb8": rgb, "bgr8": rgb[..., ::-1], "mono8": rgb[..., 0]}[encoding]
    msg = numpy_to_compressed(arr, encoding, fmt="jpeg", jpeg_quality=90, msg_type=SimpleNamespace)
    assert msg.format.startswith(f"{encoding}; jpeg compressed ")
    assert bytes(msg.data[:2]) == b"\xff\xd8"
    expected = to_rgb8(np.ascontiguousarray(arr), encoding).astype(np.int16)
    assert np.abs(decode_to_rgb8(msg).astype(np.int16) - expected).mean() < 3


def test_jpeg_quality_is_validated():
    with pytest.raises(ValueError, match="jpeg_quality must be in 0..100, got 101"):
        numpy_to_compressed(smooth_rgb(), "rgb8", fmt="jpeg", jpeg_quality=101, msg_type=SimpleNamespace)


# --- colour conversion ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("encoding, pixel, rgb", [
    ("rgb8", (255, 0, 0), (255, 0, 0)),
    ("bgr8", (0, 0, 255), (255, 0, 0)),
    ("bgr8", (10, 20, 30), (30, 20, 10)),
    ("rgba8", (10, 20, 30, 40), (10, 20, 30)),
    ("bgra8", (30, 20, 10, 40), (10, 20, 30)),
    ("mono8", 77, (77, 77, 77)),
    ("mono16", 0xAB12, (0xAB, 0xAB, 0xAB)),
    ("16UC1", 0x01FF, (1, 1, 1)),
])
def test_to_rgb8_maps_a_known_pixel(encoding, pixel, rgb):
    dtype, channels = ENCODINGS[encoding]
    arr = np.zeros((3, 5) if channels == 1 else (3, 5, channels), dtype)
    arr[1, 2] = pixel
    out = to_rgb8(arr, encoding)
    assert out.shape == (3, 5, 3) and out.dtype == np.uint8
    assert tuple(out[1, 2]) == rgb and not out[0].any()
    msg = numpy_to_image(arr, encoding, msg_type=SimpleNamespace)
    assert np.array_equal(decode_to_rgb8(msg), out)


def test_to_rgb8_rejects_depth():
    with pytest.raises(UnsupportedEncodingError, match="32FC1 is depth, not a colour image"):
        to_rgb8(np.zeros((2, 2), np.float32), "32FC1")


# --- depth ---------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("encoding", ["16UC1", "mono16"])
def test_millimetre_depth_becomes_metres_with_nan_holes(encoding):
    mm = np.array([[1500, 0], [1, 65535]], np.uint16)
    depth = decode_depth(numpy_to_image(mm, encoding, msg_type=SimpleNamespace))
    assert depth.dtype == np.float32
    assert depth[0, 0] == np.float32(1.5) and np.isnan(depth[0, 1])
    assert depth[1, 0] == np.float32(0.001) and depth[1, 1] == np.float32(65.535)
    compressed = numpy_to_compressed(mm, encoding, msg_type=SimpleNamespace)
    assert same_bits(decode_depth(compressed), depth)


def test_float_depth_passes_through():
    metres = np.array([[1.25, np.nan], [np.inf, 0.0]], np.float32)
    msg = raw_msg(metres, "32FC1")
    depth = decode_depth(msg)
    assert same_bits(depth, metres) and np.shares_memory(depth, np.frombuffer(msg.data, np.uint8))
    assert same_bits(decode_depth(raw_msg(metres, "32FC1", pad=2, big_endian=True)), metres)


@pytest.mark.parametrize("encoding", ["rgb8", "mono8", "yuv422"])
def test_decode_depth_rejects_other_encodings(encoding):
    msg = SimpleNamespace(height=1, width=1, encoding=encoding, is_bigendian=0, step=3, data=bytes(3))
    with pytest.raises(UnsupportedEncodingError, match=f"Depth must be one of 16UC1, mono16, 32FC1; got '{encoding}'"):
        decode_depth(msg)


def test_decode_depth_rejects_color_compressed():
    png = numpy_to_compressed(np.zeros((2, 2), np.uint8), "mono8", msg_type=SimpleNamespace)
    with pytest.raises(UnsupportedEncodingError, match="got 'mono8'"):
        decode_depth(png)


# --- dependencies --------------------------------------------------------------------------------------------------

def test_module_imports_without_ros_or_torch():
    blocked = "import sys\nfor name in ('rclpy', 'sensor_msgs', 'std_msgs', 'torch', 'rosbags'):\n" \
              "    sys.modules[name] = None\nimport seg_node.processing.image_codec\n"
    subprocess.run([sys.executable, "-c", blocked], check=True)
