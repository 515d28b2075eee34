"""Frechet distance between Gaussians fitted to real and generated features (Heusel et al. 2017).

torchmetrics' FrechetInceptionDistance in our classifier's feature space ("Frechet classifier
distance"; Inception features mean nothing for 28x28 digits). The classifier has already run
(see `extract`), so torchmetrics gets a pass-through feature module and the features themselves.
"""

from __future__ import annotations

from torch import nn

from capsgan_dist.metrics import Features, Metric, register


class Precomputed(nn.Identity):
    """torchmetrics' custom `feature` module for inputs that already are features (N, F)."""

    def __init__(self, num_features: int):
        super().__init__()
        self.num_features = num_features  # read by FrechetInceptionDistance


@register("fid")
class FID(Metric):
    """FID of generated vs real features; the real mean and covariance are computed once."""

    def __init__(self, num_features: int, settings, seed: int = 0):
        super().__init__(num_features, settings, seed)
        from torchmetrics.image.fid import FrechetInceptionDistance

        # sync_on_compute=False: only the main process computes, even inside a process group.
        self.metric = FrechetInceptionDistance(feature=Precomputed(num_features), reset_real_features=False,
                                               sync_on_compute=False)

    def set_real(self, real: Features) -> None:
        self.metric.reset_real_features = True
        self.metric.reset()
        self.metric.reset_real_features = False
        self.metric.update(real.features, real=True)

    def score(self, fake: Features) -> dict[str, float]:
        self.metric.reset()  # keeps the real statistics
        self.metric.update(fake.features, real=False)
        return {"fid": float(self.metric.compute())}
