"""Capsule layers: squash, dynamic routing by agreement, PrimaryCaps and routed capsules.

Sabour, Frosst & Hinton 2017, "Dynamic Routing Between Capsules". The CapsuleGAN paper prints the
squash with s/|s|^2 (its eq. 1); that is a typo, its own Figure 3 and Sabour et al. use s/|s|.
"""

from __future__ import annotations

import torch
from torch import nn

from capsgan_dist.models.routing import routed_capsules
from capsgan_dist.shapes import conv_out  # re-exported: the layer code has always imported it from here

# Keeps |s| differentiable at s = 0: sqrt(|s|^2 + eps) has a finite gradient there.
_EPS = 1e-8


def squash(s: torch.Tensor, dim: int = -1) -> torch.Tensor:
    """v = |s|^2 / (1 + |s|^2) * s / |s| (Sabour et al. 2017, eq. 1); 0 at s = 0."""
    sq = (s * s).sum(dim=dim, keepdim=True)
    # |s|^2/(1+|s|^2) / |s|  ==  |s| / (1 + |s|^2): one division, finite gradient at 0.
    return s * (torch.sqrt(sq + _EPS) / (1.0 + sq))


def dynamic_routing(u_hat: torch.Tensor, iterations: int, grad: str = "all") -> torch.Tensor:
    """Route predictions u_hat (B, n_in, n_out, d) to output capsules v (B, n_out, d).

    Procedure 1 of Sabour et al.: logits b start at 0 for every sample, c = softmax over the
    OUTPUT capsules, s_j = sum_i c_ij u_hat_j|i, v_j = squash(s_j), b_ij += u_hat_j|i . v_j.
    grad="last" detaches u_hat in all but the last iteration (common in CapsNet code);
    grad="all" (our default) backpropagates through every iteration, as the equations read.
    """
    if iterations < 1:
        raise ValueError(f"routing iterations must be >= 1, got {iterations}")
    if grad not in ("all", "last"):
        raise ValueError(f"grad must be 'all' or 'last', got {grad!r}")
    B, n_in, n_out, _ = u_hat.shape
    u_route = u_hat.detach() if grad == "last" else u_hat
    b = u_hat.new_zeros(B, n_in, n_out)  # per-sample logits, never shared across the batch
    for it in range(iterations):
        last = it == iterations - 1
        u = u_hat if last else u_route
        c = torch.softmax(b, dim=2)  # (B, n_in, n_out): each input distributes over outputs
        s = torch.einsum("bij,bijd->bjd", c, u)  # (B, n_out, d), Sabour eq. 2
        v = squash(s)
        if not last:
            b = b + torch.einsum("bijd,bjd->bij", u, v)  # agreement, Procedure 1 line 7
    return v


class PrimaryCaps(nn.Module):
    """Conv (stride 2) whose output is read as `channels` maps of `dim`-D capsules, squashed."""

    def __init__(self, in_channels: int, channels: int, dim: int, kernel: int, stride: int = 2):
        super().__init__()
        self.channels, self.dim = channels, dim
        self.conv = nn.Conv2d(in_channels, channels * dim, kernel, stride=stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x)  # (B, channels*dim, H, W)
        B, _, H, W = y.shape
        # A capsule is the `dim` values of one channel group at one pixel.
        y = y.view(B, self.channels, self.dim, H, W).permute(0, 1, 3, 4, 2)
        return squash(y.reshape(B, self.channels * H * W, self.dim))  # (B, n_in, dim)


class RoutedCaps(nn.Module):
    """Fully connected capsule layer: u_hat_j|i = W_ij u_i, then dynamic routing.

    impl="fused" runs both in one autograd Function (models/routing.py); "einsum" is the plain
    autograd form below. They agree to float rounding (tests/unit/test_fast_routing.py).
    """

    def __init__(self, n_in: int, d_in: int, n_out: int, d_out: int, iterations: int = 3,
                 grad: str = "all", impl: str = "fused"):
        super().__init__()
        if impl not in ("fused", "einsum"):
            raise ValueError(f"impl must be 'fused' or 'einsum', got {impl!r}")
        if n_out < 2:
            raise ValueError(
                f"RoutedCaps needs at least 2 output capsules (got {n_out}): with one, the softmax "
                "over outputs is always 1 and routing would be a no-op")
        self.iterations, self.grad, self.impl = iterations, grad, impl
        # The common 0.01 init leaves |s_j| ~ 1e-3, where squash ~ |s|^2 kills the signal and D
        # starts blind; this scale gives routed capsules lengths of ~0.1-0.5 at init instead.
        std = 4.0 * n_out / (n_in * d_out) ** 0.5
        self.weight = nn.Parameter(std * torch.randn(n_in, n_out, d_out, d_in))

    def forward(self, u: torch.Tensor) -> torch.Tensor:
        if self.impl == "fused":  # same math, hand-written backward (models/routing.py)
            return routed_capsules(u, self.weight, self.iterations, self.grad)
        u_hat = torch.einsum("ijed,bid->bije", self.weight, u)  # (B, n_in, n_out, d_out), eq. 2
        return dynamic_routing(u_hat, self.iterations, self.grad)


def capsule_lengths(v: torch.Tensor) -> torch.Tensor:
    """Length of each capsule vector (B, n, d) -> (B, n), safe at 0."""
    return torch.sqrt((v * v).sum(-1) + _EPS)


__all__ = ["squash", "dynamic_routing", "PrimaryCaps", "RoutedCaps", "capsule_lengths", "conv_out"]
