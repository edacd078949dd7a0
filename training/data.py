"""Training data: Hypersim, Virtual KITTI 2 and synthetic tabletop scenes, their augmentations, and a sharded 9:1
batch mixer.

Every dataset yields ``{"rgb": uint8 3×H×W, "target": uint8 3×H×W instance colours (black = background),
"no_bg": bool, "source": int}``; the trainer normalises the RGB for its model family. Ground truth is only ever
resampled with nearest neighbour, so the instance colours stay exact (the loss groups pixels by exact colour).

Expected on-disk trees
======================

Hypersim (as the ml-hypersim download scripts unpack it), plus the instance PNGs written by ``hypersim_to_png``::

    ROOT/ai_001_001/images/scene_cam_00_final_preview/frame.0000.color.jpg          RGB, 1024×768
    ROOT/ai_001_001/images/scene_cam_00_geometry_hdf5/frame.0000.semantic_instance.hdf5
                                                    dataset "dataset": int H×W instance ids, -1 = unlabelled
    INSTANCES/ai_001_001/images/scene_cam_00_geometry_hdf5/frame.0000.png
                                                    instance colours, black = background (gen2seg's "instance-rgb")

``INSTANCES`` defaults to ``ROOT/instance-rgb``. Frames without an instance PNG are not used (the converter drops
frames without annotations and scenes with fewer than 10 annotated objects, as the gen2seg README advises).

Virtual KITTI 2 (the ``rgb`` and ``instanceSegmentation`` archives unpacked into one ROOT, or each into its own
folder under ROOT, e.g. ``vkitti_2.0.3_rgb/`` and ``vkitti_2.0.3_instanceSegmentation/``)::

    ROOT/[...]/Scene01/morning/frames/rgb/Camera_0/rgb_00000.jpg                     RGB, 1242×375
    ROOT/[...]/Scene01/morning/frames/instanceSegmentation/Camera_0/instancegt_00000.png
                                                    car instances: palette/grey ids or RGB colours, 0/black = none

Scenes Scene01/02/06/18/20, the variations gen2seg used (morning, fog, rain, sunset, overcast) by default, both
cameras. Only cars are labelled, so VKITTI samples have ``no_bg`` set: the loss ignores their background.

Augmentation (docs/design.md, "Training recipe"): horizontal flip with p = 0.5, then per dataset and model family
either a resize (Hypersim; SD 480×640, MAE the ViT's square input, aspect squashed; synthetic scenes likewise) or a
random crop at native scale that keeps at least one instance in view (VKITTI; SD 368×1024, MAE the ViT input),
tried up to 1000 times (``training.augment``).

Sharding: ``MixedBatchSampler`` draws each batch whole from one dataset at the given ratio (9:1 Hypersim:VKITTI in
gen2seg) and gives every rank its own disjoint part of each global batch, the semantics of ``DistributedSampler``
(``num_replicas``, ``rank``, ``set_epoch``). The official ``MixedDataLoader`` was not sharded, so every GPU saw the
same batches. The sampler's keys carry a per-sample augmentation seed, so an epoch is reproducible and a run
resumes mid-epoch exactly.
"""
from __future__ import annotations

import json
import re
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset, Sampler

from training.augment import Augment, labels_from_colors  # labels_from_colors: also this module's API
from training.synthetic import SceneGenerator

__all__ = [
    "HypersimDataset", "VKitti2Dataset", "SyntheticDataset", "ShardDataset", "MixedDataset", "MixedBatchSampler",
    "instance_colors", "labels_from_colors", "family_augment", "VKITTI_SCENES", "VKITTI_VARIATIONS",
]

VKITTI_SCENES = ("Scene01", "Scene02", "Scene06", "Scene18", "Scene20")
VKITTI_VARIATIONS = ("morning", "fog", "rain", "sunset", "overcast")
SOURCES = ("hypersim", "vkitti", "synthetic", "shards")

# x ↦ x·a mod (2²⁴ − 1) permutes 1..2²⁴−2 (a is coprime to the modulus): ids get distinct colours, spread over the
# cube, never black (0) and never white (2²⁴ − 1).
_COLOR_MODULUS = (1 << 24) - 1
_COLOR_MULTIPLIER = 0x9E3779


