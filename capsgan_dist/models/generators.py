"""DCGAN-style generator of the paper: 100-D latent -> image, 3x3 kernels, LeakyReLU, tanh."""

from __future__ import annotations

import torch
from torch import nn

from capsgan_dist.shapes import g_upsamplings, g_widths_for


def upsampling_stack(c_in: int, widths: tuple[int, ...], channels: int, batchnorm: bool,
                     n_up: int = 2) -> nn.Sequential:
    """Conv to widths[0], `n_up` x2 transposed convs, the remaining convs, conv to `channels`, tanh.

    (B, c_in, S / 2^n_up, S / 2^n_up) -> (B, channels, S, S). All kernels 3x3, LeakyReLU(0.2) after
    each but the last (the paper's section 3.3); shared by the DCGAN and the capsule generator.
    """
    def block(conv: nn.Module, width: int) -> list[nn.Module]:
        return [conv] + ([nn.BatchNorm2d(width)] if batchnorm else []) + [nn.LeakyReLU(0.2)]

    layers: list[nn.Module] = block(nn.Conv2d(c_in, widths[0], 3, padding=1), widths[0])
    c = widths[0]
    for i, w in enumerate(widths[1:]):
        if i < n_up:  # the first n_up go up x2 each: ... -> S/2 -> S
            conv = nn.ConvTranspose2d(c, w, 3, stride=2, padding=1, output_padding=1)
        else:
            conv = nn.Conv2d(c, w, 3, padding=1)
        layers += block(conv, w)
        c = w
    layers += [nn.Conv2d(c, channels, 3, padding=1), nn.Tanh()]
    return nn.Sequential(*layers)


def keras_init(model: nn.Module) -> None:
    """Glorot-uniform weights and zero biases for every Linear and (transposed) conv, as Keras does.

    PyTorch's default (kaiming_uniform(a=sqrt(5)) and random biases) shrinks the signal ~6x per
    layer in this BatchNorm-free stack, so the biases dominate: every z gives nearly the same image
    (across-sample std 0.002 vs 0.009) and on MNIST G collapsed to one checkerboard.
    """
    for m in model.modules():
        if isinstance(m, (nn.Linear, nn.Conv2d, nn.ConvTranspose2d)):
            nn.init.xavier_uniform_(m.weight)
            nn.init.zeros_(m.bias)


class Generator(nn.Module):
    """Dense to (w0, s0, s0), conv w0, k x2 transposed convs, remaining convs, conv to C, tanh.

    k and s0 = S / 2^k come from the size (shapes.g_upsamplings): at 28 px k = 2 from 7x7, and with
    widths (128, 64, 32, 3) and C=1 the five convs have the paper's 128, 64, 32, 3, 1 kernels; at
    64 px k = 4 from 4x4, as Radford et al.'s DCGAN (widths needs 1 + k entries).
    """

    def __init__(self, latent_dim: int = 100, image_size: int = 28, channels: int = 1,
                 widths: tuple[int, ...] = (128, 64, 32, 3), batchnorm: bool = False):
        super().__init__()
        n_up, widths = g_upsamplings(image_size), g_widths_for(widths, image_size)
        if image_size % 4 or len(widths) < 3:
            raise ValueError(f"need image_size divisible by 4 and >= 3 widths, got {image_size}, {widths}")
        self.latent_dim, self.s0, self.w0 = latent_dim, image_size // 2 ** n_up, widths[0]
        self.fc = nn.Linear(latent_dim, widths[0] * self.s0 * self.s0)
        self.net = upsampling_stack(widths[0], widths, channels, batchnorm, n_up)
        keras_init(self)  # as in the paper's (Keras) code

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        h = self.fc(z).view(-1, self.w0, self.s0, self.s0)
        return self.net(nn.functional.leaky_relu(h, 0.2))  # (B, C, S, S) in [-1, 1]
