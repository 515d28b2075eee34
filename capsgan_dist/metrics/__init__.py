"""Sample-quality metrics in a trained classifier's feature space, one per file, registered by name.

The classifier runs once per image set (`extract` -> `Features`: penultimate features and logits);
every metric reads those. A metric is a class with `set_real(features)` (once; real statistics are
kept) and `score(features) -> {name: value}`; `MetricSuite` runs several against one real set.
Images are float tensors (N, C, H, W) in [-1, 1]. Heavy libraries (torchmetrics) load only when a
metric is built. The names a metric may take are listed in `config.METRIC_NAMES`, which the
config validates against without importing this package.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from capsgan_dist.config import METRIC_NAMES

if TYPE_CHECKING:
    from torch import nn

    from capsgan_dist.config import EvalConfig


@dataclass
class Features:
    """What the classifier says about a set of images: features (N, F) and logits (N, K), float64, CPU."""

    features: torch.Tensor
    logits: torch.Tensor

    def __len__(self) -> int:
        return len(self.features)


@torch.no_grad()
def extract(classifier: nn.Module, images: torch.Tensor, batch: int = 500, progress: str = "") -> Features:
    """Run the classifier (eval mode) over `images` in batches; `progress`: a label to report progress under
    (a bar on a terminal, a line every 10 s elsewhere), e.g. for the Inception network on a CPU."""
    from capsgan_dist.progress import Progress

    dev = next(classifier.parameters()).device
    was = classifier.training
    classifier.eval()
    bar = Progress(len(images), 0, progress, bool(progress), 10.0, unit="image")
    fs, ls = [], []
    for i in range(0, len(images), batch):
        f, lg = classifier.features_and_logits(images[i:i + batch].to(dev).float())
        fs.append(f.double().cpu())
        ls.append(lg.double().cpu())
        bar.update(len(f))
    bar.close()
    classifier.train(was)
    return Features(torch.cat(fs), torch.cat(ls))


class Metric:
    """Base class: subclasses get `name` from @register and implement set_real / score."""

    name = ""

    def __init__(self, num_features: int, settings: EvalConfig, seed: int = 0):
        self.num_features, self.settings, self.seed = num_features, settings, seed

    def set_real(self, real: Features) -> None:
        raise NotImplementedError

    def score(self, fake: Features) -> dict[str, float]:
        raise NotImplementedError

    def reference(self) -> dict[str, float]:
        """Values of the metric on the real data itself, where that means something."""
        return {}


METRICS: dict[str, type[Metric]] = {}


def register(name: str) -> Callable[[type[Metric]], type[Metric]]:
    """Class decorator: make a metric available as an eval.metrics entry `name`."""

    if name not in METRIC_NAMES:  # config validates eval.metrics against that list without importing us
        raise ValueError(f"metric {name!r} must be added to capsgan_dist.config.METRIC_NAMES first")

    def deco(cls: type[Metric]) -> type[Metric]:
        cls.name = name
        METRICS[name] = cls
        return cls

    return deco


class MetricSuite:
    """The metrics of `settings.metrics` against one real image set."""

    def __init__(self, classifier: nn.Module, settings: EvalConfig, seed: int = 0, progress: bool = False):
        self.classifier, self.settings, self.progress = classifier, settings, progress
        self.metrics = [METRICS[name](classifier.num_features, settings, seed) for name in settings.metrics]

    def set_real(self, images: torch.Tensor) -> None:
        real = extract(self.classifier, images, self.settings.batch, "real images" if self.progress else "")
        for m in self.metrics:
            m.set_real(real)

    def score(self, fake_images: torch.Tensor) -> dict[str, float]:
        fake = extract(self.classifier, fake_images, self.settings.batch,
                       "generated images" if self.progress else "")
        out: dict[str, float] = {}
        for m in self.metrics:
            out.update(m.score(fake))
        return out

    def reference(self) -> dict[str, float]:
        out: dict[str, float] = {}
        for m in self.metrics:
            out.update(m.reference())
        return out


# Importing the metric modules registers them.
from capsgan_dist.metrics import fid, inception_score, kid, precision_recall  # noqa: E402, F401
