"""Spatial sizes through the networks, as plain arithmetic (no torch).

The models build their layers from these, and the config checks them before any work, so a
size the layers cannot take is one line naming the keys instead of a traceback from inside a
layer constructor.
"""

from __future__ import annotations


def conv_out(size: int, kernel: int, stride: int = 1, padding: int = 0) -> int:
    """Spatial size after a conv (no dilation)."""
    return (size + 2 * padding - kernel) // stride + 1


def primary_grid(image_size: int, conv1_kernel: int, primary_kernel: int, conv1_stride: int = 1) -> int:
    """Side of the capsule D's primary-capsule grid: conv1 (stride 1 in the paper), then PrimaryCaps (stride 2)."""
    return conv_out(conv_out(image_size, conv1_kernel, conv1_stride), primary_kernel, stride=2)


def conv1_stride(image_size: int, conv1_kernel: int, primary_kernel: int, max_grid: int) -> int:
    """The capsule D's conv1 stride: 1 (the paper's) while the primary grid is at most `max_grid` on a side,
    else the smallest power of 2 that brings it there (28 px: 1, grid 7; 64 px: 2, grid 11; 128 px: 4,
    grid 12 for max_grid 12); `max_grid` 0 keeps 1 at every size."""
    stride = 1
    while max_grid and primary_grid(image_size, conv1_kernel, primary_kernel, stride) > max_grid \
            and stride < image_size:
        stride *= 2
    return stride


def g_widths_for(widths: tuple[int, ...], image_size: int) -> tuple[int, ...]:
    """The generator's widths at `image_size`: as given when there are 1 + k of them (k upsamplings), else
    with doubled widths in front until there are (64 px from the paper's 128, 64, 32, 3: 256, 128, 64, 32, 3)."""
    widths = tuple(widths)
    while len(widths) < 1 + g_upsamplings(image_size):
        widths = (2 * widths[0], *widths)
    return widths


def g_upsamplings(image_size: int) -> int:
    """x2 upsampling stages of the generators: 2 from image_size / 4 when that is at most 7 (the paper's
    7x7 at 28 px), else one more per halving while the size allows (32 px: 3 from 4x4, 64 px: 4, 128 px: 5)."""
    k = 2
    while image_size % 2 ** (k + 1) == 0 and image_size // 2 ** k > 7:
        k += 1
    return k


def min_capsule_image(conv1_kernel: int, primary_kernel: int) -> int:
    """Smallest image side that leaves the capsule D a 1x1 primary-capsule grid."""
    return conv1_kernel + primary_kernel - 1


def lenet_grid(image_size: int) -> int:
    """Side of LeNet's last feature map: conv5, pool2, conv5, pool2."""
    return conv_out(conv_out(image_size, 5) // 2, 5) // 2


def capsnet_grid(image_size: int) -> int:
    """Side of CapsNet's primary-capsule grid: conv9 (stride 1), then PrimaryCaps conv9 (stride 2)."""
    return primary_grid(image_size, 9, 9)


def min_classifier_image(arch: str) -> int:
    """Smallest image side the classifier `arch` (lenet | capsnet) can take."""
    grid = {"lenet": lenet_grid, "capsnet": capsnet_grid}[arch]
    return next(s for s in range(1, 1024) if grid(s) >= 1)
