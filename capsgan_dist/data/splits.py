"""Semi-supervised splits: a class-balanced labeled subset, the unlabeled rest, and a test split."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from capsgan_dist.config import N_CLASSES, DataConfig
from capsgan_dist.data.sources import check_shape, load_idx_labeled, synthetic_labeled, torchvision_labeled
from capsgan_dist.errors import DataError


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
    x, y = torchvision_labeled(cfg, train=True)
    return x, y, torchvision_labeled(cfg, train=False), f"{cfg.name} train"


def load_splits(cfg: DataConfig, seed: int) -> SemiSupSplits:
    """Labeled (class-balanced, seeded by `seed`), unlabeled and test splits for semi-supervised training.

    The test split is the official one where the data has it, else a `cfg.test_size` hold-out drawn
    with `cfg.split_seed` (the same one `capsgan classifier train` uses); it is never trained on.
    """
    x, y, official, source = _labeled_source(cfg)
    check_shape(x, cfg)
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
