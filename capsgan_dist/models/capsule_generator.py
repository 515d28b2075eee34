"""Capsule generator: the CapsNet recognition path run backwards (`model.generator=capsule`).

z -> n_top capsules of d_top dims (dense, squashed) -> a routed capsule layer to a grid of
primary capsules (channels x S/4 x S/4 positions, d-D each) -> read as a feature map, as
PrimaryCaps reads one in the other direction -> the paper's up-sampling conv stack -> tanh.
This is the second design of Marusaki & Watanabe 2020 ("Capsule GAN Using Capsule Network for
Generator Architecture", arXiv 2003.08047): "the reverse operation of recognition process".

Routing by agreement in the generative direction (docs/design.md, "Capsule generator"): each of
the thousands of primary capsules (the parts) chooses among the few top capsules (the wholes),
so the softmax runs over the n_top PARENTS, not over the outputs as in Sabour et al.
Procedure 1. It keeps Procedure 1's meaning, "each part belongs to one whole", and its couplings
start at 1/n_top instead of 1/n_primary.
"""

from __future__ import annotations

import torch
from torch import nn

from capsgan_dist.models.capsules import squash
from capsgan_dist.models.generators import keras_init, upsampling_stack
from capsgan_dist.shapes import g_upsamplings, g_widths_for


def parent_routing(u_hat: torch.Tensor, iterations: int, grad: str = "all") -> torch.Tensor:
    """Route predictions u_hat (n_in, B, n_out, d) of n_in parents for n_out children to v (B, n_out, d).

    Sabour et al. Procedure 1 with the softmax over the parents i: logits b start at 0 for every
    sample, c_ij = softmax_i(b_ij), s_j = sum_i c_ij u_hat_j|i, v_j = squash(s_j) (eq. 1),
    b_ij += u_hat_j|i . v_j. grad="last" detaches u_hat in all but the last iteration.

    Parent-major layout: the prediction matmul writes u_hat this way without a copy, and every
    routing step is then an elementwise product and a sum over a short leading (n_in) or trailing
    (d) axis of contiguous blocks. On CPU that ran clearly faster, forward and backward, than a
    child-major layout with ~50k batched (1 x n_in) @ (n_in x d) products (which also needs a
    permuted copy of u_hat). Memory: u_hat (n_in * n_out * d floats per image, 0.5 MB in fp32 at
    MNIST sizes) plus one u_hat-sized product at a time; autograd keeps only references to u_hat.
    Logits, couplings and v are fp32 under bf16 autocast (u_hat stays bf16, products promote).
    """
    if iterations < 1:
        raise ValueError(f"routing iterations must be >= 1, got {iterations}")
    if grad not in ("all", "last"):
        raise ValueError(f"grad must be 'all' or 'last', got {grad!r}")
    acc = torch.promote_types(u_hat.dtype, torch.float32)
    route = u_hat.detach() if grad == "last" else u_hat
    b = None  # logits (n_in, B, n_out); None stands for all zeros (iteration 0)
    for it in range(iterations):
        last = it == iterations - 1
        u = u_hat if last else route
        if b is None:  # c = softmax(0) = 1/n_in: the plain mean over the parents
            s = u.mean(0, dtype=acc)
        else:
            c = torch.softmax(b, dim=0)  # each child distributes over its parents
            s = (c.unsqueeze(-1) * u).sum(0)  # (B, n_out, d)
        v = squash(s)
        if not last:
            a = (u * v).sum(-1)  # (n_in, B, n_out): agreement u_hat_j|i . v_j
            b = a if b is None else b + a  # Procedure 1, line 7
    return v


class CapsuleGenerator(nn.Module):
    """z -> top capsules -> parent routing -> primary-capsule grid -> conv stack -> (B, C, S, S) in [-1, 1]."""

    def __init__(self, latent_dim: int = 100, image_size: int = 28, channels: int = 1, top_caps: int = 10,
                 top_dim: int = 16, primary_channels: int = 32, primary_dim: int = 8, iterations: int = 3,
                 grad: str = "all", widths: tuple[int, ...] = (128, 64, 32, 3), batchnorm: bool = False):
        super().__init__()
        n_up, widths = g_upsamplings(image_size), g_widths_for(widths, image_size)
        if image_size % 4 or len(widths) < 3:
            raise ValueError(f"need image_size divisible by 4 and >= 3 widths, got {image_size}, {widths}")
        if top_caps < 2:
            raise ValueError(f"need at least 2 top capsules (got {top_caps}): with one parent the softmax "
                             "over parents is always 1 and routing would be a no-op")
        self.latent_dim, self.iterations, self.grad = latent_dim, iterations, grad
        self.top_caps, self.top_dim = top_caps, top_dim
        self.primary_channels, self.primary_dim, self.s0 = primary_channels, primary_dim, image_size // 2 ** n_up
        self.n_primary = primary_channels * self.s0 * self.s0
        self.fc = nn.Linear(latent_dim, top_caps * top_dim)
        # W_ij (Sabour eq. 2) laid out as RoutedCaps' weight: (n_in, n_out, d_out, d_in).
        self.weight = nn.Parameter(torch.empty(top_caps, self.n_primary, primary_dim, top_dim))
        self.net = upsampling_stack(primary_channels * primary_dim, widths, channels, batchnorm, n_up)
        keras_init(self)
        # Top capsules have lengths ~0.9 at init (squash of ~N(0, 0.8) entries). With this std the
        # mean prediction over the parents (the coupling at iteration 0) has length ~0.5 per primary
        # capsule, where squash is near-linear in direction and still far from saturation; the
        # common 0.01 init would give lengths ~1e-3, where squash ~ |s|^2 and the grid starts blank.
        nn.init.normal_(self.weight, std=(top_caps / primary_dim) ** 0.5)

    def predictions(self, u: torch.Tensor) -> torch.Tensor:
        """u_hat_j|i = W_ij u_i (Sabour eq. 2) for u (B, n_in, d_in): (n_in, B, n_out, d_out)."""
        B = u.shape[0]
        w = self.weight.view(self.top_caps, self.n_primary * self.primary_dim, self.top_dim)
        u_hat = torch.bmm(u.transpose(0, 1), w.transpose(1, 2))  # (n_in, B, n_out*d_out), one matmul per parent
        return u_hat.view(self.top_caps, B, self.n_primary, self.primary_dim)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        B = z.shape[0]
        top = squash(self.fc(z).view(B, self.top_caps, self.top_dim))  # (B, n_top, d_top)
        v = parent_routing(self.predictions(top), self.iterations, self.grad)  # (B, n_primary, d)
        # The inverse of PrimaryCaps' reading: capsule (channel k, pixel h, w) -> the `d` channels
        # k*d .. k*d+d-1 of pixel (h, w).
        h = v.view(B, self.primary_channels, self.s0, self.s0, self.primary_dim).permute(0, 1, 4, 2, 3)
        return self.net(h.reshape(B, self.primary_channels * self.primary_dim, self.s0, self.s0))


__all__ = ["CapsuleGenerator", "parent_routing"]
