"""Improved precision and recall (Kynkaanniemi et al. 2019) in the classifier's feature space.

Each set's manifold is the union of balls around its points with radius = distance to the k-th
nearest neighbour in the same set. Precision: fraction of generated points inside the real
manifold (quality); recall: fraction of real points inside the generated one (coverage).
"""

from __future__ import annotations

import torch

from capsgan_dist.metrics import Features, Metric, register

_CHUNK = 1000  # rows of the distance matrix held at once: (1000, N) floats


def knn_radii(feats: torch.Tensor, k: int) -> torch.Tensor:
    """Distance from each point to its k-th nearest neighbour in `feats` (itself excluded)."""
    out = []
    for i in range(0, len(feats), _CHUNK):
        d = torch.cdist(feats[i:i + _CHUNK], feats)  # (chunk, N); the self-distance 0 is among the k+1
        out.append(d.topk(k + 1, dim=1, largest=False).values[:, -1])
    return torch.cat(out)


def coverage(query: torch.Tensor, ref: torch.Tensor, radii: torch.Tensor) -> float:
    """Fraction of `query` points within radii[j] of some ref[j]."""
    inside = 0
    for i in range(0, len(query), _CHUNK):
        d = torch.cdist(query[i:i + _CHUNK], ref)  # (chunk, M)
        inside += (d <= radii.unsqueeze(0)).any(dim=1).sum().item()
    return inside / len(query)


@register("pr")
class PrecisionRecall(Metric):
    """Precision and recall with k = eval.pr_k, on equally many real and generated images."""

    def set_real(self, real: Features) -> None:
        self.real = real.features

    def score(self, fake: Features) -> dict[str, float]:
        k = self.settings.pr_k
        fake_f, real_f = fake.features, self.real
        if len(real_f) > len(fake_f):  # equal set sizes, as the paper recommends (seeded subset)
            g = torch.Generator().manual_seed(self.seed)
            real_f = real_f[torch.randperm(len(real_f), generator=g)[: len(fake_f)]]
        if min(len(real_f), len(fake_f)) <= k:
            raise ValueError(f"precision/recall needs more than k={k} images in each set")
        precision = coverage(fake_f, real_f, knn_radii(real_f, k))
        recall = coverage(real_f, fake_f, knn_radii(fake_f, k))
        return {"precision": precision, "recall": recall}
