"""Capsule math against slow, obviously-correct float64 loop references (Sabour et al. 2017)."""

from __future__ import annotations

import math

import pytest
import torch

from capsgan_dist.models.capsules import RoutedCaps, dynamic_routing, squash


def ref_squash(s: list[float]) -> list[float]:
    """v = |s|^2 / (1 + |s|^2) * s / |s|, written out per component; 0 at s = 0."""
    norm2 = sum(x * x for x in s)
    if norm2 == 0.0:
        return [0.0] * len(s)
    norm = math.sqrt(norm2)
    return [norm2 / (1.0 + norm2) * x / norm for x in s]


def ref_routing(u_hat: torch.Tensor, iterations: int) -> torch.Tensor:
    """Procedure 1 of Sabour et al., one sample, one input and one output capsule at a time."""
    B, n_in, n_out, d = u_hat.shape
    u = u_hat.tolist()
    out = []
    for b in range(B):
        logits = [[0.0] * n_out for _ in range(n_in)]  # fresh zeros for every sample
        for it in range(iterations):
            c = []
            for i in range(n_in):  # softmax over the OUTPUT capsules j, for each input i
                m = max(logits[i])
                e = [math.exp(x - m) for x in logits[i]]
                c.append([x / sum(e) for x in e])
            v = []
            for j in range(n_out):
                s = [sum(c[i][j] * u[b][i][j][k] for i in range(n_in)) for k in range(d)]
                v.append(ref_squash(s))
            if it < iterations - 1:
                for i in range(n_in):
                    for j in range(n_out):
                        logits[i][j] += sum(u[b][i][j][k] * v[j][k] for k in range(d))
        out.append(v)
    return torch.tensor(out, dtype=torch.float64)


SHAPES = [(3, 5, 2, 4), (2, 7, 10, 3), (4, 12, 3, 8), (1, 3, 2, 1), (2, 20, 10, 16)]


@pytest.mark.parametrize("shape", [(4, 6), (2, 3, 8), (5, 1), (3, 16)])
def test_squash_matches_reference(shape):
    s = torch.randn(*shape, dtype=torch.float64, generator=torch.Generator().manual_seed(1)) * 2
    want = torch.tensor([ref_squash(row) for row in s.reshape(-1, shape[-1]).tolist()],
                        dtype=torch.float64).reshape(shape)
    torch.testing.assert_close(squash(s), want, rtol=1e-6, atol=1e-8)


