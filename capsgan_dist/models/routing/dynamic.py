"""Dynamic routing by agreement (Sabour, Frosst & Hinton 2017, Procedure 1), the plain autograd form.

`routing.dynamic_fused.routed_capsules` computes the same (with the predictions) for speed and memory;
this one is the readable reference the fast path is tested against, and the `perf.routing=einsum` path.
"""

from __future__ import annotations

import torch

from capsgan_dist.models.routing.squashing import squash


def dynamic_routing(u_hat: torch.Tensor, iterations: int, grad: str = "all") -> torch.Tensor:
    """Route predictions u_hat (B, n_in, n_out, d) to output capsules v (B, n_out, d).

    Procedure 1 of Sabour et al.: logits b start at 0 for every sample, c = softmax over the
    OUTPUT capsules, s_j = sum_i c_ij u_hat_j|i, v_j = squash(s_j), b_ij += u_hat_j|i . v_j.
    grad="last" detaches u_hat in all but the last iteration (common in CapsNet code);
    grad="all" (our default) backpropagates through every iteration, as the equations read.
    """
    if iterations < 1:
        raise ValueError(f"routing iterations must be >= 1, got {iterations}")
    if grad not in ("all", "last"):
        raise ValueError(f"grad must be 'all' or 'last', got {grad!r}")
    B, n_in, n_out, _ = u_hat.shape
    u_route = u_hat.detach() if grad == "last" else u_hat
    b = u_hat.new_zeros(B, n_in, n_out)  # per-sample logits, never shared across the batch
    for it in range(iterations):
        last = it == iterations - 1
        u = u_hat if last else u_route
        c = torch.softmax(b, dim=2)  # (B, n_in, n_out): each input distributes over outputs
        s = torch.einsum("bij,bijd->bjd", c, u)  # (B, n_out, d), Sabour eq. 2
        v = squash(s)
        if not last:
            b = b + torch.einsum("bijd,bjd->bij", u, v)  # agreement, Procedure 1 line 7
    return v


__all__ = ["dynamic_routing"]
