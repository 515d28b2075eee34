"""The capsule non-linearities: Sabour et al.'s squash and Efficient-CapsNet's exponential squash.

Both are computed with |s| read as sqrt(|s|^2 + EPS), whose value and gradient are finite at s = 0;
docs/design.md states them in that form.
"""

from __future__ import annotations

import torch

# Keeps |s| differentiable at s = 0: sqrt(|s|^2 + eps) has a finite gradient there.
EPS = 1e-8


def squash(s: torch.Tensor, dim: int = -1) -> torch.Tensor:
    """v = |s|^2 / (1 + |s|^2) * s / |s| (Sabour et al. 2017, eq. 1); 0 at s = 0."""
    sq = (s * s).sum(dim=dim, keepdim=True)
    # |s|^2/(1+|s|^2) / |s|  ==  |s| / (1 + |s|^2): one division, finite gradient at 0.
    return s * (torch.sqrt(sq + EPS) / (1.0 + sq))


def squash_exp(s: torch.Tensor, dim: int = -1) -> torch.Tensor:
    """v = (1 - 1/e^|s|) * s / |s| (Mazzia et al. 2021, their squash); ~s near s = 0, not 0/0."""
    n = torch.sqrt((s * s).sum(dim=dim, keepdim=True) + EPS)
    return s * (-torch.expm1(-n) / n)  # 1 - e^-n without cancellation for small n


__all__ = ["EPS", "squash", "squash_exp"]
