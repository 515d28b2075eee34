"""A slow, plainly written capsule discriminator: the baseline every speed-up is measured against.

Same architecture and parameter names as `capsgan_dist.models.CapsuleDiscriminator`, so
`ref.load_state_dict(D.state_dict())` copies the weights and both compute the same function.
It is written the way most public CapsNet code is: predictions and routing one output capsule at
a time, a Python loop over routing iterations, broadcasting matmuls, no fused or hand-written
kernels. It lives in benchmarks/ only and is never used for training.
"""

from __future__ import annotations

import torch
from torch import nn

from capsgan_dist.config import Config


def plain_squash(s: torch.Tensor) -> torch.Tensor:
    """Sabour et al. eq. 1 as printed: |s|^2 / (1 + |s|^2) * s / |s| (with a small epsilon)."""
    sq = (s**2).sum(dim=-1, keepdim=True)
    return (sq / (1.0 + sq)) * s / torch.sqrt(sq + 1e-8)


class ReferenceRoutedCaps(nn.Module):
    """Routed capsules with the same `weight` (n_in, n_out, d_out, d_in) as `RoutedCaps`."""

    def __init__(self, n_in: int, d_in: int, n_out: int, d_out: int, iterations: int = 3, grad: str = "all"):
        super().__init__()
        self.n_out, self.iterations, self.grad = n_out, iterations, grad
        self.weight = nn.Parameter(torch.zeros(n_in, n_out, d_out, d_in))

    def forward(self, u: torch.Tensor) -> torch.Tensor:
        B, n_in, _ = u.shape
        # Predictions of every input capsule for output capsule j: u_hat_j|i = W_ij u_i.
        u_hat = []
        for j in range(self.n_out):
            u_hat.append(torch.matmul(self.weight[:, j], u.unsqueeze(-1)).squeeze(-1))  # (B, n_in, d_out)
        b = torch.zeros(B, n_in, self.n_out, device=u.device, dtype=u.dtype)
        for it in range(self.iterations):
            last = it == self.iterations - 1
            c = torch.softmax(b, dim=2)  # each input capsule distributes over the outputs
            outputs = []
            for j in range(self.n_out):
                uj = u_hat[j] if (last or self.grad == "all") else u_hat[j].detach()
                s_j = (c[:, :, j].unsqueeze(-1) * uj).sum(dim=1)  # (B, d_out)
                outputs.append(plain_squash(s_j))
            if not last:
                agreements = []
                for j in range(self.n_out):
                    uj = u_hat[j] if self.grad == "all" else u_hat[j].detach()
                    agreements.append((uj * outputs[j].unsqueeze(1)).sum(dim=-1))  # (B, n_in)
                b = b + torch.stack(agreements, dim=2)
        return torch.stack(outputs, dim=1)  # (B, n_out, d_out)


class ReferenceCapsuleDiscriminator(nn.Module):
    """Conv+PReLU -> primary capsules -> routed capsules -> dense head, one step at a time."""

    def __init__(self, image_size: int = 28, channels: int = 1, conv1_channels: int = 256,
                 conv1_kernel: int = 9, primary_kernel: int = 7, primary_channels: int = 32,
                 primary_dim: int = 8, n_caps: int = 10, caps_dim: int = 16, routing_iters: int = 3,
                 routing_grad: str = "all", dense: int = 64):
        super().__init__()
        self.primary_channels, self.primary_dim = primary_channels, primary_dim
        self.conv1 = nn.Conv2d(channels, conv1_channels, conv1_kernel)
        self.act1 = nn.PReLU(conv1_channels)
        self.primary = nn.Module()
        self.primary.conv = nn.Conv2d(conv1_channels, primary_channels * primary_dim, primary_kernel, stride=2)
        h = (image_size - conv1_kernel + 1 - primary_kernel) // 2 + 1
        self.caps = ReferenceRoutedCaps(primary_channels * h * h, primary_dim, n_caps, caps_dim,
                                        routing_iters, routing_grad)
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(n_caps * caps_dim, dense), nn.LeakyReLU(0.2),
                                  nn.Linear(dense, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.primary.conv(self.act1(self.conv1(x)))  # (B, channels*dim, H, W)
        B, _, H, W = y.shape
        y = y.view(B, self.primary_channels, self.primary_dim, H, W).permute(0, 1, 3, 4, 2)
        u = plain_squash(y.reshape(B, -1, self.primary_dim))  # (B, n_in, primary_dim)
        v = self.caps(u)
        return self.head(v).squeeze(-1)


def reference_from(cfg: Config, model: nn.Module | None = None) -> ReferenceCapsuleDiscriminator:
    """The reference discriminator for `cfg`; with `model`, a copy of that model's weights."""
    m, d = cfg.model, cfg.data
    ref = ReferenceCapsuleDiscriminator(d.image_size, d.channels, m.conv1_channels, m.conv1_kernel,
                                        m.primary_kernel, m.primary_channels, m.primary_dim, m.n_caps,
                                        m.caps_dim, m.routing_iters, m.routing_grad, m.dense)
    if model is not None:
        ref.load_state_dict(model.state_dict())  # same names and shapes: raises if they ever drift
        ref = ref.to(next(model.parameters()).device)
    return ref
