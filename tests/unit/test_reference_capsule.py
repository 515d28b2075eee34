"""The benchmark's plain reference discriminator computes the library's function (so speed ratios are fair)."""

from __future__ import annotations

import pytest
import torch
from conftest import DEBUG_CONFIG

from benchmarks.reference_capsule import reference_from
from capsgan_dist.config import load_config
from capsgan_dist.models import build_discriminator


@pytest.mark.parametrize("routing", ["fused", "einsum"])
@pytest.mark.parametrize("grad", ["all", "last"])
def test_reference_matches_library_discriminator(routing, grad):
    cfg = load_config(None, [f"perf.routing={routing}", f"model.routing_grad={grad}"])
    torch.manual_seed(0)
    D = build_discriminator(cfg)
    ref = reference_from(cfg, D)
    x = torch.randn(3, 1, 28, 28)
    out, out_ref = D(x), ref(x)
    assert torch.allclose(out, out_ref, rtol=1e-4, atol=1e-5)
    (out * torch.tensor([1.0, -2.0, 0.5])).sum().backward()
    (out_ref * torch.tensor([1.0, -2.0, 0.5])).sum().backward()
    grads_ref = dict(ref.named_parameters())
    for name, p in D.named_parameters():
        g, g_ref = p.grad, grads_ref[name].grad
        assert (g - g_ref).norm() <= 1e-4 * g_ref.norm() + 1e-7, name


def test_reference_state_dict_has_the_library_layout():
    cfg = load_config(DEBUG_CONFIG)
    D = build_discriminator(cfg)
    ref = reference_from(cfg)
    assert {k: v.shape for k, v in ref.state_dict().items()} == {k: v.shape for k, v in D.state_dict().items()}
