"""The fused routing path (models/routing/dynamic_fused.py) computes what the plain einsum routing computes."""

from __future__ import annotations

import pytest
import torch

from capsgan_dist.config import load_config
from capsgan_dist.models import build_discriminator
from capsgan_dist.models.capsules import RoutedCaps, dynamic_routing, squash
from capsgan_dist.models.routing import routed_capsules


def plain(u: torch.Tensor, weight: torch.Tensor, iterations: int, grad: str) -> torch.Tensor:
    """The library's plain path: materialise u_hat with einsum, then dynamic_routing."""
    return dynamic_routing(torch.einsum("ijed,bid->bije", weight, u), iterations, grad)


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    """Relative error |a - b| / |b| in float64."""
    return ((a.double() - b.double()).norm() / b.double().norm()).item()


def fresh(B: int, n_in: int, d_in: int, n_out: int, d_out: int, seed: int, dtype=torch.float32):
    """Random primary capsules (squashed) and weights with RoutedCaps' own init scale."""
    g = torch.Generator().manual_seed(seed)
    u = squash(torch.randn(B, n_in, d_in, generator=g, dtype=dtype)).requires_grad_()
    std = 4.0 * n_out / (n_in * d_out) ** 0.5
    w = (std * torch.randn(n_in, n_out, d_out, d_in, generator=g, dtype=dtype)).requires_grad_()
    return u, w


@pytest.mark.parametrize("iterations", [1, 2, 3, 4])
@pytest.mark.parametrize("grad", ["all", "last"])
def test_fused_matches_plain_exactly_in_float64(iterations, grad):
    u, w = fresh(3, 7, 4, 5, 6, seed=iterations, dtype=torch.float64)
    v_fast, v_plain = routed_capsules(u, w, iterations, grad), plain(u, w, iterations, grad)
    g = torch.randn_like(v_plain)
    gf = torch.autograd.grad(v_fast, (u, w), g)
    gp = torch.autograd.grad(v_plain, (u, w), g)
    assert rel(v_fast, v_plain) < 1e-12
    assert rel(gf[0], gp[0]) < 1e-12 and rel(gf[1], gp[1]) < 1e-12


def test_fused_gradient_is_the_true_derivative():
    """gradcheck: the hand-written backward against finite differences (grad='all' is exact)."""
    u, w = fresh(2, 5, 3, 4, 3, seed=7, dtype=torch.float64)
    assert torch.autograd.gradcheck(lambda a, b: routed_capsules(a, b, 3, "all"), (u, w))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_fused_matches_plain_fp32_at_mnist_size(seed):
    """Relative error < 1e-5 in fp32 on the paper's sizes (1568 inputs, 10x16-D outputs, 3 routings)."""
    u, w = fresh(8, 1568, 8, 10, 16, seed=seed)
    v_fast, v_plain = routed_capsules(u, w, 3, "all"), plain(u, w, 3, "all")
    g = torch.randn_like(v_plain)
    gf = torch.autograd.grad(v_fast, (u, w), g)
    gp = torch.autograd.grad(v_plain, (u, w), g)
    assert rel(v_fast, v_plain) < 1e-5
    assert rel(gf[0], gp[0]) < 1e-5
    assert rel(gf[1], gp[1]) < 1e-5


@pytest.mark.parametrize("seed", [0, 1])
def test_fused_bf16_autocast_within_1e_2_of_fp32_plain(seed):
    u, w = fresh(8, 1568, 8, 10, 16, seed=seed)
    v_plain = plain(u, w, 3, "all")
    g = torch.randn_like(v_plain)
    gp = torch.autograd.grad(v_plain, (u, w), g)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        v_fast = routed_capsules(u, w, 3, "all")
    assert v_fast.dtype == torch.bfloat16
    gf = torch.autograd.grad(v_fast, (u, w), g)
    assert gf[0].dtype == torch.float32 and gf[1].dtype == torch.float32  # grads reach the fp32 leaves
    assert rel(v_fast, v_plain) < 1e-2
    assert rel(gf[0], gp[0]) < 1e-2 and rel(gf[1], gp[1]) < 1e-2