def instance_colors(labels: np.ndarray) -> np.ndarray:
    """H×W integer ids (0 = background) → uint8 H×W×3 colours: black background, a distinct colour per id."""
    ids = np.asarray(labels).astype(np.int64)
    if ids.size and (ids.min() < 0 or ids.max() >= _COLOR_MODULUS):
        raise ValueError(f"instance ids must lie in 0..{_COLOR_MODULUS - 1}")
    code = (ids * _COLOR_MULTIPLIER) % _COLOR_MODULUS
    return np.stack([(code >> 16) & 255, (code >> 8) & 255, code & 255], -1).astype(np.uint8)


# ------------------------------------------------------------------------------------------------- augmentation


def family_augment(source: str, family: str, input_hw: tuple[int, int] | None = None,
                   min_share: float | None = None) -> Augment:
    """§3's augmentation for a data source and model family (``input_hw``: the MAE's fixed input size, or a
    synthetic-scene size for SD and conv, which take any size and are augmented alike; ``min_share``: how
    shrinking resizes the instances, ``Augment.min_share``)."""
    if source not in SOURCES:
        raise ValueError(f"source must be one of {SOURCES}, got {source!r}")
    if family == "mae":
        if input_hw is None:
            raise ValueError("the MAE family needs its input size")
        return Augment(input_hw, "crop" if source == "vkitti" else "resize", min_share=min_share)
    if family not in ("sd", "conv"):
        raise ValueError(f"family must be 'sd', 'mae' or 'conv', got {family!r}")
    if source == "hypersim":
        return Augment((480, 640), min_share=min_share)
    if source == "vkitti":
        return Augment((368, 1024), "crop")
    return Augment(input_hw or (256, 320), min_share=min_share)


def _sample(rgb: np.ndarray, target: np.ndarray, no_bg: bool, source: str) -> dict[str, Any]:
    return {"rgb": torch.from_numpy(np.ascontiguousarray(rgb.transpose(2, 0, 1))),
            "target": torch.from_numpy(np.ascontiguousarray(target.transpose(2, 0, 1))),
            "no_bg": no_bg, "source": SOURCES.index(source)}


def _read_rgb(path: Path) -> np.ndarray:
    img = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if img is None:
        raise OSError(f"{path}: cannot be read as an image")
    return cv2.cvtColor(img, cv2.COLOR_BGR2RGB)


class _Source(Dataset):
    """A dataset whose items take an augmentation seed: ``dataset[(index, seed)]`` or ``dataset[index]``."""

    def get(self, index: int, rng: np.random.Generator) -> dict[str, Any]:
        raise NotImplementedError

    def __getitem__(self, key: int | tuple[int, int]) -> dict[str, Any]:
        index, seed = key if isinstance(key, tuple) else (key, None)
        return self.get(int(index), np.random.default_rng(seed))


# --------------------------------------------------------------------------------------------------- datasets


class HypersimDataset(_Source):
    """Hypersim frames with instance PNGs (see the module docstring for the tree)."""

    def __init__(self, root: str | Path, augment: Augment, instance_root: str | Path | None = None) -> None:
        self.root = Path(root)
        self.instance_root = Path(instance_root) if instance_root is not None else self.root / "instance-rgb"
        self.augment = augment
        self.pairs: list[tuple[Path, Path]] = []
        for rgb in sorted(self.root.glob("*/images/scene_cam_*_final_preview/frame.*.color.jpg")):
            frame = rgb.name.split(".")[1]
            camera = rgb.parent.name.replace("_final_preview", "_geometry_hdf5")
            inst = self.instance_root / rgb.parents[2].name / "images" / camera / f"frame.{frame}.png"
            if inst.is_file():
                self.pairs.append((rgb, inst))
        if not self.pairs:
            raise FileNotFoundError(f"{self.root}: no Hypersim frame with an instance PNG under {self.instance_root} "
                                    "(expected */images/scene_cam_*_final_preview/frame.*.color.jpg; run hypersim_to_png)")

    def __len__(self) -> int:
        return len(self.pairs)

    def get(self, index: int, rng: np.random.Generator) -> dict[str, Any]:
        rgb_path, inst_path = self.pairs[index]
        rgb, target = self.augment(_read_rgb(rgb_path), _read_rgb(inst_path), rng)
        return _sample(rgb, target, False, "hypersim")


