"""Capsule layers: PrimaryCaps, routed capsules, and the primary + routed pair of each routing kind.

Sabour, Frosst & Hinton 2017, "Dynamic Routing Between Capsules". The CapsuleGAN paper prints the
squash with s/|s|^2 (its eq. 1); that is a typo, its own Figure 3 and Sabour et al. use s/|s|.
The routing algorithms themselves live in models/routing/ (one file per kind); `squash` and
`dynamic_routing` are re-exported here, where they used to live.
"""

from __future__ import annotations

import torch
from torch import nn

from capsgan_dist.models.routing import (
    AttentionCaps,
    EMCaps,
    PrimaryMatrixCaps,
    dynamic_routing,
    routed_capsules,
    squash,
)
from capsgan_dist.models.routing.em import POSE
from capsgan_dist.models.routing.squashing import EPS as _EPS
from capsgan_dist.shapes import conv_out  # re-exported: the layer code has always imported it from here


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

    impl="fused" runs both in one autograd Function (models/routing/dynamic_fused.py); "einsum" is the
    plain autograd form below. They agree to float rounding (tests/unit/test_fast_routing.py).
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
        self.iterations, self.grad, self.impl, self.out_dim = iterations, grad, impl, d_out
        # The common 0.01 init leaves |s_j| ~ 1e-3, where squash ~ |s|^2 kills the signal and D
        # starts blind; this scale gives routed capsules lengths of ~0.1-0.5 at init instead.
        std = 4.0 * n_out / (n_in * d_out) ** 0.5
        self.weight = nn.Parameter(std * torch.randn(n_in, n_out, d_out, d_in))

    def forward(self, u: torch.Tensor) -> torch.Tensor:
        if self.impl == "fused":  # same math, hand-written backward (models/routing/dynamic_fused.py)
            return routed_capsules(u, self.weight, self.iterations, self.grad)
        u_hat = torch.einsum("ijed,bid->bije", self.weight, u)  # (B, n_in, n_out, d_out), eq. 2
        return dynamic_routing(u_hat, self.iterations, self.grad)

    @staticmethod
    def presence(out: torch.Tensor) -> torch.Tensor:
        """Probability that each output entity is present: the capsule's length, (B, n_out)."""
        return capsule_lengths(out)

    @staticmethod
    def pose(out: torch.Tensor) -> torch.Tensor:
        """The capsule vectors themselves, (B, n_out, d_out)."""
        return out


def capsule_layers(routing: str, in_channels: int, primary_channels: int, primary_dim: int,
                   primary_kernel: int, n_in: int, n_out: int, caps_dim: int, iterations: int = 3,
                   grad: str = "all", impl: str = "fused", em_schedule: str = "ramp") -> tuple[nn.Module, nn.Module]:
    """(primary capsules, routed capsule layer) for `routing` = dynamic | em | attention.

    The routed layer maps the primary layer's output (B, n_in, .) to (B, n_out, layer.out_dim) and has
    `presence(out)` (B, n_out) and `pose(out)`. Vector kinds read presence as a capsule's length;
    `em` uses matrix capsules (4x4 pose + activation: primary_dim and caps_dim must be 16) and reads
    the activation. `iterations`, `grad` and `impl` apply to the iterative kinds only (see each file);
    `em_schedule` to em alone (models/routing/em.py).
    """
    if routing == "dynamic":
        return (PrimaryCaps(in_channels, primary_channels, primary_dim, primary_kernel),
                RoutedCaps(n_in, primary_dim, n_out, caps_dim, iterations, grad, impl))
    if routing == "attention":
        return (PrimaryCaps(in_channels, primary_channels, primary_dim, primary_kernel),
                AttentionCaps(n_in, primary_dim, n_out, caps_dim))
    if routing == "em":
        if primary_dim != POSE or caps_dim != POSE:
            raise ValueError(f"routing 'em' uses 4x4 pose matrices: primary_dim and caps_dim must be {POSE}, "
                             f"got {primary_dim} and {caps_dim}")
        return (PrimaryMatrixCaps(in_channels, primary_channels, primary_kernel),
                EMCaps(n_in, n_out, iterations, grad, em_schedule))
    raise ValueError(f"unknown routing {routing!r}; choose dynamic, em or attention")


def capsule_lengths(v: torch.Tensor) -> torch.Tensor:
    """Length of each capsule vector (B, n, d) -> (B, n), safe at 0."""
    return torch.sqrt((v * v).sum(-1) + _EPS)


__all__ = ["squash", "dynamic_routing", "PrimaryCaps", "RoutedCaps", "capsule_layers", "capsule_lengths",
           "conv_out"]
