"""Training images: where they come from (sources.py, folder.py), splits (splits.py), and the
dataset and sampler the loader and the metrics use.

Registry (`data.name`): synthetic (procedural, any size), idx (a folder of IDX .gz files), folder
(your own images, converted by one rule: folder.py, docs/data.md), and mnist, fashion_mnist, cifar10
through torchvision (which downloads only when the machine is online). Every source gives uint8
(N, C, H, W). Semi-supervised runs (data.labels_per_class > 0) split labelled data three ways.
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
from collections.abc import Iterator
from pathlib import Path

import torch
from torch.utils.data import Dataset, Sampler

from capsgan_dist.config import DataConfig
from capsgan_dist.data.folder import load_folder, load_folder_labeled
from capsgan_dist.data.sources import (
    HOW_TO_GET,
    celeba_folder,
    check_shape,
    idx_file,
    load_idx_labeled,
    read_idx_images,
    read_idx_labels,
    synthetic_images,
    synthetic_labeled,
    torchvision_images,
    torchvision_labeled,
)
from capsgan_dist.data.splits import SemiSupSplits, balanced_subset, holdout_indices, load_splits


class TensorImages(Dataset):
    """Images held in memory as one uint8 tensor (N, C, H, W); items are float in [-1, 1]."""

    def __init__(self, images: torch.Tensor):
        self.images = images

    def __len__(self) -> int:
        return self.images.shape[0]

    def __getitem__(self, i: int) -> torch.Tensor:
        return self.images[i].float().div_(127.5).sub_(1.0)


def load_images(cfg: DataConfig, seed: int = 1234) -> torch.Tensor:
    """The configured dataset as uint8 (N, C, H, W), checked against the model's size and channels."""
    if cfg.name == "synthetic":
        return synthetic_images(cfg.synthetic_size, cfg.image_size, cfg.channels, seed)
    from capsgan_dist.data.cache import cached_images, uses_cache  # imports this package

    if cfg.name == "celeba":  # a downloaded folder of JPEGs: read as a folder (and its cache)
        cfg = dataclasses.replace(cfg, name="folder", root=str(celeba_folder(cfg)))
    if uses_cache(cfg):  # folder, idx: decoded once, memory-mapped by every rank
        images = cached_images(cfg)
    elif cfg.name == "idx":
        images = read_idx_images(idx_file(Path(cfg.root), cfg.split))
    elif cfg.name == "folder":
        images = load_folder(cfg)
    else:
        images = torchvision_images(cfg)
    check_shape(images, cfg)
    return images


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


__all__ = ["HOW_TO_GET", "EpochShuffle", "SemiSupSplits", "TensorImages", "balanced_subset", "batches_per_epoch",
           "build_dataset", "check_shape", "describe", "fingerprint", "holdout_indices", "idx_file",
           "load_folder", "load_folder_labeled", "load_idx_labeled", "load_images", "load_splits",
           "read_idx_images", "read_idx_labels", "synthetic_images", "synthetic_labeled", "torchvision_images",
           "torchvision_labeled"]
