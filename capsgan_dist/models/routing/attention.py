"""Self-attention routing (Mazzia, Salvetti & Chiaberge 2021, "Efficient-CapsNet"), non-iterative.

Each output capsule j scores how well every prediction u_hat_j|i agrees with all the predictions
for j, A_j = U_j U_j^T / sqrt(d); the coupling c_ij is the softmax over output capsules of the
summed agreement sum_k A_j[i, k]; a learned log prior B_ij is added to it, and the outputs are
v_j = squash_exp(sum_i u_hat_j|i (c_ij + B_ij)). One pass: `model.routing_iters` is not used.
The (n_in x n_in) matrix A_j is never formed: sum_k A_j[i, k] = u_hat_j|i . (sum_k u_hat_j|k) / sqrt(d).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from capsgan_dist.models.routing.squashing import EPS, squash_exp


def attention_routing(u_hat: torch.Tensor, log_prior: torch.Tensor) -> torch.Tensor:
    """Route predictions u_hat (B, n_in, n_out, d) with log priors (n_in, n_out) to capsules v (B, n_out, d)."""
    d = u_hat.shape[-1]
    total = u_hat.sum(1)  # (B, n_out, d): sum_k u_hat_j|k
    agree = torch.einsum("bijd,bjd->bij", u_hat, total) / math.sqrt(d)  # (B, n_in, n_out): sum_k A_j[i, k]
    c = torch.softmax(agree, dim=2)  # over the OUTPUT capsules, as in dynamic routing
    s = torch.einsum("bij,bijd->bjd", c + log_prior.to(c.dtype), u_hat)  # (B, n_out, d)
    return squash_exp(s.to(torch.promote_types(s.dtype, torch.float32)))  # its norm in >= fp32 under autocast


class AttentionCaps(nn.Module):
    """Fully connected capsule layer: u_hat_j|i = W_ij u_i, then self-attention routing.

    (B, n_in, d_in) -> (B, n_out, d_out).
    """

    def __init__(self, n_in: int, d_in: int, n_out: int, d_out: int):
        super().__init__()
        if n_out < 2:
            raise ValueError(f"AttentionCaps needs at least 2 output capsules (got {n_out}): the softmax "
                             "over outputs is always 1 with one, and routing would be a no-op")
        self.out_dim = d_out
        # Same scale as RoutedCaps: at B = 0 and uniform coupling, s_j starts where dynamic routing's does.
        std = 4.0 * n_out / (n_in * d_out) ** 0.5
        self.weight = nn.Parameter(std * torch.randn(n_in, n_out, d_out, d_in))
        self.log_prior = nn.Parameter(torch.zeros(n_in, n_out))  # Efficient-CapsNet starts B at 0

    def forward(self, u: torch.Tensor) -> torch.Tensor:
        u_hat = torch.einsum("ijed,bid->bije", self.weight, u)  # (B, n_in, n_out, d_out)
        return attention_routing(u_hat, self.log_prior)

    @staticmethod
    def presence(out: torch.Tensor) -> torch.Tensor:
        """Probability that each output entity is present: the capsule's length, (B, n_out)."""
        return torch.sqrt((out * out).sum(-1) + EPS)

    @staticmethod
    def pose(out: torch.Tensor) -> torch.Tensor:
        """The capsule vectors themselves, (B, n_out, d_out)."""
        return out


__all__ = ["attention_routing", "AttentionCaps"]
