"""Kernel distance: unbiased squared MMD with a cubic polynomial kernel (Binkowski et al. 2018).

torchmetrics' KernelInceptionDistance in our classifier's feature space. The estimator is
unbiased, so identical distributions give values scattered around 0 (slightly negative is normal).
Its scale follows the features' scale, so compare KIDs only under one classifier.
"""

from __future__ import annotations

import warnings

import torch

from capsgan_dist.metrics import Features, Metric, register
from capsgan_dist.metrics.fid import Precomputed


@register("kid")
class KID(Metric):
    """KID mean and spread over `eval.kid_subsets` random subsets (seeded)."""

    def __init__(self, num_features: int, settings, seed: int = 0):
        super().__init__(num_features, settings, seed)
        from torchmetrics.image.kid import KernelInceptionDistance

        with warnings.catch_warnings():  # "saves all features in a buffer": intended, they are small
            warnings.simplefilter("ignore")
            self.metric = KernelInceptionDistance(feature=Precomputed(num_features), subsets=settings.kid_subsets,
                                                  subset_size=settings.kid_subset_size,
                                                  reset_real_features=False, sync_on_compute=False)
        self.n_real = 0

    def set_real(self, real: Features) -> None:
        self.metric.reset_real_features = True
        self.metric.reset()
        self.metric.reset_real_features = False
        self.metric.update(real.features, real=True)
        self.n_real = len(real)

    def score(self, fake: Features) -> dict[str, float]:
        self.metric.reset()
        self.metric.update(fake.features, real=False)
        # A subset may not exceed either set; subsets come from the global RNG, so seed it.
        self.metric.subset_size = min(self.settings.kid_subset_size, self.n_real, len(fake))
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.seed)
            mean, std = self.metric.compute()
        return {"kid": float(mean), "kid_std": float(std)}
