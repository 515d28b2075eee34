"""Discriminators: the capsule network of CapsuleGAN and the paper's conv baseline. Both return logits (B,).

Radford et al.'s DCGAN D, the stronger baseline, is in dcgan_discriminator.py."""

from __future__ import annotations

import torch
from torch import nn

from capsgan_dist.models.capsules import capsule_layers
from capsgan_dist.models.dcgan_discriminator import dcgan_init
from capsgan_dist.shapes import conv_out, min_capsule_image, primary_grid


class CapsuleDiscriminator(nn.Module):
    """Conv(256)+PReLU -> PrimaryCaps (stride 2) -> routed capsules -> flatten -> Dense(64) -> Dense(1).

    conv1 has stride 1 (the paper) unless the image is large enough that the primary-capsule grid would
    exceed model.caps_max_grid on a side; then it strides 2, 4, ... (shapes.conv1_stride).

    The head reads every routed capsule whole: the vectors for dynamic and attention routing, the
    16 pose entries and the activation of each matrix capsule for em.
    """

    def __init__(self, image_size: int = 28, channels: int = 1, conv1_channels: int = 256,
                 conv1_kernel: int = 9, primary_kernel: int = 7, primary_channels: int = 32,
                 primary_dim: int = 8, n_caps: int = 10, caps_dim: int = 16, routing_iters: int = 3,
                 routing_grad: str = "all", dense: int = 64, routing_impl: str = "fused",
                 routing: str = "dynamic", em_schedule: str = "ramp", conv1_stride: int = 1):
        super().__init__()
        h2 = primary_grid(image_size, conv1_kernel, primary_kernel, conv1_stride)  # Config checks this first
        if h2 < 1:
            raise ValueError(
                f"image size {image_size} is too small for conv1 kernel {conv1_kernel} and primary "
                f"kernel {primary_kernel} (needs >= {min_capsule_image(conv1_kernel, primary_kernel)})")
        # Stride 1 is the paper's; larger images stride conv1 so the primary grid stays bounded (docs/design.md).
        self.conv1 = nn.Conv2d(channels, conv1_channels, conv1_kernel, stride=conv1_stride)
        self.act1 = nn.PReLU(conv1_channels)
        self.n_in = primary_channels * h2 * h2
        self.primary, self.caps = capsule_layers(routing, conv1_channels, primary_channels, primary_dim,
                                                 primary_kernel, self.n_in, n_caps, caps_dim, routing_iters,
                                                 routing_grad, routing_impl, em_schedule)
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(n_caps * self.caps.out_dim, dense),
                                  nn.LeakyReLU(0.2), nn.Linear(dense, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        u = self.primary(self.act1(self.conv1(x)))  # (B, n_in, primary_dim)
        v = self.caps(u)  # (B, n_caps, caps_dim), or (B, n_caps, 16 + 1) for em
        return self.head(v).squeeze(-1)  # (B,) logits; sigmoid lives in the loss


def conv_body(image_size: int, channels: int, widths: tuple[int, ...], kernel: int = 3,
              bias: bool = True, batchnorm: bool = False) -> tuple[list[nn.Module], int, int]:
    """The conv D's strided convs (padding 1; strides 2, 2, 2 and, with a 4th width, 1) with LeakyReLU
    (and batch norm after all but the first, if asked): the layers, then the map size and channels after them."""
    layers: list[nn.Module] = []
    size, c_in = image_size, channels
    for i, (w, stride) in enumerate(zip(widths, (2, 2, 2, 1))):
        layers.append(nn.Conv2d(c_in, w, kernel, stride=stride, padding=1, bias=bias))
        layers += [nn.BatchNorm2d(w)] if batchnorm and i > 0 else []
        layers.append(nn.LeakyReLU(0.2))
        size, c_in = conv_out(size, kernel, stride, 1), w
    return layers, size, c_in


class ConvDiscriminator(nn.Module):
    """The paper's 5-layer reading: 4 strided 3x3 convs with LeakyReLU, then a 5th conv over the map -> logit.

    kernel, bias, init, batch norm and 3 widths instead of 4 exist for the ablation against Radford
    et al.'s D (docs/design.md); the defaults are the paper's reading.
    """

    def __init__(self, image_size: int = 28, channels: int = 1,
                 widths: tuple[int, ...] = (64, 128, 256, 512), kernel: int = 3, bias: bool = True,
                 init: str = "torch", batchnorm: bool = False):
        super().__init__()
        layers, size, c_in = conv_body(image_size, channels, widths, kernel, bias, batchnorm)
        layers.append(nn.Conv2d(c_in, 1, size, bias=bias))  # 5th conv covers the whole remaining map
        self.net = nn.Sequential(*layers)
        if init == "dcgan":
            dcgan_init(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x).flatten()  # (B,)