class VKitti2Dataset(_Source):
    """Virtual KITTI 2 frames with car instances; the background is unlabelled (``no_bg``)."""

    def __init__(self, root: str | Path, augment: Augment, scenes: Sequence[str] = VKITTI_SCENES,
                 variations: Sequence[str] | None = VKITTI_VARIATIONS) -> None:
        self.root = Path(root)
        self.augment = augment
        pattern = re.compile(r"(Scene\d+)/([^/]+)/frames/(rgb|instance[sS]egmentation)/(Camera_\d+)/"
                             r"(?:rgb|instancegt)_(\d+)\.(?:jpg|png)$")
        found: dict[tuple[str, ...], dict[str, Path]] = {}
        for path in self.root.rglob("Camera_*/*_*.*"):
            m = pattern.search(path.relative_to(self.root).as_posix())
            if m is None or m.group(1) not in scenes or (variations is not None and m.group(2) not in variations):
                continue
            kind = "rgb" if m.group(3) == "rgb" else "instance"
            found.setdefault((m.group(1), m.group(2), m.group(4), m.group(5)), {})[kind] = path
        self.pairs = [(v["rgb"], v["instance"]) for _, v in sorted(found.items()) if len(v) == 2]
        if not self.pairs:
            raise FileNotFoundError(f"{self.root}: no Virtual KITTI 2 rgb/instancegt pair for scenes {list(scenes)}, "
                                    f"variations {variations} (expected SceneNN/<variation>/frames/{{rgb,"
                                    "instanceSegmentation}/Camera_N/...)")

    def __len__(self) -> int:
        return len(self.pairs)

    def get(self, index: int, rng: np.random.Generator) -> dict[str, Any]:
        rgb_path, inst_path = self.pairs[index]
        with Image.open(inst_path) as img:
            # Palette / grey PNGs carry ids; RGB ones colours. Either way: one instance per distinct value.
            raw = np.asarray(img.convert("RGB") if img.mode in ("RGB", "RGBA") else img)
        ids = labels_from_colors(raw) if raw.ndim == 3 else raw.astype(np.int64)
        rgb, target = self.augment(_read_rgb(rgb_path), instance_colors(ids), rng)
        return _sample(rgb, target, True, "vkitti")


class SyntheticDataset(_Source):
    """``length`` procedural scenes (``training.synthetic``); scene i is always the same scene."""

    def __init__(self, generator: SceneGenerator, length: int, augment: Augment) -> None:
        if length < 1:
            raise ValueError(f"length must be >= 1, got {length}")
        self.generator, self.length, self.augment = generator, int(length), augment

    def __len__(self) -> int:
        return self.length

    def get(self, index: int, rng: np.random.Generator) -> dict[str, Any]:
        if not 0 <= index < self.length:
            raise IndexError(f"scene {index} out of range 0..{self.length - 1}")
        scene = self.generator.scene(index)
        rgb, target = self.augment(scene.rgb, instance_colors(scene.labels), rng)
        return _sample(rgb, target, False, "synthetic")


class ShardDataset(_Source):
    """Pairs from MaskSyn/ImgSyn shards (``training.imgsyn``): each folder's ``manifest.json`` lists
    ``NNNNNN_rgb.png`` + uint16 ``NNNNNN_labels.png`` (0 = background); ``root`` is a shard or holds shards."""

    def __init__(self, root: str | Path, augment: Augment) -> None:
        self.root, self.augment = Path(root), augment
        manifests = [self.root / "manifest.json"] if (self.root / "manifest.json").is_file() else \
            sorted(self.root.glob("*/manifest.json"))
        self.pairs: list[tuple[Path, Path]] = []
        for manifest in manifests:
            try:
                samples = json.loads(manifest.read_text())["samples"]
                self.pairs += [(manifest.parent / s["image"], manifest.parent / s["labels"]) for s in samples]
            except (OSError, ValueError, KeyError, TypeError) as exc:
                raise ValueError(f"{manifest}: not a MaskSyn shard manifest ({exc!r})") from None
        if not self.pairs:
            raise FileNotFoundError(f"{self.root}: no MaskSyn shard (manifest.json here or in its sub-folders; "
                                    "write one with masksyn)")

    def __len__(self) -> int:
        return len(self.pairs)

    def get(self, index: int, rng: np.random.Generator) -> dict[str, Any]:
        rgb_path, labels_path = self.pairs[index]
        labels = cv2.imread(str(labels_path), cv2.IMREAD_UNCHANGED)
        if labels is None or labels.ndim != 2:
            raise OSError(f"{labels_path}: cannot be read as a single-channel label image")
        rgb, target = self.augment(_read_rgb(rgb_path), instance_colors(labels), rng)
        return _sample(rgb, target, False, "shards")