def test_second_backward_with_retain_graph_gives_the_same_gradients():
    """The backward writes dL/du_hat into u_hat's buffer; a second backward must recompute u_hat."""
    u, w = fresh(4, 30, 8, 10, 16, seed=3)
    v = routed_capsules(u, w, 3, "all")
    loss = (v * torch.randn_like(v)).sum()
    first = torch.autograd.grad(loss, (u, w), retain_graph=True)
    second = torch.autograd.grad(loss, (u, w))
    assert torch.equal(first[0], second[0]) and torch.equal(first[1], second[1])


def test_double_backward_fails_loudly_not_silently():
    u, w = fresh(2, 6, 4, 3, 5, seed=4)
    v = routed_capsules(u, w, 2, "all")
    with pytest.raises(RuntimeError, match="perf.routing=einsum"):
        torch.autograd.grad(v.sum(), u, create_graph=True)


def test_only_needed_gradients_are_computed():
    """With frozen weights (the G step) the input gradient still matches the plain path."""
    u, w = fresh(4, 30, 8, 10, 16, seed=5)
    w.requires_grad_(False)
    v_fast, v_plain = routed_capsules(u, w, 3, "all"), plain(u, w, 3, "all")
    g = torch.randn_like(v_plain)
    (gf,) = torch.autograd.grad(v_fast, u, g)
    (gp,) = torch.autograd.grad(v_plain, u, g)
    assert rel(gf, gp) < 1e-5


def test_bad_arguments_are_rejected():
    u, w = fresh(2, 6, 4, 3, 5, seed=6)
    with pytest.raises(ValueError, match="iterations"):
        routed_capsules(u, w, 0)
    with pytest.raises(ValueError, match="grad"):
        routed_capsules(u, w, 2, "first")
    with pytest.raises(ValueError, match="impl"):
        RoutedCaps(6, 4, 3, 5, impl="cuda")


def test_routed_caps_impls_agree_and_share_parameters():
    torch.manual_seed(0)
    fused = RoutedCaps(40, 8, 10, 16, 3, "all", impl="fused")
    ein = RoutedCaps(40, 8, 10, 16, 3, "all", impl="einsum")
    ein.load_state_dict(fused.state_dict())  # same parameter names and shapes
    u = squash(torch.randn(5, 40, 8))
    assert rel(fused(u), ein(u)) < 1e-5


def test_config_switch_selects_the_routing_and_models_agree():
    cfg = load_config(None, ["perf.routing=fused"])
    cfg_e = load_config(None, ["perf.routing=einsum"])
    torch.manual_seed(0)
    D = build_discriminator(cfg)
    D_e = build_discriminator(cfg_e)
    assert D.caps.impl == "fused" and D_e.caps.impl == "einsum"
    D_e.load_state_dict(D.state_dict())
    x = torch.randn(4, 1, 28, 28)
    out, out_e = D(x), D_e(x)
    out.sum().backward()
    out_e.sum().backward()
    assert rel(out, out_e) < 1e-5
    for (name, p), p_e in zip(D.named_parameters(), D_e.parameters()):
        assert rel(p.grad, p_e.grad) < 1e-4, name


@pytest.mark.parametrize("block", [1, 3, 7])
def test_blocked_layout_changes_give_the_same_result(monkeypatch, block):
    """u_hat is built and read back in blocks of input capsules; any block size gives the same numbers."""
    from capsgan_dist.models.routing import dynamic_fused

    u, w = fresh(3, 7, 4, 5, 6, seed=11, dtype=torch.float64)
    v_plain = plain(u, w, 3, "all")
    g = torch.randn_like(v_plain)
    gp = torch.autograd.grad(v_plain, (u, w), g)
    monkeypatch.setattr(dynamic_fused, "_chunk", lambda n_in, row_bytes, device: block)
    v = routed_capsules(u, w, 3, "all")
    gf = torch.autograd.grad(v, (u, w), g)
    assert rel(v, v_plain) < 1e-12 and rel(gf[0], gp[0]) < 1e-12 and rel(gf[1], gp[1]) < 1e-12
