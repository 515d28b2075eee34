"""Datasets as (N, C, H, W) float tensors in [-1, 1], and a deterministic shuffling sampler.

Registry: synthetic (procedural, any size), idx (a folder of IDX .gz files), and mnist,
fashion_mnist, cifar10 through torchvision (which downloads only when the machine is online).
Semi-supervised runs (data.labels_per_class > 0) split the labelled data three ways: a
class-balanced labeled subset, the unlabeled rest of the training split, and a test split.
"""

from __future__ import annotations

import gzip
import hashlib
import math
import struct
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler

from capsgan_dist.config import N_CLASSES, DataConfig
from capsgan_dist.errors import DataError

HOW_TO_GET = (
    "get the data: MNIST test digits are in ../shared/data/mnist (use data.name=idx "
    "data.root=../shared/data/mnist), Fashion-MNIST via `apt-get install dataset-fashion-mnist` "
    "(data.name=idx data.root=/usr/share/datasets/fashion-mnist); online machines can use "
    "data.name=mnist|fashion_mnist|cifar10 data.root=<download folder>"
)


class TensorImages(Dataset):
    """Images held in memory as one uint8 tensor (N, C, H, W); items are float in [-1, 1]."""

    def __init__(self, images: torch.Tensor):
        self.images = images

    def __len__(self) -> int:
        return self.images.shape[0]

    def __getitem__(self, i: int) -> torch.Tensor:
        return self.images[i].float().div_(127.5).sub_(1.0)


def synthetic_images(n: int, size: int, channels: int, seed: int = 1234) -> torch.Tensor:
    """Deterministic procedural images: a bright ring of random centre/radius plus a bar, uint8."""
    return synthetic_labeled(n, size, channels, seed)[0]


def synthetic_labeled(n: int, size: int, channels: int, seed: int = 1234) -> tuple[torch.Tensor, torch.Tensor]:
    """`synthetic_images` and a class per image: which of N_CLASSES equal bins the bar's column falls in."""
    g = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    cx = (torch.rand(n, 1, 1, generator=g) * 0.4 + 0.3) * size
    cy = (torch.rand(n, 1, 1, generator=g) * 0.4 + 0.3) * size
    r = (torch.rand(n, 1, 1, generator=g) * 0.15 + 0.15) * size
    dist = torch.sqrt((xx - cx) ** 2 + (yy - cy) ** 2)
    ring = torch.exp(-((dist - r) ** 2) / (2 * (0.06 * size) ** 2))
    bar_x = (torch.rand(n, 1, 1, generator=g) * 0.6 + 0.2) * size
    bar = torch.exp(-((xx - bar_x) ** 2) / (2 * (0.04 * size) ** 2)) * (yy > size * 0.5)
    img = torch.clamp(ring + 0.7 * bar, 0, 1)  # (n, H, W)
    tint = torch.rand(n, channels, 1, 1, generator=g) * 0.5 + 0.5 if channels > 1 else torch.ones(n, 1, 1, 1)
    labels = ((bar_x.view(n) / size - 0.2) / 0.6 * N_CLASSES).long().clamp(0, N_CLASSES - 1)
    return (img.unsqueeze(1) * tint * 255).round().to(torch.uint8), labels


def read_idx_images(path: Path) -> torch.Tensor:
    """Read an IDX3 image file (optionally .gz) into a uint8 tensor (N, 1, H, W)."""
    opener: Callable = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            magic, n, h, w = struct.unpack(">IIII", f.read(16))
            if magic != 2051:
                raise DataError(f"{path} is not an IDX image file (magic {magic}, expected 2051)")
            raw = f.read()
    except (OSError, EOFError, struct.error, zlib.error) as e:
        raise DataError(f"cannot read {path}: {e}; the file is corrupt or truncated, fetch it again") from None
    if len(raw) != n * h * w:
        raise DataError(f"{path} is truncated: header says {n} images of {h}x{w}, file holds "
                        f"{len(raw)} of {n * h * w} bytes; fetch it again")
    return torch.from_numpy(np.frombuffer(raw, dtype=np.uint8).copy()).view(n, 1, h, w)


def read_idx_labels(path: Path) -> torch.Tensor:
    """Read an IDX1 label file (optionally .gz) into an int64 tensor (N,)."""
    opener: Callable = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            magic, n = struct.unpack(">II", f.read(8))
            if magic != 2049:
                raise DataError(f"{path} is not an IDX label file (magic {magic}, expected 2049)")
            raw = f.read()
    except (OSError, EOFError, struct.error) as e:
        raise DataError(f"cannot read {path}: {e}; the file is corrupt or truncated, fetch it again") from None
    if len(raw) != n:
        raise DataError(f"{path} is truncated: header says {n} labels, file holds {len(raw)}; fetch it again")
    return torch.from_numpy(np.frombuffer(raw, dtype=np.uint8).astype(np.int64))


