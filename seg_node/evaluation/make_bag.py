"""``make_bag``: a ROS 2 bag (sqlite3 or MCAP, written with rosbags, no ROS installation) for ``bag_eval``, from a
folder of images with optional ground-truth masks, or from a seeded synthetic scene generator.

    make_bag --output BAG --images DIR [--gt DIR] [--rate HZ] [--storage sqlite3|mcap] [--compress png|jpeg]
    make_bag --output BAG --synthetic N [--size HxW] [--objects K] [--seed S] [--noise SIGMA] [--depth]

Frames are stamped ``--start`` + i / ``--rate`` (header stamp and log time alike), so a bag made twice is the same.
Ground truth goes to its own topic as an instance label image with the same header: a 16-bit PNG becomes mono16
(values are instance ids, 0 = background), an 8-bit one-channel PNG mono16 too, a colour PNG rgb8 (one instance per
colour, black = background). The ground-truth file of an image is the one with the same stem in ``--gt``.

The synthetic generator draws flat-coloured ellipses, boxes and trapezoids on a black background, each moving inside
its own cell of a grid (so objects never occlude each other and keep their ids: the ground truth is exact), with
optional per-pixel noise, a depth image and camera info. It is meant for plumbing and for checking metrics (a model
that returned the frame itself as its colour map would be perfect on it). Richer procedural scenes for training come
from ``training.synthetic``.
"""
from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence

import cv2
import numpy as np

from seg_node.cli.common import hw_parser
from seg_node.evaluation.bag_io import DEFAULT_TOPICS, IMAGE, STORAGES, make_header, make_typestore, open_writer
from seg_node.processing.image_codec import ImageCodecError, numpy_to_compressed, numpy_to_image

__all__ = ["BagFrame", "write_bag", "synthetic_frames", "main", "PALETTE"]

EXIT_OK, EXIT_SOME_FAILED, EXIT_USAGE = 0, 1, 2
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")
GT_SUFFIXES = (".png", ".tif", ".tiff")
DEFAULT_START = 1_700_000_000.0  # s; fixed so that a bag made twice is identical
# Synthetic objects keep this many pixels from their cell's walls: background strips between an object and the
# image edge narrower than that are, at present, absorbed into the object by label_instances.
_MARGIN = 8


def _distinct_palette(min_distance: float = 80.0) -> np.ndarray:
    # Sasha Trubetskoy's 20 distinct colours, kept greedily while at least min_distance apart (RGB) from each other
    # and from black, so colour-based segmentation cannot confuse two objects or an object with the background.
    base = [(230, 25, 75), (60, 180, 75), (255, 225, 25), (0, 130, 200), (245, 130, 48), (145, 30, 180), (70, 240, 240),
            (240, 50, 230), (210, 245, 60), (250, 190, 212), (0, 128, 128), (220, 190, 255), (170, 110, 40),
            (255, 250, 200), (128, 0, 0), (170, 255, 195), (128, 128, 0), (255, 215, 180), (0, 0, 128), (128, 128, 128)]
    kept: list[tuple[int, int, int]] = []
    for c in base:
        v = np.array(c, float)
        if np.linalg.norm(v) >= min_distance and all(np.linalg.norm(v - np.array(k, float)) >= min_distance for k in kept):
            kept.append(c)
    return np.array(kept, np.uint8)


PALETTE = _distinct_palette()


@dataclass
class BagFrame:
    """One frame to write: RGB uint8 H×W×3, optional ground truth (uint16/uint8 ids, int32 ids as 32SC1, or uint8
    H×W×3 RGB instance colours) and optional float32 depth in metres. ``rgb=None`` writes the rest without an image
    (ground truth for a frame that is missing, for tests of bag_eval)."""

    rgb: np.ndarray | None
    gt: np.ndarray | None = None
    depth: np.ndarray | None = None


