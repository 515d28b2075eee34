"""The DCGAN discriminator as Radford et al. (2016) describe it, for any supported image size.

4x4 stride-2 convs halve the map until it is at most 4x4 (28 -> 14 -> 7 -> 3, 32 -> 16 -> 8 -> 4,
64 -> ... -> 4: Radford et al.'s 64 px model, 128 -> ... -> 4), doubling the width from
`base_width`; batch norm after every strided conv but the first; LeakyReLU(0.2); a last conv over
the remaining map gives the logit. No biases before batch norm (it would cancel them), none at
all as in the public code, and N(0, 0.02) weights (batch-norm scales N(1, 0.02)).

Batch norm normalises with the statistics of the batch it is given, so the training step must
give it real and generated images in separate forwards (`train.d_batches`, steps.py): one mixed
batch would let D tell fakes from reals by their shared statistics.
"""

from __future__ import annotations

import torch
from torch import nn

from capsgan_dist.shapes import conv_out


def dcgan_init(model: nn.Module) -> None:
    """Radford et al.'s init: conv and linear weights N(0, 0.02), batch-norm scales N(1, 0.02), biases 0."""
    for m in model.modules():
        if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear)):
            nn.init.normal_(m.weight, 0.0, 0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.normal_(m.weight, 1.0, 0.02)
            nn.init.zeros_(m.bias)


def dcgan_stages(image_size: int) -> int:
    """Strided 4x4 convs (padding 1) until the map is at most 4x4: 3 at 28 and 32 px, 4 at 64, 5 at 128."""
    n, size = 0, image_size
    while size > 4:
        size, n = conv_out(size, 4, 2, 1), n + 1
    return n


class DCGANDiscriminator(nn.Module):
    """(B, C, S, S) -> (B,) logits: strided 4x4 convs with batch norm, LeakyReLU 0.2, a conv to one logit."""

    def __init__(self, image_size: int = 28, channels: int = 1, base_width: int = 64, batchnorm: bool = True):
        super().__init__()
        layers: list[nn.Module] = []
        size, c_in = image_size, channels
        for i in range(dcgan_stages(image_size)):
            width = base_width * 2 ** i
            layers.append(nn.Conv2d(c_in, width, 4, stride=2, padding=1, bias=False))
            if batchnorm and i > 0:  # Radford et al.: none on D's input layer
                layers.append(nn.BatchNorm2d(width))
            layers.append(nn.LeakyReLU(0.2))
            size, c_in = conv_out(size, 4, 2, 1), width
        layers.append(nn.Conv2d(c_in, 1, size, bias=False))  # over the whole (<= 4x4) map -> 1x1
        self.net = nn.Sequential(*layers)
        dcgan_init(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x).flatten()  # (B,)


def has_batchnorm(model: nn.Module) -> bool:
    """Whether any layer normalises with batch statistics (then real and fake need separate forwards)."""
    return any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())
