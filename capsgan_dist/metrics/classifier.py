"""The metrics' feature network: train a classifier on a labelled IDX dataset, save it, load it.

A file `X.safetensors` holds the weights (read weights-only) and `X.json` beside it the
architecture, its arguments, the image shape, the dataset (folder, split and a fingerprint of each
IDX image file it read, so that eval can tell whether a run used the same images) and the held-out
accuracy.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from capsgan_dist import provenance
from capsgan_dist.data import balanced_subset, fingerprint, holdout_indices, load_idx_labeled
from capsgan_dist.errors import CheckpointError, DataError, UserError
from capsgan_dist.models.classifiers import CLASSIFIERS
from capsgan_dist.shapes import min_classifier_image

FORMAT = 1


def _to_unit(images: torch.Tensor) -> torch.Tensor:
    """uint8 (N, C, H, W) -> float in [-1, 1], the GAN's data range."""
    return images.float().div(127.5).sub(1.0)


def _folder_labelled(root: Path, size: int | None, channels: int | None) -> tuple[torch.Tensor, torch.Tensor, str]:
    """A folder of images with one subfolder per class, by the training data's rule (data/folder.py)."""
    from capsgan_dist.config import DataConfig
    from capsgan_dist.data.folder import load_folder_labeled

    if size is None or channels is None:
        raise UserError(f"--data {root} is a folder of images: give the run's image shape too, --size S "
                        "--channels C (its data.image_size and data.channels)")
    images, labels, classes = load_folder_labeled(DataConfig(name="folder", root=str(root), labels="subfolders",
                                                             image_size=size, channels=channels))
    return images, labels, f"{len(classes)} class folders"


def labelled_split(root: Path, holdout: int, seed: int, size: int | None = None,
                   channels: int | None = None) -> tuple[torch.Tensor, ...]:
    """(train_x, train_y, test_x, test_y, info) of an IDX folder, or of a folder of images in class subfolders.

    With both train-* and t10k-* files: train on train, test on t10k. With only one split (MNIST
    here has just the 10,000 test digits), or a folder of images (made `channels` x `size` by the
    training data's rule): a seeded random `holdout` images are held out.
    """
    root = Path(root)
    if root.is_dir() and not any(root.glob("*-images-idx3-ubyte*")):  # a folder of images
        images, labels, name = _folder_labelled(root, size, channels)
        return _held_out(images, labels, holdout, seed, name, f"{root} has {len(images)} images")
    try:
        test_x, test_y, _ = load_idx_labeled(root, "test")
        train_x, train_y, _ = load_idx_labeled(root, "train")
        info = {"split": "train -> t10k", "n_train": len(train_x), "n_test": len(test_x),
                "fingerprints": [fingerprint(train_x), fingerprint(test_x)]}
        return train_x, train_y, test_x, test_y, info
    except DataError:
        pass
    images, labels, name = load_idx_labeled(root, "auto")
    return _held_out(images, labels, holdout, seed, f"{name} only",
                     f"{root} has one split, {name}, of {len(images)} images")


def _held_out(images: torch.Tensor, labels: torch.Tensor, holdout: int, seed: int, name: str,
              what: str) -> tuple[torch.Tensor, ...]:
    """A seeded random `holdout` of one labelled set: (train_x, train_y, test_x, test_y, info)."""
    if not 0 < holdout < len(images):
        raise UserError(f"--holdout {holdout} must be between 1 and {len(images) - 1} ({what})")
    train, test = holdout_indices(len(images), holdout, seed)
    info = {"split": f"{name}: seeded random {len(train)} train / {holdout} held out (seed {seed})",
            "n_train": len(train), "n_test": holdout, "fingerprints": [fingerprint(images)]}
    return images[train], labels[train], images[test], labels[test], info


@torch.no_grad()
def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch: int = 500) -> float:
    """Top-1 accuracy of `model` on uint8 images x and labels y."""
    was = model.training
    model.eval()
    right = sum((model(_to_unit(x[i:i + batch])).argmax(1) == y[i:i + batch]).sum().item()
                for i in range(0, len(x), batch))
    model.train(was)
    return right / len(x)


