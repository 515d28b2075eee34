"""Reference points for reading FID/KID/IS/PR numbers: real images, uniform noise and blank images,
scored exactly as `capsgan compare` scores a generator (the run's whole dataset as the real side,
n generated images, the default EvalConfig).

    python scripts/reference_points.py --classifier runs/classifiers/mnist-lenet.safetensors \
        --data ../shared/data/mnist [--n 2000]
    python scripts/reference_points.py --classifier runs/classifiers/twemoji64-lenet.safetensors \
        --data data/twemoji64 --size 64 --channels 3

With an IDX folder that has both splits, the training split is the real side (as in training) and
the "real" case is drawn from the test split: images the reference has never seen. A folder of
images (--size and --channels given) is read by the training data's rule, and its "real" case is a
subset of the reference; there the all-white case is the blank background too.
"""

from __future__ import annotations

import argparse
import json
import warnings
from pathlib import Path

import torch

from capsgan_dist.config import DataConfig, EvalConfig
from capsgan_dist.data import load_idx_labeled, load_images
from capsgan_dist.metrics import MetricSuite
from capsgan_dist.metrics.classifier import load_classifier


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--classifier", required=True)
    ap.add_argument("--data", required=True, help="IDX folder (train-* and/or t10k-* files), or a folder of "
                    "images with --size and --channels")
    ap.add_argument("--size", type=int, default=None, help="a folder of images: the run's data.image_size")
    ap.add_argument("--channels", type=int, default=None, help="a folder of images: the run's data.channels")
    ap.add_argument("--cache-dir", default=DataConfig().cache_dir, help="a folder of images: its prepared cache")
    ap.add_argument("--n", type=int, default=2000, help="images per scored case (the compare's eval_n)")
    args = ap.parse_args()
    warnings.filterwarnings("ignore")  # torchmetrics' notes on small sample sizes

    def scaled(split: str) -> tuple[torch.Tensor, str]:
        if args.size:  # a folder: one set, read as `data.name=folder` reads it
            cfg = DataConfig(name="folder", root=args.data, image_size=args.size, channels=args.channels or 3,
                             cache_dir=args.cache_dir)
            images, read = load_images(cfg), "folder"
        else:
            images, _labels, read = load_idx_labeled(Path(args.data), split)
        return images.float() / 127.5 - 1, read

    reference, ref_split = scaled("auto")  # what training and the compare use
    held_out, held_split = (reference, ref_split) if args.size else scaled("test")
    clf, _ = load_classifier(args.classifier)
    suite = MetricSuite(clf, EvalConfig())
    suite.set_real(reference)
    g = torch.Generator().manual_seed(0)
    same = held_split == ref_split
    cases = {
        f"real: {args.n} {held_split} images" + (" (a subset of the reference)" if same else " (held out)"):
            held_out[torch.randperm(len(held_out), generator=g)[:args.n]],
        "uniform noise in [-1, 1]": torch.rand(args.n, *reference.shape[1:], generator=g) * 2 - 1,
        "all black (-1)": -torch.ones(args.n, *reference.shape[1:]),
        "all white (+1)": torch.ones(args.n, *reference.shape[1:]),
    }
    print(f"reference: {len(reference)} {ref_split} images of {args.data}; classifier {args.classifier}")
    for name, images in cases.items():
        print(f"{name}: " + json.dumps({k: round(v, 4) for k, v in suite.score(images).items()}))


if __name__ == "__main__":
    main()