def test_squash_gradient_is_exact_away_from_zero():
    s = torch.randn(4, 6, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(squash, (s,))


def test_squash_along_other_dim():
    s = torch.randn(3, 5, 4, dtype=torch.float64)
    torch.testing.assert_close(squash(s, dim=1), squash(s.transpose(1, 2)).transpose(1, 2))


def test_squash_length_below_one_and_direction_kept():
    s = torch.randn(100, 8, dtype=torch.float64) * 10
    v = squash(s)
    assert (v.norm(dim=-1) < 1).all()
    cos = torch.nn.functional.cosine_similarity(v, s, dim=-1)
    torch.testing.assert_close(cos, torch.ones(100, dtype=torch.float64))


def test_squash_zero_has_zero_value_and_finite_gradient():
    s = torch.zeros(2, 8, requires_grad=True)
    v = squash(s)
    assert torch.equal(v, torch.zeros(2, 8))
    (g,) = torch.autograd.grad(v.sum(), s)
    assert torch.isfinite(g).all()
    # second order too (used by gradient penalties): still finite
    s2 = torch.zeros(3, 4, dtype=torch.float64, requires_grad=True)
    (g1,) = torch.autograd.grad(squash(s2).pow(2).sum() + squash(s2).sum(), s2, create_graph=True)
    (g2,) = torch.autograd.grad(g1.sum(), s2)
    assert torch.isfinite(g1).all() and torch.isfinite(g2).all()


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("iterations", [1, 2, 3, 4, 5])
def test_routing_matches_loop_reference(shape, iterations):
    g = torch.Generator().manual_seed(1000 * iterations + sum(shape))
    u_hat = torch.randn(*shape, dtype=torch.float64, generator=g)
    got = dynamic_routing(u_hat, iterations)
    assert got.shape == (shape[0], shape[2], shape[3])
    torch.testing.assert_close(got, ref_routing(u_hat, iterations), rtol=1e-6, atol=1e-8)


def test_routing_is_per_sample():
    """Each sample routes alone: fails if logits are shared or averaged across the batch."""
    g = torch.Generator().manual_seed(3)
    u_hat = torch.randn(6, 9, 4, 5, dtype=torch.float64, generator=g)
    u_hat[3] *= 5.0  # one very different sample would dominate shared logits
    batched = dynamic_routing(u_hat, 3)
    alone = torch.cat([dynamic_routing(u_hat[i : i + 1], 3) for i in range(6)])
    torch.testing.assert_close(batched, alone, rtol=1e-12, atol=1e-12)


def test_routing_first_iteration_couples_uniformly_over_outputs():
    """With zero logits c_ij = 1/n_out (softmax over outputs), not 1/n_in (over inputs)."""
    u_hat = torch.randn(2, 7, 3, 4, dtype=torch.float64)
    torch.testing.assert_close(dynamic_routing(u_hat, 1), squash(u_hat.sum(1) / 3))


def test_routing_iterations_change_the_output():
    """With >= 2 output capsules routing is not a no-op: more iterations give other outputs."""
    u_hat = torch.randn(2, 10, 2, 4, dtype=torch.float64)
    v1, v3 = dynamic_routing(u_hat, 1), dynamic_routing(u_hat, 3)
    assert (v1 - v3).abs().max() > 1e-3


def test_routing_rejects_zero_iterations():
    with pytest.raises(ValueError, match="iterations"):
        dynamic_routing(torch.randn(1, 2, 2, 2), 0)


def test_routing_zero_input_finite_gradient():
    u_hat = torch.zeros(2, 5, 3, 4, requires_grad=True)
    v = dynamic_routing(u_hat, 3)
    assert torch.equal(v, torch.zeros(2, 3, 4))
    (g,) = torch.autograd.grad(v.sum(), u_hat)
    assert torch.isfinite(g).all()


def _grad(u_hat: torch.Tensor, iterations: int, mode: str) -> tuple[torch.Tensor, torch.Tensor]:
    x = u_hat.clone().requires_grad_(True)
    v = dynamic_routing(x, iterations, grad=mode)
    (g,) = torch.autograd.grad((v * torch.linspace(-1, 1, v.numel()).view_as(v).double()).sum(), x)
    return v.detach(), g


def test_routing_grad_last_vs_all():
    """grad='last' detaches earlier iterations: same forward, different gradient (same at 1 iter)."""
    u_hat = torch.randn(3, 8, 4, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(5))
    v_all, g_all = _grad(u_hat, 3, "all")
    v_last, g_last = _grad(u_hat, 3, "last")
    assert torch.equal(v_all, v_last)
    assert (g_all - g_last).abs().max() > 1e-4
    # "all" is the true gradient of the routed output: check it numerically
    assert torch.autograd.gradcheck(lambda x: dynamic_routing(x, 3, grad="all"),
                                    (u_hat[:1, :4, :3, :3].clone().requires_grad_(),))
    _, g1_all = _grad(u_hat, 1, "all")
    _, g1_last = _grad(u_hat, 1, "last")
    torch.testing.assert_close(g1_all, g1_last)


def test_routing_rejects_unknown_grad_mode():
    with pytest.raises(ValueError, match="grad"):
        dynamic_routing(torch.randn(1, 2, 2, 2), 2, grad="first")


@pytest.mark.parametrize("n_out", [0, 1])
def test_routed_caps_rejects_fewer_than_two_outputs(n_out):
    with pytest.raises(ValueError, match="no-op"):
        RoutedCaps(n_in=8, d_in=4, n_out=n_out, d_out=4)


def test_routed_caps_predictions_and_routing():
    """RoutedCaps = u_hat_j|i = W_ij u_i (eq. 2), then routing; checked with an explicit loop."""
    layer = RoutedCaps(n_in=6, d_in=3, n_out=2, d_out=4, iterations=2).double()
    u = torch.randn(2, 6, 3, dtype=torch.float64)
    W = layer.weight.detach()  # (n_in, n_out, d_out, d_in)
    u_hat = torch.zeros(2, 6, 2, 4, dtype=torch.float64)
    for b in range(2):
        for i in range(6):
            for j in range(2):
                u_hat[b, i, j] = W[i, j] @ u[b, i]
    torch.testing.assert_close(layer(u), ref_routing(u_hat, 2), rtol=1e-6, atol=1e-8)
