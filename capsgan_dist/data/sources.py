"""Where images come from: procedural (synthetic), IDX files, and torchvision's downloads.

Each returns uint8 tensors (N, C, H, W) (and labels where there are any); the image folder source,
with its conversion rule, is folder.py.
"""

from __future__ import annotations

import gzip
import struct
import zlib
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from capsgan_dist.config import N_CLASSES, DataConfig
from capsgan_dist.errors import DataError

HOW_TO_GET = (
    "get the data: MNIST test digits are in ../shared/data/mnist (use data.name=idx "
    "data.root=../shared/data/mnist), Fashion-MNIST via `apt-get install dataset-fashion-mnist` "
    "(data.name=idx data.root=/usr/share/datasets/fashion-mnist), your own images with data.name=folder "
    "data.root=<folder>; online machines can use data.name=mnist|fashion_mnist|cifar10 data.root=<download folder>"
)


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
    images_path = idx_file(root, split)
    labels_path = images_path.with_name(images_path.name.replace("-images-idx3-ubyte", "-labels-idx1-ubyte"))
    if not labels_path.is_file():
        raise DataError(f"{images_path} has no matching labels file {labels_path.name} in {root}; {HOW_TO_GET}")
    images, labels = read_idx_images(images_path), read_idx_labels(labels_path)
    if len(images) != len(labels):
        raise DataError(f"{images_path.name} holds {len(images)} images but {labels_path.name} "
                        f"{len(labels)} labels; fetch matching files")
    return images, labels, images_path.name.split("-")[0]


def idx_file(root: Path, split: str) -> Path:
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


def torchvision_images(cfg: DataConfig, train: bool | None = None) -> torch.Tensor:
    """A torchvision dataset's images (it downloads only when the machine is online)."""
    return torchvision_labeled(cfg, train)[0]


def _download(cfg: DataConfig, make: Callable):
    """A torchvision dataset object, its download or load failures as one DataError."""
    root = cfg.root or "data"
    try:
        return make(root)
    except Exception as e:  # torchvision raises many kinds here (URLError, RuntimeError, ...)
        raise DataError(f"cannot load {cfg.name} from {root} or download it ({type(e).__name__}: "
                        f"{str(e).splitlines()[0] if str(e) else ''}); {HOW_TO_GET}") from None


def celeba_folder(cfg: DataConfig) -> Path:
    """CelebA's aligned JPEGs (torchvision downloads them into data.root once, online): the folder the
    folder source and its cache then read by the one rule (178x218 -> centre square)."""
    import torchvision.datasets as tvd

    _download(cfg, lambda root: tvd.CelebA(root, split="all", target_type=[], download=True))
    return Path(cfg.root or "data") / "celeba" / "img_align_celeba"


def torchvision_labeled(cfg: DataConfig, train: bool | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """A torchvision dataset's images and labels (STL-10's 96 px images made data.image_size by the folder rule)."""
    import torchvision.datasets as tvd

    train = cfg.split != "test" if train is None else train
    if cfg.name == "stl10":
        ds = _download(cfg, lambda root: tvd.STL10(root, split="train" if train else "test", download=True))
        return _by_the_rule(np.asarray(ds.data), cfg), torch.as_tensor(np.asarray(ds.labels), dtype=torch.long)
    cls = {"mnist": tvd.MNIST, "fashion_mnist": tvd.FashionMNIST, "cifar10": tvd.CIFAR10}[cfg.name]
    ds = _download(cfg, lambda root: cls(root, train=train, download=True))
    data = torch.as_tensor(np.asarray(ds.data))
    images = data.permute(0, 3, 1, 2).contiguous() if data.ndim == 4 else data.unsqueeze(1)
    return images, torch.as_tensor(np.asarray(ds.targets), dtype=torch.long)


def _by_the_rule(chw: np.ndarray, cfg: DataConfig) -> torch.Tensor:
    """uint8 (N, C, H, W) images of another size made data.channels x data.image_size (folder.convert)."""
    from PIL import Image

    from capsgan_dist.data.folder import background_rgb, convert

    bg = background_rgb(cfg.background)
    return torch.from_numpy(np.stack([convert(Image.fromarray(x.transpose(1, 2, 0)), cfg.image_size, cfg.channels,
                                              bg) for x in chw]))


def check_shape(images: torch.Tensor, cfg: DataConfig) -> None:
    """Refuse images whose (C, H, W) is not the one the models are configured for, naming the keys."""
    _, c, h, w = images.shape
    if (c, h, w) != (cfg.channels, cfg.image_size, cfg.image_size):
        raise DataError(
            f"{cfg.name} images are {c}x{h}x{w} (CxHxW) but the model is configured for "
            f"{cfg.channels}x{cfg.image_size}x{cfg.image_size}; set data.channels={c} data.image_size={h}")
