"""benchmarks/step.py's generator cases build the models they name and take a real optimizer step."""

from __future__ import annotations

import pytest
import torch
from conftest import DEBUG_CONFIG

from benchmarks.step import build_case


def _has_routing_weight(params: list[torch.Tensor]) -> bool:
    """A capsule layer's W_ij (n_in, n_out, d_out, d_in); conv kernels end in two equal sizes (k, k)."""
    return any(p.dim() == 4 and p.shape[-1] != p.shape[-2] for p in params)


@pytest.mark.parametrize("case, capsule_g, capsule_d", [
    ("gen_dcgan", False, None), ("gen_caps", True, None), ("capsg_capsd", True, True), ("capsg_convd", True, False),
])
def test_generator_cases_build_their_models_and_update_g(case, capsule_g, capsule_d):
    step, flops, images, opts = build_case(case, 4, "cpu", "fp32", False, str(DEBUG_CONFIG))
    g_params = opts[-1].param_groups[0]["params"]  # G's optimizer comes last
    assert _has_routing_weight(g_params) == capsule_g
    if capsule_d is not None:  # an iteration: D's optimizer first
        assert len(opts) == 2 and _has_routing_weight(opts[0].param_groups[0]["params"]) == capsule_d
    else:
        assert len(opts) == 1
    before = [p.detach().clone() for p in g_params]
    loss = step()
    assert torch.isfinite(loss) and images == 4 and flops > 0
    assert all(not torch.equal(a, p) for a, p in zip(before, g_params)), "a G parameter did not move"