class MixedDataset(Dataset):
    """Several datasets behind one index space (dataset i's items at offsets[i]...), keys as for ``_Source``."""

    def __init__(self, datasets: Sequence[Dataset]) -> None:
        if not datasets:
            raise ValueError("need at least one dataset")
        self.datasets = list(datasets)
        self.offsets = np.cumsum([0] + [len(d) for d in self.datasets])  # type: ignore[arg-type]

    def __len__(self) -> int:
        return int(self.offsets[-1])

    def __getitem__(self, key: int | tuple[int, int]) -> dict[str, Any]:
        index, seed = key if isinstance(key, tuple) else (key, None)
        which = int(np.searchsorted(self.offsets, index, side="right")) - 1
        if not 0 <= which < len(self.datasets):
            raise IndexError(f"index {index} out of range 0..{len(self) - 1}")
        local = int(index - self.offsets[which])
        return self.datasets[which][(local, seed) if seed is not None else local]


# --------------------------------------------------------------------------------------------------- sampling


class MixedBatchSampler(Sampler[list[tuple[int, int]]]):
    """Batches of ``batch_size`` keys ``(index into a MixedDataset, augmentation seed)`` for one rank.

    Each epoch every dataset is shuffled (the same permutation on every rank: seeded by ``seed`` and the epoch)
    and cut into global batches of ``batch_size × num_replicas``; rank r takes every num_replicas-th sample of each
    global batch, so ranks never share a sample and all ranks draw from the same dataset at the same step.
    Datasets are mixed by ``weights``: the epoch has as many batches as the scarcest dataset (relative to its
    weight) allows, the others are subsampled to match, as gen2seg's ``MixedDataLoader`` does; the order of the
    datasets' batches is shuffled.
    """

    def __init__(self, sizes: Sequence[int], weights: Sequence[float], batch_size: int, num_replicas: int = 1,
                 rank: int = 0, seed: int = 0) -> None:
        if len(sizes) != len(weights) or not sizes:
            raise ValueError(f"need one weight per dataset, got {len(sizes)} sizes and {len(weights)} weights")
        if batch_size < 1 or num_replicas < 1 or not 0 <= rank < num_replicas:
            raise ValueError(f"bad batch_size {batch_size}, num_replicas {num_replicas} or rank {rank}")
        if any(w < 0 for w in weights) or sum(weights) <= 0:
            raise ValueError(f"weights must be >= 0 with a positive sum, got {list(weights)}")
        self.sizes, self.weights = [int(s) for s in sizes], [float(w) for w in weights]
        self.batch_size, self.num_replicas, self.rank, self.seed = batch_size, num_replicas, rank, seed
        self.epoch = 0
        self.skip = 0
        global_batch = batch_size * num_replicas
        available = [s // global_batch for s in self.sizes]
        total = sum(self.weights)
        used = [i for i, w in enumerate(self.weights) if w > 0]
        short = [i for i in used if available[i] == 0]
        if short:
            raise ValueError(f"dataset(s) {short} have fewer than {global_batch} samples (one global batch of "
                             f"{batch_size} × {num_replicas} ranks)")
        epoch = min(available[i] * total / self.weights[i] for i in used)
        self.counts = [max(1, int(epoch * w / total)) if w > 0 else 0 for w in self.weights]
        self.offsets = np.cumsum([0] + self.sizes)

    def set_epoch(self, epoch: int, skip_batches: int = 0) -> None:
        """Start epoch ``epoch`` (as ``DistributedSampler.set_epoch``), leaving out its first ``skip_batches``."""
        self.epoch, self.skip = int(epoch), int(skip_batches)

    def __len__(self) -> int:
        return sum(self.counts)

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        rng = np.random.default_rng([self.seed, self.epoch])
        global_batch = self.batch_size * self.num_replicas
        batches: list[np.ndarray] = []
        for i, count in enumerate(self.counts):
            order = rng.permutation(self.sizes[i])[: count * global_batch] + self.offsets[i]
            batches += list(order.reshape(count, global_batch))
        seeds = rng.integers(0, 2**31, (len(batches), global_batch))
        for b in rng.permutation(len(batches))[self.skip:]:
            yield [(int(k), int(s)) for k, s in zip(batches[b][self.rank::self.num_replicas],
                                                    seeds[b][self.rank::self.num_replicas])]
