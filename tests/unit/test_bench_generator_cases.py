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


@pytest.mark.parametrize("case, kind", [("d_conv", "ConvDiscriminator"), ("d_dcgan", "DCGANDiscriminator")])
def test_conv_d_cases_step_the_d_they_name_at_the_size_set(case, kind):
    step, flops, images, (opt,) = build_case(case, 4, "cpu", "fp32", False, str(DEBUG_CONFIG),
                                             overrides=["data.image_size=64", "data.channels=3"])
    params = opt.param_groups[0]["params"]
    assert params[0].shape[1] == 3  # the first conv takes RGB: the --set overrides reached the model
    assert torch.isfinite(step()) and flops > 0 and images == 4


def test_sizes_benchmark_writes_its_table(tmp_path):
    import subprocess
    import sys

    from conftest import REPO, cli_env

    out = tmp_path / "bench.md"
    proc = subprocess.run([sys.executable, str(REPO / "benchmarks" / "sizes.py"), "--sizes", "28", "--repeats", "1",
                           "--batch", "2", "--json", str(tmp_path / "sizes.json"), "--out", str(out)],
                          capture_output=True, text=True, timeout=600, env=cli_env(), cwd=REPO)
    assert proc.returncode == 0, proc.stderr[-2000:]
    text = out.read_text()
    assert "| 28 | d |" in text and "| 28 | d_conv |" in text and "| 28 | gen_caps |" in text
    ratio = float(text.split("| 28 | d |")[1].split("|")[4].strip().rstrip("x"))
    assert ratio > 1  # the capsule D costs more than the conv D: the column divides the right way round