def _gt_message(gt: np.ndarray, header: Any, store: Any) -> Any:
    image_t = store.types[IMAGE]
    if gt.ndim == 3 and gt.shape[2] == 3 and gt.dtype == np.uint8:
        return numpy_to_image(gt, "rgb8", header=header, msg_type=image_t)
    if gt.ndim == 2 and gt.dtype == np.int32:  # 32SC1: not an image_codec encoding, so built here
        little = np.ascontiguousarray(gt, dtype="<i4")
        return image_t(header=header, height=gt.shape[0], width=gt.shape[1], encoding="32SC1", is_bigendian=0,
                       step=4 * gt.shape[1], data=little.view(np.uint8).reshape(-1).copy())
    if gt.ndim == 2 and gt.dtype in (np.uint8, np.uint16):
        return numpy_to_image(gt.astype(np.uint16), "mono16", header=header, msg_type=image_t)
    raise ValueError(f"ground truth must be uint16/uint8/int32 H×W ids or uint8 H×W×3 colours, got {gt.dtype} {gt.shape}")


def write_bag(path: Path, frames: Iterable[BagFrame], storage: str = "sqlite3", rate: float = 10.0,
              start: float = DEFAULT_START, image_topic: str | None = None, gt_topic: str = DEFAULT_TOPICS["gt"],
              depth_topic: str = DEFAULT_TOPICS["depth"], camera_info_topic: str = DEFAULT_TOPICS["info"],
              frame_id: str = "camera", compress: str | None = None, camera_k: Sequence[float] | None = None,
              stamps: Sequence[int] | None = None) -> dict[str, int]:
    """Write frames to a new bag folder ``path``; returns messages written per topic.

    Topics are created as the first frame needs them. ``compress`` ('png' or 'jpeg') writes the images as
    CompressedImage (default topic ``/camera/image_raw/compressed``). With depth, camera info with ``camera_k``
    (fx, fy, cx, cy; default a 60° horizontal field of view) is written too. ``stamps`` gives the stamps (ns)
    frame by frame instead of ``start`` + i / ``rate``.
    """
    store = make_typestore()
    if rate <= 0:
        raise ValueError(f"rate must be > 0 Hz, got {rate}")
    image_topic = image_topic or DEFAULT_TOPICS["compressed" if compress else "image"]
    start_ns = int(round(start * 1e6)) * 1000  # via microseconds: start * 1e9 is beyond float64's exact integers
    writer = open_writer(Path(path), storage)
    conns: dict[str, Any] = {}
    counts: dict[str, int] = {}

    def put(topic: str, msgtype: str, msg: Any, t: int) -> None:
        if topic not in conns:
            conns[topic] = writer.add_connection(topic, msgtype, typestore=store)
        writer.write(conns[topic], t, store.serialize_cdr(msg, msgtype))
        counts[topic] = counts.get(topic, 0) + 1

    try:
        for i, frame in enumerate(frames):
            t = start_ns + int(round(i * 1e9 / rate)) if stamps is None else int(stamps[i])
            header = make_header(store, t, frame_id)
            if frame.rgb is None:
                pass
            elif compress:
                msg = numpy_to_compressed(frame.rgb, "rgb8", compress, header=header,
                                          msg_type=store.types["sensor_msgs/msg/CompressedImage"])
                put(image_topic, "sensor_msgs/msg/CompressedImage", msg, t)
            else:
                put(image_topic, IMAGE, numpy_to_image(frame.rgb, "rgb8", header=header, msg_type=store.types[IMAGE]), t)
            if frame.gt is not None:
                put(gt_topic, IMAGE, _gt_message(frame.gt, header, store), t)
            if frame.depth is not None:
                depth = np.ascontiguousarray(frame.depth, dtype=np.float32)
                put(depth_topic, IMAGE, numpy_to_image(depth, "32FC1", header=header, msg_type=store.types[IMAGE]), t)
                put(camera_info_topic, "sensor_msgs/msg/CameraInfo", _camera_info(store, header, depth.shape, camera_k), t)
    finally:
        writer.close()
    return counts


