"""Discriminators with K class outputs, for semi-supervised training (data.labels_per_class > 0).

Both return K logits l_k (B, K); the loss reads D(x) = Z(x) / (Z(x) + 1) with Z = sum_k exp(l_k)
(Salimans et al. 2016, sec. 5), and `features_and_logits` gives the layer feature matching uses.

Capsule D: the routed capsules are the classes, one per class, and l_k = logit(|v_k|) =
log(|v_k| / (1 - |v_k|)). For a squashed capsule |v| = |s|^2 / (1 + |s|^2), so l_k = log |s_k|^2:
no parameters, unbounded both ways, sigmoid(l_k) is exactly the capsule length (the margin loss sees
true lengths), and Z(x) = sum_k |s_k|^2: an image is real when some class capsule is active. A
fixed scale (l_k = c |v_k| >= 0) would keep D(x) >= K/(K+1) and D could never call an image fake.
Conv D: the DCGAN baseline with K channels in its last conv instead of one.
"""

from __future__ import annotations

import torch
from torch import nn

from capsgan_dist.models.capsules import PrimaryCaps, RoutedCaps, capsule_lengths
from capsgan_dist.models.discriminators import conv_body
from capsgan_dist.shapes import primary_grid

# |v| is clamped below 1 so logit(|v|) stays finite in fp32 (l_k <= ~13.8, a probability of 1 - 1e-6).
_MAX_LENGTH = 1.0 - 1e-6


def length_logits(v: torch.Tensor) -> torch.Tensor:
    """Capsules v (B, K, d) -> logits logit(|v_k|) (B, K) in fp32, so that sigmoid(l_k) = |v_k|."""
    length = capsule_lengths(v.float()).clamp(max=_MAX_LENGTH)
    return torch.log(length) - torch.log1p(-length)


class CapsuleClassDiscriminator(nn.Module):
    """Conv+PReLU -> PrimaryCaps (stride 2) -> one routed capsule per class -> K length logits."""

    def __init__(self, image_size: int = 28, channels: int = 1, conv1_channels: int = 256,
                 conv1_kernel: int = 9, primary_kernel: int = 7, primary_channels: int = 32,
                 primary_dim: int = 8, n_classes: int = 10, caps_dim: int = 16, routing_iters: int = 3,
                 routing_grad: str = "all", routing_impl: str = "fused", conv1_stride: int = 1):
        super().__init__()
        h2 = primary_grid(image_size, conv1_kernel, primary_kernel, conv1_stride)
        if h2 < 1:
            raise ValueError(f"image size {image_size} is too small for conv1 kernel {conv1_kernel} and "
                             f"primary kernel {primary_kernel}; use smaller kernels")
        # The same layers (and names) as the GAN's CapsuleDiscriminator, without its dense head; conv1
        # strides as the GAN's does above 32 px, so the primary grid stays bounded (model.caps_max_grid).
        self.conv1 = nn.Conv2d(channels, conv1_channels, conv1_kernel, stride=conv1_stride)
        self.act1 = nn.PReLU(conv1_channels)
        self.primary = PrimaryCaps(conv1_channels, primary_channels, primary_dim, primary_kernel)
        self.caps = RoutedCaps(primary_channels * h2 * h2, primary_dim, n_classes, caps_dim, routing_iters,
                               routing_grad, routing_impl)

    def primary_capsules(self, x: torch.Tensor) -> torch.Tensor:
        return self.primary(self.act1(self.conv1(x)))  # (B, n_primary, primary_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return length_logits(self.caps(self.primary_capsules(x)))  # (B, K)

    def features_and_logits(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The primary capsules flattened (B, n_primary * primary_dim), the layer feature matching
        compares, and the logits. Not the class capsules: D shrinks a fake's class capsules to near
        zero length, where the squash passes almost no gradient back to G (docs/design.md)."""
        u = self.primary_capsules(x)
        return u.flatten(1), length_logits(self.caps(u))


class ConvClassDiscriminator(nn.Module):
    """The DCGAN baseline D (4 strided 3x3 convs, LeakyReLU) whose last conv gives K logits."""

    def __init__(self, image_size: int = 28, channels: int = 1,
                 widths: tuple[int, ...] = (64, 128, 256, 512), n_classes: int = 10):
        super().__init__()
        layers, size, c_in = conv_body(image_size, channels, widths)
        self.body = nn.Sequential(*layers)
        self.out = nn.Conv2d(c_in, n_classes, size)  # covers the whole remaining map

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(self.body(x)).flatten(1)  # (B, K)

    def features_and_logits(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The last conv's input flattened (B, C * s * s), the layer feature matching compares, and the logits."""
        h = self.body(x)
        return h.flatten(1), self.out(h).flatten(1)


__all__ = ["CapsuleClassDiscriminator", "ConvClassDiscriminator", "length_logits"]