def train_classifier(data: Path, arch: str, out: Path, epochs: float = 5, batch: int = 64, lr: float = 1e-3,
                     seed: int = 0, holdout: int = 2000, arch_kwargs: dict | None = None,
                     log=print, labels_per_class: int = 0, split_seed: int | None = None,
                     size: int | None = None, channels: int | None = None) -> dict:
    """Train `arch` on the IDX folder, or the folder of class subfolders (`size`, `channels`), `data`; save it
    to `out`; returns the saved metadata.

    labels_per_class > 0 trains on the class-balanced labeled subset a semi-supervised run with the
    same seed draws (data.labels_per_class): the supervised-only baseline. split_seed (default: seed)
    draws the held-out split of a one-split folder, as data.split_seed does.
    """
    if arch not in CLASSIFIERS:
        raise UserError(f"--arch {arch!r} is not known; choose one of {', '.join(CLASSIFIERS)}")
    if epochs <= 0 or batch < 1 or lr <= 0 or labels_per_class < 0:
        raise UserError(f"--epochs ({epochs}), --batch ({batch}) and --lr ({lr}) must be positive, "
                        f"--labels-per-class ({labels_per_class}) >= 0")
    train_x, train_y, test_x, test_y, info = labelled_split(Path(data), holdout,
                                                            seed if split_seed is None else split_seed, size, channels)
    if labels_per_class:
        try:
            keep = balanced_subset(train_y, labels_per_class, seed)[0]
        except DataError as e:  # names the training key; here the option is the fix
            raise UserError(str(e).replace("data.labels_per_class", "--labels-per-class")) from None
        train_x, train_y = train_x[keep], train_y[keep]
        info = {**info, "n_train": len(keep), "labels_per_class": labels_per_class}
    _, c, h, w = train_x.shape
    if min(h, w) < min_classifier_image(arch):
        raise UserError(f"--arch {arch} needs images of at least {min_classifier_image(arch)}x"
                        f"{min_classifier_image(arch)}; {data} holds {h}x{w} images"
                        + ("; use --arch lenet" if min(h, w) >= min_classifier_image("lenet") else ""))
    n_classes = int(max(train_y.max(), test_y.max())) + 1
    torch.manual_seed(seed)
    kwargs = {"image_size": h, "channels": c, "n_classes": n_classes, **(arch_kwargs or {})}
    model = CLASSIFIERS[arch](**kwargs)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    steps = max(1, math.ceil(epochs * len(train_x) / batch))  # fractional epochs allowed
    g = torch.Generator().manual_seed(seed + 1)
    order = torch.empty(0, dtype=torch.long)
    commit = provenance.git_commit()  # the code that trains, before a long run's checkout can move on
    t0, cpu0, losses = time.perf_counter(), time.process_time(), []
    model.train()
    for step in range(steps):
        if len(order) < batch:
            order = torch.cat([order, torch.randperm(len(train_x), generator=g)])
        idx, order = order[:batch], order[batch:]
        loss, _ = model.training_loss(_to_unit(train_x[idx]), train_y[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(loss.item())
        if (step + 1) % max(1, steps // 10) == 0 or step + 1 == steps:
            log(f"step {step + 1}/{steps} loss {sum(losses) / len(losses):.4f} "
                f"({time.perf_counter() - t0:.0f}s)")
            losses = []
    seconds, cpu_seconds = time.perf_counter() - t0, time.process_time() - cpu0
    acc = accuracy(model, test_x, test_y)
    meta = {"format": FORMAT, "arch": arch, "arch_kwargs": kwargs, "image_shape": [c, h, w],
            "dataset": {"root": str(data), **info}, "accuracy": acc, "epochs": epochs, "batch": batch,
            "lr": lr, "seed": seed, "steps": steps, "train_seconds": round(seconds, 1),
            "cpu_seconds": round(cpu_seconds, 1), "git_commit": commit}
    save_classifier(model, meta, Path(out))
    return meta


def _paths(path: Path) -> tuple[Path, Path]:
    path = Path(path)
    weights = path if path.suffix == ".safetensors" else path.with_name(path.name + ".safetensors")
    return weights, weights.with_suffix(".json")


def save_classifier(model: nn.Module, meta: dict, path: Path) -> Path:
    """Write `path` (.safetensors, weights) and the .json metadata beside it."""
    weights, info = _paths(path)
    weights.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(weights))
    info.write_text(json.dumps(meta, indent=1) + "\n")
    return weights


def load_classifier(path: str | Path) -> tuple[nn.Module, dict]:
    """The classifier (eval mode) and its metadata; weights are read weights-only (safetensors)."""
    weights, info = _paths(Path(path))
    if not weights.is_file() or not info.is_file():
        raise CheckpointError(f"classifier {weights} (+ {info.name}) not found; train one with "
                              "`capsgan classifier train --data DIR --arch lenet --out PATH`")
    try:
        meta = json.loads(info.read_text())
        model = CLASSIFIERS[meta["arch"]](**meta["arch_kwargs"])
        model.load_state_dict(load_file(str(weights)))
    except Exception as e:  # bad JSON, unknown arch, wrong keys or shapes, torn file
        raise CheckpointError(f"cannot load classifier {weights}: {type(e).__name__}: {e}") from None
    return model.eval(), meta