def load_idx_labeled(root: Path, split: str = "auto") -> tuple[torch.Tensor, torch.Tensor, str]:
    """Images (N, 1, H, W) uint8, labels (N,) and the split read ('train' or 't10k') of an IDX folder."""
    images_path = _idx_file(root, split)
    labels_path = images_path.with_name(images_path.name.replace("-images-idx3-ubyte", "-labels-idx1-ubyte"))
    if not labels_path.is_file():
        raise DataError(f"{images_path} has no matching labels file {labels_path.name} in {root}; {HOW_TO_GET}")
    images, labels = read_idx_images(images_path), read_idx_labels(labels_path)
    if len(images) != len(labels):
        raise DataError(f"{images_path.name} holds {len(images)} images but {labels_path.name} "
                        f"{len(labels)} labels; fetch matching files")
    return images, labels, images_path.name.split("-")[0]


def _idx_file(root: Path, split: str) -> Path:
    if not root.is_dir():
        raise DataError(f"data.root {root} is not a folder; {HOW_TO_GET}")
    prefixes = {"train": ["train"], "test": ["t10k"], "auto": ["train", "t10k"]}[split]
    for prefix in prefixes:
        for suffix in (".gz", ""):
            p = root / f"{prefix}-images-idx3-ubyte{suffix}"
            if p.is_file():
                return p
    want = " or ".join(f"{p}-images-idx3-ubyte[.gz]" for p in prefixes)
    raise DataError(f"no {want} in {root}; {HOW_TO_GET}")


def _torchvision(cfg: DataConfig, train: bool | None = None) -> torch.Tensor:
    return _torchvision_labeled(cfg, train)[0]