def _camera_info(store: Any, header: Any, shape: tuple[int, ...], k: Sequence[float] | None) -> Any:
    h, w = shape[:2]
    fx, fy, cx, cy = k if k is not None else (w / (2 * np.tan(np.radians(30))),) * 2 + ((w - 1) / 2, (h - 1) / 2)
    info_t, roi_t = store.types["sensor_msgs/msg/CameraInfo"], store.types["sensor_msgs/msg/RegionOfInterest"]
    return info_t(header=header, height=h, width=w, distortion_model="plumb_bob", d=np.zeros(5),
                  k=np.array([fx, 0, cx, 0, fy, cy, 0, 0, 1], float), r=np.eye(3).ravel(),
                  p=np.array([fx, 0, cx, 0, 0, fy, cy, 0, 0, 0, 1, 0], float), binning_x=0, binning_y=0,
                  roi=roi_t(x_offset=0, y_offset=0, height=0, width=0, do_rectify=False))


# ----------------------------------------------------------------------------------------------- synthetic scenes


def synthetic_frames(n: int, size: tuple[int, int] = (240, 320), objects: int = 6, seed: int = 0, noise: float = 0.0,
                     depth: bool = False, speed: float = 2.0) -> Iterator[BagFrame]:
    """``n`` frames (H, W = ``size``) of ``objects`` flat-coloured shapes moving on black, with exact uint16 ground
    truth whose ids (1..objects) are stable over frames. Seeded: the same arguments give the same frames.
    Raises ValueError for impossible arguments at the call, not at the first frame."""
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    if not 1 <= objects <= len(PALETTE):
        raise ValueError(f"objects must be in [1, {len(PALETTE)}] (distinct colours available), got {objects}")
    h, w = size
    rows = int(np.floor(np.sqrt(objects * h / w))) or 1
    cols = -(-objects // rows)
    rows = -(-objects // cols)
    ch, cw = h // rows, w // cols
    if min(ch, cw) < 12 + 2 * _MARGIN:
        raise ValueError(f"{objects} objects do not fit in {w}x{h}: each needs a cell of at least "
                         f"{12 + 2 * _MARGIN}x{12 + 2 * _MARGIN} px")
    rng = np.random.default_rng(seed)
    colors = PALETTE[rng.permutation(len(PALETTE))[:objects]]
    cells = rng.permutation(rows * cols)[:objects]
    shapes = []
    for i, cell in enumerate(cells):
        r, c = divmod(int(cell), cols)
        room_h, room_w = ch - 2 * _MARGIN, cw - 2 * _MARGIN
        bh, bw = max(10, int(room_h * rng.uniform(0.35, 0.9))), max(10, int(room_w * rng.uniform(0.35, 0.9)))
        lo = np.array([c * cw + _MARGIN, r * ch + _MARGIN], float)
        hi = np.array([(c + 1) * cw - bw - _MARGIN, (r + 1) * ch - bh - _MARGIN], float)
        pos = lo + rng.uniform(0, 1, 2) * np.maximum(hi - lo, 0)
        vel = rng.uniform(-speed, speed, 2)
        shapes.append(dict(kind=("ellipse", "box", "trapezoid")[i % 3], size=(bw, bh), lo=lo, hi=np.maximum(hi, lo),
                           pos=pos, vel=vel, color=tuple(int(v) for v in colors[i]), depth=1.0 + 0.15 * i))
    return _animate(shapes, n, (h, w), rng, noise, depth)


def _animate(shapes: list[dict], n: int, size: tuple[int, int], rng: np.random.Generator, noise: float,
             depth: bool) -> Iterator[BagFrame]:
    h, w = size
    for _ in range(n):
        gt = np.zeros((h, w), np.uint16)
        for i, s in enumerate(shapes, 1):
            _draw(gt, s, i)
        rgb = np.zeros((h, w, 3), np.uint8)
        for i, s in enumerate(shapes, 1):
            rgb[gt == i] = s["color"]
        if noise > 0:
            rgb = np.clip(rgb + rng.normal(0, noise, rgb.shape), 0, 255).astype(np.uint8)
        d = None
        if depth:
            d = np.full((h, w), 2.0, np.float32)
            for i, s in enumerate(shapes, 1):
                d[gt == i] = s["depth"]
        yield BagFrame(rgb, gt, d)
        for s in shapes:  # move, bouncing off the cell walls
            s["pos"] = s["pos"] + s["vel"]
            for k in range(2):
                if s["pos"][k] < s["lo"][k] or s["pos"][k] > s["hi"][k]:
                    s["vel"][k] = -s["vel"][k]
                    s["pos"][k] = float(np.clip(s["pos"][k], s["lo"][k], s["hi"][k]))


def _draw(gt: np.ndarray, s: dict, value: int) -> None:
    x, y = (int(round(v)) for v in s["pos"])
    bw, bh = s["size"]
    if s["kind"] == "ellipse":
        cv2.ellipse(gt, (x + bw // 2, y + bh // 2), (bw // 2, bh // 2), 0, 0, 360, value, -1)
    elif s["kind"] == "box":
        cv2.rectangle(gt, (x, y), (x + bw - 1, y + bh - 1), value, -1)
    else:
        # A trapezoid rather than a triangle: label_instances (rightly) gives up 1-px tips, which would make the
        # synthetic ground truth unreachable for a perfect colour map.
        top = max(6, bw // 2)
        x0 = x + (bw - top) // 2
        cv2.fillPoly(gt, [np.array([(x, y + bh - 1), (x + bw - 1, y + bh - 1), (x0 + top - 1, y), (x0, y)], np.int32)], value)


# ----------------------------------------------------------------------------------------------- folders


def _read_image(path: Path, flags: int) -> np.ndarray:
    data = np.fromfile(str(path), dtype=np.uint8)
    img = cv2.imdecode(data, flags) if data.size else None
    if img is None:
        raise OSError(f"{path}: not a readable image (empty, truncated or an unsupported format)")
    return img


def _read_gt(path: Path) -> np.ndarray:
    img = _read_image(path, cv2.IMREAD_UNCHANGED)
    if img.ndim == 2 and img.dtype in (np.uint8, np.uint16):
        return img.astype(np.uint16)
    if img.ndim == 3 and img.dtype == np.uint8 and img.shape[2] in (3, 4):
        return cv2.cvtColor(img[..., :3], cv2.COLOR_BGR2RGB)
    raise OSError(f"{path}: ground truth must be a one-channel 8/16-bit PNG of instance ids or an 8-bit colour PNG "
                  f"of instance colours, got {img.dtype} with shape {img.shape}")


def _folder_frames(images: Sequence[Path], gt_dir: Path | None, problems: list[str], sizes: set) -> Iterator[BagFrame]:
    for path in images:
        try:
            rgb = cv2.cvtColor(_read_image(path, cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
        except OSError as exc:
            problems.append(str(exc))
            print(f"make_bag: skipped {exc}", file=sys.stderr)
            continue
        sizes.add(rgb.shape[:2])
        gt = None
        if gt_dir is not None:
            match = next((gt_dir / (path.stem + s) for s in GT_SUFFIXES if (gt_dir / (path.stem + s)).is_file()), None)
            if match is None:
                problems.append(f"{path.name}: no ground truth {path.stem}.png in {gt_dir}")
                print(f"make_bag: {problems[-1]}; written without ground truth", file=sys.stderr)
            else:
                try:
                    gt = _read_gt(match)
                    if gt.shape[:2] != rgb.shape[:2]:
                        raise OSError(f"{match}: ground truth is {gt.shape[1]}x{gt.shape[0]}, its image {rgb.shape[1]}x{rgb.shape[0]}")
                except OSError as exc:
                    problems.append(str(exc))
                    print(f"make_bag: {exc}; written without ground truth", file=sys.stderr)
                    gt = None
        yield BagFrame(rgb, gt)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="make_bag", description="Write a ROS 2 bag (sqlite3 or MCAP) for bag_eval from a "
                                "folder of images with optional ground-truth masks, or from a synthetic scene generator.")
    p.add_argument("--output", required=True, type=Path, help="bag folder to create (must not exist)")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--images", type=Path, help="folder of images, written in name order")
    src.add_argument("--synthetic", type=int, metavar="N", help="N synthetic frames instead of a folder")
    p.add_argument("--gt", type=Path, help="folder of ground-truth masks named like the images (16-bit ids or colour PNG)")
    p.add_argument("--storage", choices=STORAGES, default="sqlite3", help="default sqlite3")
    p.add_argument("--rate", type=float, default=10.0, help="frames per second for the stamps (default 10)")
    p.add_argument("--start", type=float, default=DEFAULT_START, help=f"first stamp, s since the epoch (default {DEFAULT_START:.0f})")
    p.add_argument("--image-topic", help="default /camera/image_raw (/camera/image_raw/compressed with --compress)")
    p.add_argument("--gt-topic", default=DEFAULT_TOPICS["gt"], help=f"default {DEFAULT_TOPICS['gt']} (bag_eval's default too)")
    p.add_argument("--frame-id", default="camera")
    p.add_argument("--compress", choices=("png", "jpeg"), help="write CompressedImage instead of raw rgb8")
    s = p.add_argument_group("synthetic")
    s.add_argument("--size", type=hw_parser(16), default=(240, 320), help="HxW, height first (default 240x320)")
    s.add_argument("--objects", type=int, default=6, help=f"objects per frame, 1..{len(PALETTE)} (default 6)")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--noise", type=float, default=0.0, help="per-pixel Gaussian noise sigma on 0..255 (default 0)")
    s.add_argument("--depth", action="store_true", help="also write a 32FC1 depth image and camera info per frame")
    args = p.parse_args(argv)

    if args.output.exists():
        print(f"make_bag: error: {args.output} exists; choose a new bag folder", file=sys.stderr)
        return EXIT_USAGE
    if args.rate <= 0:
        print(f"make_bag: error: --rate must be > 0, got {args.rate}", file=sys.stderr)
        return EXIT_USAGE
    problems: list[str] = []
    sizes: set = set()
    if args.synthetic is not None:
        if args.gt is not None:
            print("make_bag: error: --gt goes with --images; synthetic frames carry their own ground truth", file=sys.stderr)
            return EXIT_USAGE
        if args.synthetic < 1:
            print(f"make_bag: error: --synthetic needs at least 1 frame, got {args.synthetic}", file=sys.stderr)
            return EXIT_USAGE
        try:
            frames: Iterable[BagFrame] = synthetic_frames(args.synthetic, args.size, args.objects, args.seed, args.noise, args.depth)
        except ValueError as exc:
            print(f"make_bag: error: {exc}", file=sys.stderr)
            return EXIT_USAGE
        source = f"{args.synthetic} synthetic frames (seed {args.seed})"
    else:
        if not args.images.is_dir():
            print(f"make_bag: error: --images {args.images}: not a folder", file=sys.stderr)
            return EXIT_USAGE
        if args.gt is not None and not args.gt.is_dir():
            print(f"make_bag: error: --gt {args.gt}: not a folder", file=sys.stderr)
            return EXIT_USAGE
        images = sorted(f for f in args.images.iterdir() if f.suffix.lower() in IMAGE_SUFFIXES and f.is_file())
        if not images:
            print(f"make_bag: error: no images ({', '.join(IMAGE_SUFFIXES)}) in {args.images}", file=sys.stderr)
            return EXIT_USAGE
        if args.gt is not None:
            stems = {f.stem for f in images}
            for f in sorted(args.gt.iterdir()):
                if f.suffix.lower() in GT_SUFFIXES and f.stem not in stems:
                    problems.append(f"{f}: ground truth without an image")
                    print(f"make_bag: {problems[-1]}; ignored", file=sys.stderr)
        frames = _folder_frames(images, args.gt, problems, sizes)
        source = f"{len(images)} images from {args.images}"
    try:
        counts = write_bag(args.output, frames, args.storage, args.rate, args.start, args.image_topic, args.gt_topic,
                           frame_id=args.frame_id, compress=args.compress)
    except (ValueError, ImageCodecError, OSError, ImportError) as exc:
        print(f"make_bag: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    if len(sizes) > 1:
        print(f"make_bag: note: the images have {len(sizes)} different sizes; bag_eval skips frames whose size differs from "
              "the first frame's unless --allow-mixed-resolution", file=sys.stderr)
    topics = ", ".join(f"{n} on {t}" for t, n in counts.items()) or "no messages"
    print(f"wrote {args.output} ({args.storage}) from {source}: {topics}")
    return EXIT_SOME_FAILED if problems else EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
