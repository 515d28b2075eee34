"""Inception-Score-style score from the classifier's logits (Salimans et al. 2016).

exp(E_x KL(p(y|x) || p(y))): high when each sample is confidently one class and the classes are
balanced; at most the number of classes. torchmetrics' InceptionScore on our logits.
"""

from __future__ import annotations

import warnings

import torch

from capsgan_dist.metrics import Features, Metric, register
from capsgan_dist.metrics.fid import Precomputed


@register("is")
class InceptionScore(Metric):
    """Classifier score of generated images, mean and std over 10 splits; real data as reference."""

    def __init__(self, num_features: int, settings, seed: int = 0):
        super().__init__(num_features, settings, seed)
        from torchmetrics.image.inception import InceptionScore as TMInceptionScore

        with warnings.catch_warnings():  # "saves all features in a buffer": intended, they are small
            warnings.simplefilter("ignore")
            self.metric = TMInceptionScore(feature=Precomputed(0), splits=10, sync_on_compute=False)
        self._real: dict[str, float] = {}

    def _score(self, f: Features) -> tuple[float, float]:
        self.metric.reset()
        self.metric.update(f.logits)
        with torch.random.fork_rng(devices=[]):  # compute() shuffles with the global RNG
            torch.manual_seed(self.seed)
            mean, std = self.metric.compute()
        return float(mean), float(std)

    def set_real(self, real: Features) -> None:
        self._real = dict(zip(("is_real", "is_real_std"), self._score(real)))

    def score(self, fake: Features) -> dict[str, float]:
        return dict(zip(("is", "is_std"), self._score(fake)))

    def reference(self) -> dict[str, float]:
        return dict(self._real)