def _torchvision_labeled(cfg: DataConfig, train: bool | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    import torchvision.datasets as tvd

    cls = {"mnist": tvd.MNIST, "fashion_mnist": tvd.FashionMNIST, "cifar10": tvd.CIFAR10}[cfg.name]
    root = cfg.root or "data"
    train = cfg.split != "test" if train is None else train
    try:
        ds = cls(root, train=train, download=True)
    except Exception as e:  # torchvision raises many kinds here (URLError, RuntimeError, ...)
        raise DataError(f"cannot load {cfg.name} from {root} or download it ({type(e).__name__}: "
                        f"{str(e).splitlines()[0] if str(e) else ''}); {HOW_TO_GET}") from None
    data = torch.as_tensor(np.asarray(ds.data))
    images = data.permute(0, 3, 1, 2).contiguous() if data.ndim == 4 else data.unsqueeze(1)
    return images, torch.as_tensor(np.asarray(ds.targets), dtype=torch.long)


def load_images(cfg: DataConfig, seed: int = 1234) -> torch.Tensor:
    """The configured dataset as uint8 (N, C, H, W), checked against the model's size and channels."""
    if cfg.name == "synthetic":
        return synthetic_images(cfg.synthetic_size, cfg.image_size, cfg.channels, seed)
    if cfg.name == "idx":
        images = read_idx_images(_idx_file(Path(cfg.root), cfg.split))
    else:
        images = _torchvision(cfg)
    _check_shape(images, cfg)
    return images


def _check_shape(images: torch.Tensor, cfg: DataConfig) -> None:
    _, c, h, w = images.shape
    if (c, h, w) != (cfg.channels, cfg.image_size, cfg.image_size):
        raise DataError(
            f"{cfg.name} images are {c}x{h}x{w} (CxHxW) but the model is configured for "
            f"{cfg.channels}x{cfg.image_size}x{cfg.image_size}; set data.channels={c} data.image_size={h}")


def fingerprint(images: torch.Tensor) -> str:
    """Identity of an image set: SHA-256 of its shape and uint8 pixels (first 16 hex digits)."""
    h = hashlib.sha256(str(tuple(images.shape)).encode())
    h.update(images.contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


def describe(cfg: DataConfig) -> str:
    """The data keys that say which images a run trained on, e.g. 'data.name=idx data.root=...'."""
    return f"data.name={cfg.name}" + (f" data.root={cfg.root}" if cfg.root and cfg.name != "synthetic" else "")


def build_dataset(cfg: DataConfig, seed: int = 1234) -> TensorImages:
    """The configured dataset, images in [-1, 1]."""
    return TensorImages(load_images(cfg, seed))


class EpochShuffle(Sampler[int]):
    """Shuffles with a permutation that depends only on (seed, epoch), so resumes replay it exactly."""

    def __init__(self, n: int, seed: int):
        self.n, self.seed, self.epoch = n, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def permutation(self, epoch: int) -> torch.Tensor:
        """The order of `epoch`: a permutation of range(n) (int64) seeded by (seed, epoch) only."""
        g = torch.Generator().manual_seed(self.seed * 100_003 + epoch)
        return torch.randperm(self.n, generator=g)

    def __iter__(self) -> Iterator[int]:
        return iter(self.permutation(self.epoch).tolist())

    def __len__(self) -> int:
        return self.n


def batches_per_epoch(n: int, batch: int, world: int) -> int:
    """Full batches each rank gets per epoch when `world` ranks split n items (drop_last)."""
    return math.floor(n / (batch * world))


# ---------------------------------------------------------------------------------------------
# Semi-supervised splits


def holdout_indices(n: int, holdout: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(train, test) indices of a seeded random hold-out of `holdout` of n items (the classifiers' split)."""
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    return perm[holdout:], perm[:holdout]


def balanced_subset(labels: torch.Tensor, per_class: int, seed: int,
                    n_classes: int = N_CLASSES) -> tuple[torch.Tensor, torch.Tensor]:
    """(labeled, unlabeled) positions in `labels`: `per_class` seeded random items of each class, and the rest."""
    g = torch.Generator().manual_seed(seed)
    chosen = []
    for c in range(n_classes):
        members = (labels == c).nonzero().view(-1)
        if len(members) < per_class:
            raise DataError(f"data.labels_per_class={per_class}: class {c} has only {len(members)} training "
                            f"images; use data.labels_per_class<={len(members)}")
        chosen.append(members[torch.randperm(len(members), generator=g)[:per_class]])
    labeled = torch.cat(chosen).sort().values
    rest = torch.ones(len(labels), dtype=torch.bool)
    rest[labeled] = False
    return labeled, rest.nonzero().view(-1)


@dataclass(frozen=True)
class SemiSupSplits:
    """Labeled, unlabeled and test images (uint8 (N, C, H, W)) with labels, and where each came from."""

    labeled_x: torch.Tensor
    labeled_y: torch.Tensor
    unlabeled_x: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor
    train_src: torch.Tensor
    """Positions in the source file of the training pool (all of it with an official test split)."""
    labeled_pos: torch.Tensor
    """Positions of the labeled images in the training pool; the unlabeled ones are the others."""
    test_src: torch.Tensor | None
    """Positions of the held-out test images in the same source file; None: an official test file."""
    info: str
    """One line saying how the data was split."""


def _labeled_source(cfg: DataConfig) -> tuple[torch.Tensor, torch.Tensor, tuple | None, str]:
    """Training images and labels, the official test split if there is one, and the source's name."""
    if cfg.name == "synthetic":
        x, y = synthetic_labeled(cfg.synthetic_size, cfg.image_size, cfg.channels)
        return x, y, None, "synthetic"
    if cfg.name == "idx":
        root = Path(cfg.root)
        x, y, split = load_idx_labeled(root, "auto")
        if split == "train":
            try:
                tx, ty, _ = load_idx_labeled(root, "test")
                return x, y, (tx, ty), f"{root} train"
            except DataError:
                pass
        return x, y, None, f"{root} {split}"
    x, y = _torchvision_labeled(cfg, train=True)
    return x, y, _torchvision_labeled(cfg, train=False), f"{cfg.name} train"


def load_splits(cfg: DataConfig, seed: int) -> SemiSupSplits:
    """Labeled (class-balanced, seeded by `seed`), unlabeled and test splits for semi-supervised training.

    The test split is the official one where the data has it, else a `cfg.test_size` hold-out drawn
    with `cfg.split_seed` (the same one `capsgan classifier train` uses); it is never trained on.
    """
    x, y, official, source = _labeled_source(cfg)
    _check_shape(x, cfg)
    if official is not None:
        test_x, test_y = official
        train_src, test_src = torch.arange(len(x)), None
        how = f"{source} ({len(x)}) -> official test split ({len(test_x)})"
    else:
        if not 0 < cfg.test_size < len(x):
            raise DataError(f"data.test_size={cfg.test_size} must be between 1 and {len(x) - 1} ({source} has "
                            f"{len(x)} images and no test split of its own)")
        train_src, test_src = holdout_indices(len(x), cfg.test_size, cfg.split_seed)
        test_x, test_y = x[test_src], y[test_src]
        how = (f"{source}: {len(train_src)} train / {len(test_src)} held out "
               f"(data.split_seed={cfg.split_seed})")
    classes = int(max(y.max(), test_y.max())) + 1
    if classes != N_CLASSES:
        raise DataError(f"{source} has {classes} classes; semi-supervised training supports {N_CLASSES}")
    pool_y = y[train_src]
    # A class short of labels only because the hold-out took its images: name the key that did.
    short = (torch.bincount(pool_y, minlength=N_CLASSES) < cfg.labels_per_class) & \
        (torch.bincount(y, minlength=N_CLASSES) >= cfg.labels_per_class)
    if official is None and short.any():
        c = int(short.nonzero()[0])
        raise DataError(f"data.test_size={cfg.test_size} leaves {len(train_src)} of {source}'s {len(x)} images for "
                        f"training, and class {c} has {int((pool_y == c).sum())} of them, fewer than "
                        f"data.labels_per_class={cfg.labels_per_class}; use a smaller data.test_size (default 2000)")
    labeled, unlabeled = balanced_subset(pool_y, cfg.labels_per_class, seed)
    if len(unlabeled) == 0:
        raise DataError(f"data.labels_per_class={cfg.labels_per_class} labels every training image; "
                        "leave some unlabeled with a smaller value")
    pool_x = x[train_src]
    how += f"; {len(labeled)} labeled ({cfg.labels_per_class} per class, seed {seed}), {len(unlabeled)} unlabeled"
    return SemiSupSplits(pool_x[labeled], pool_y[labeled], pool_x[unlabeled], test_x, test_y,
                         train_src, labeled, test_src, how)
