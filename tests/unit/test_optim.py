"""The loop's Adam: non-finite updates skipped on the device, flags that survive loading, device noise."""

from __future__ import annotations

import copy
import math

import pytest
import torch

from capsgan_dist import optim
from capsgan_dist.dist import noise


def _model_and_adam(fused: bool) -> tuple[torch.nn.Module, torch.optim.Adam]:
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(6, 5), torch.nn.Tanh(), torch.nn.Linear(5, 1))
    return model, optim.build_adam(model.parameters(), 1e-2, (0.5, 0.999), fused)


def _train_step(model, opt, x: torch.Tensor) -> torch.Tensor:
    opt.zero_grad(set_to_none=True)
    model(x).square().mean().backward()
    norm = optim.grad_norm(model, math.inf)
    optim.step_if_finite(opt, norm)
    return norm


def _snapshot(model, opt) -> list[torch.Tensor]:
    return [p.detach().clone() for p in model.parameters()] + [
        v.clone() for st in opt.state.values() for v in st.values() if torch.is_tensor(v)]


@pytest.mark.parametrize("fused", [True, False])
def test_nonfinite_gradient_skips_the_whole_update(fused):
    model, opt = _model_and_adam(fused)
    _train_step(model, opt, torch.randn(4, 6))
    before = _snapshot(model, opt)
    x = torch.randn(4, 6)
    x[1, 2] = float("nan")
    assert math.isnan(float(_train_step(model, opt, x)))
    after = _snapshot(model, opt)
    assert all(torch.equal(a, b) for a, b in zip(before, after)), "weights, moments or step count changed"
    assert not hasattr(opt, "found_inf")  # no stale flag left for the next step
    _train_step(model, opt, torch.randn(4, 6))
    assert not torch.equal(before[0], next(model.parameters()))  # and the next finite step trains


def test_fused_adam_matches_the_default_adam_to_rounding():
    model, opt = _model_and_adam(True)
    ref = copy.deepcopy(model)
    ref_opt = torch.optim.Adam(ref.parameters(), 1e-2, betas=(0.5, 0.999))
    for i in range(5):
        x = torch.randn(4, 6, generator=torch.Generator().manual_seed(i))
        _train_step(model, opt, x)
        ref_opt.zero_grad()
        ref(x).square().mean().backward()
        ref_opt.step()
    for a, b in zip(model.parameters(), ref.parameters()):
        assert torch.allclose(a, b, rtol=0, atol=1e-6)


@pytest.mark.parametrize("fused", [True, False])
def test_a_capturable_state_loads_with_this_optimizer_s_flags_and_steps_on_cpu(fused):
    model, opt = _model_and_adam(fused)
    _train_step(model, opt, torch.randn(4, 6))
    state = copy.deepcopy(opt.state_dict())
    for group in state["param_groups"]:
        group["capturable"], group["fused"] = True, not fused  # what a CUDA-graph run (or another mode) saved
    model2, opt2 = _model_and_adam(fused)
    opt2.load_state_dict(state)
    assert all(g["capturable"] is False and bool(g["fused"]) == fused for g in opt2.param_groups)
    _train_step(model2, opt2, torch.randn(4, 6))  # AssertionError (capturable on CPU) without the hook
    assert all(st["step"].item() == 2 for st in opt2.state.values())
    for group in state["param_groups"]:
        group["fused"] = None  # capturable=True alone, as the CUDA-graph run of the issue saved it
    plain = torch.optim.Adam(model2.parameters())
    plain.load_state_dict(state)
    with pytest.raises(AssertionError, match="capturable=True"):  # the failure the hook prevents
        _train_step(model2, plain, torch.randn(4, 6))


def test_noise_is_a_pure_function_of_its_key_drawn_where_it_is_used(monkeypatch):
    a = noise(5, 3, torch.device("cpu"), 0, 7, 1, 2)
    torch.manual_seed(123)  # the global generator plays no part
    torch.randn(10)
    assert torch.equal(noise(5, 3, torch.device("cpu"), 0, 7, 1, 2), a)
    assert not torch.equal(noise(5, 3, torch.device("cpu"), 0, 8, 1, 2), a)  # another step
    assert not torch.equal(noise(5, 3, torch.device("cpu"), 0, 7, 0, 2), a)  # another rank

    def no_copies(*args, **kwargs):
        raise AssertionError("noise copied a tensor instead of drawing it on its device")

    monkeypatch.setattr(torch.Tensor, "to", no_copies)
    assert torch.equal(noise(5, 3, torch.device("cpu"), 0, 7, 1, 2), a)
