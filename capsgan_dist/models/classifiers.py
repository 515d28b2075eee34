"""Image classifiers whose feature spaces the sample-quality metrics use: LeNet and CapsNet.

Both expose `forward(x) -> logits (B, K)`, `features(x) -> (B, num_features)`,
`features_and_logits(x)` (one pass) and `training_loss(x, y) -> (loss, logits)`, on images in
[-1, 1] like the GAN's data.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from capsgan_dist.losses import margin_loss
from capsgan_dist.models.capsules import capsule_layers
from capsgan_dist.shapes import capsnet_grid, lenet_grid, min_classifier_image


class LeNet(nn.Module):
    """LeNet-style CNN: conv5(20)-pool-conv5(50)-pool-dense(features)-dense(classes)."""

    def __init__(self, image_size: int = 28, channels: int = 1, n_classes: int = 10, num_features: int = 128):
        super().__init__()
        s = lenet_grid(image_size)
        if s < 1:
            raise ValueError(f"image size {image_size} is too small for LeNet "
                             f"(needs >= {min_classifier_image('lenet')})")
        self.num_features = num_features
        self.body = nn.Sequential(
            nn.Conv2d(channels, 20, 5), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(20, 50, 5), nn.ReLU(), nn.MaxPool2d(2),
            nn.Flatten(), nn.Linear(50 * s * s, num_features), nn.ReLU(),
        )
        self.drop = nn.Dropout(0.3)
        self.out = nn.Linear(num_features, n_classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)  # (B, num_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(self.drop(self.features(x)))  # (B, K)

    def features_and_logits(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        f = self.features(x)
        return f, self.out(self.drop(f))

    def training_loss(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logits = self(x)
        return F.cross_entropy(logits, y), logits


class CapsNet(nn.Module):
    """Sabour et al. 2017: conv(256, 9x9) -> PrimaryCaps (32x8D, 9x9 s2) -> class capsules (16D) + decoder.

    `routing` picks the routing between primary and class capsules (models/routing/). With `em` the
    capsules are 4x4 matrices with an activation (primary_dim must be 16): the activation is the
    class probability where the vector kinds use the capsule's length, and the decoder reads the
    true class's 16 pose entries.
    """

    def __init__(self, image_size: int = 28, channels: int = 1, n_classes: int = 10,
                 conv1_channels: int = 256, primary_channels: int = 32, primary_dim: int = 8,
                 caps_dim: int = 16, routing_iters: int = 3, recon_weight: float = 0.0005,
                 routing: str = "dynamic", em_schedule: str = "ramp"):
        super().__init__()
        h = capsnet_grid(image_size)
        if h < 1:
            raise ValueError(f"image size {image_size} is too small for CapsNet "
                             f"(needs >= {min_classifier_image('capsnet')})")
        self.n_classes, self.caps_dim, self.recon_weight = n_classes, caps_dim, recon_weight
        self.conv1 = nn.Conv2d(channels, conv1_channels, 9)
        self.primary, self.caps = capsule_layers(routing, conv1_channels, primary_channels, primary_dim, 9,
                                                 primary_channels * h * h, n_classes, caps_dim, routing_iters,
                                                 em_schedule=em_schedule)
        self.num_features = n_classes * self.caps.out_dim
        if routing != "em":
            # RoutedCaps' init suits the GAN discriminator's few inputs; with 1152 primary capsules it
            # makes every class capsule ~1 long at once (margin loss stuck at 9 * 0.5 * 0.9^2 = 3.6).
            # Sabour et al.'s reference code draws W_ij with std 0.01: lengths start small, and train.
            nn.init.normal_(self.caps.weight, std=0.01)
        n_pix = channels * image_size * image_size
        self.decoder = nn.Sequential(nn.Linear(n_classes * caps_dim, 512), nn.ReLU(),
                                     nn.Linear(512, 1024), nn.ReLU(), nn.Linear(1024, n_pix), nn.Sigmoid())

    def capsules(self, x: torch.Tensor) -> torch.Tensor:
        return self.caps(self.primary(F.relu(self.conv1(x))))  # (B, K, caps.out_dim)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.capsules(x).flatten(1)  # (B, K * caps.out_dim)

    def _logits(self, v: torch.Tensor) -> torch.Tensor:
        # Capsule lengths (or em activations) are class "probabilities" in (0, 1); their logs serve as logits.
        return torch.log(self.caps.presence(v).clamp_min(1e-12))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._logits(self.capsules(x))

    def features_and_logits(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        v = self.capsules(x)
        return v.flatten(1), self._logits(v)

    def training_loss(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        v = self.capsules(x)  # (B, K, D)
        presence = self.caps.presence(v)  # (B, K)
        onehot = F.one_hot(y, self.n_classes).to(v.dtype)
        margin = margin_loss(presence, onehot).mean()  # Sabour et al. eq. 4
        pose = self.caps.pose(v)  # (B, K, caps_dim)
        recon = self.decoder((pose * onehot.unsqueeze(-1)).flatten(1))  # masked by the true class
        target = (x.flatten(1) + 1.0) / 2.0  # [-1, 1] -> [0, 1], the decoder's sigmoid range
        sse = ((recon - target) ** 2).sum(dim=1).mean()  # sum of squared errors, scaled 0.0005
        return margin + self.recon_weight * sse, self._logits(v)


CLASSIFIERS: dict[str, type[nn.Module]] = {"lenet": LeNet, "capsnet": CapsNet}
