"""Spatial sizes through the networks, as plain arithmetic (no torch).

The models build their layers from these, and the config checks them before any work, so a
size the layers cannot take is one line naming the keys instead of a traceback from inside a
layer constructor.
"""

from __future__ import annotations


def conv_out(size: int, kernel: int, stride: int = 1, padding: int = 0) -> int:
    """Spatial size after a conv (no dilation)."""
    return (size + 2 * padding - kernel) // stride + 1


def primary_grid(image_size: int, conv1_kernel: int, primary_kernel: int) -> int:
    """Side of the capsule D's primary-capsule grid: conv1 (stride 1), then PrimaryCaps (stride 2)."""
    return conv_out(conv_out(image_size, conv1_kernel), primary_kernel, stride=2)


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
