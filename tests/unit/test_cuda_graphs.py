"""perf.cuda_graphs: what can be checked without a GPU (config checks, warm-up undo, step bodies)."""

from __future__ import annotations

import copy
import math

import pytest
import torch

from capsgan_dist import cuda_graphs, losses
from capsgan_dist.config import load_config
from capsgan_dist.cuda_graphs import GraphedSteps, TrainingState, check_supported, make_capturable
from capsgan_dist.dist import noise, setup
from capsgan_dist.errors import ConfigError
from capsgan_dist.models import build_discriminator, build_generator
from capsgan_dist.train import _D_NOISE, _G_NOISE
from tests.conftest import DEBUG_CONFIG, run_capsgan


def test_cli_refuses_cuda_graphs_without_a_gpu(tmp_path):
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU: the refusal is for CPU-only runs")
    proc = run_capsgan("train", str(DEBUG_CONFIG), "perf.cuda_graphs=true", f"train.out_dir={tmp_path}",
                       "tracking.backend=none", check=False, timeout=300)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "perf.cuda_graphs=true needs a CUDA GPU" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_noise_salts_are_train_py_s():
    assert (cuda_graphs._D_NOISE, cuda_graphs._G_NOISE) == (_D_NOISE, _G_NOISE)


def test_unsupported_setups_are_named():
    cfg = load_config(DEBUG_CONFIG, ["train.mixed_precision=fp16"])
    dist = setup(load_config(DEBUG_CONFIG))
    with pytest.raises(ConfigError, match="CUDA GPU|fp16"):
        check_supported(cfg, dist)


def test_make_capturable_sets_the_flag_and_rejects_other_optimizers():
    p = torch.nn.Parameter(torch.randn(3))
    opt = torch.optim.Adam([p])
    p.grad = torch.ones(3)
    opt.step()
    make_capturable(opt)
    assert opt.param_groups[0]["capturable"] is True
    assert opt.state[p]["step"].device == p.device
    with pytest.raises(ConfigError, match="capturable"):
        make_capturable(torch.optim.SGD([p], lr=0.1))


def _adam_steps(model: torch.nn.Module, opt: torch.optim.Optimizer, n: int, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    for _ in range(n):
        opt.zero_grad(set_to_none=True)
        model(torch.randn(4, 5, generator=g)).square().sum().backward()
        opt.step()


@pytest.mark.parametrize("steps_before", [0, 2])
def test_training_state_restore_undoes_warmup_exactly(steps_before):
    """After restore, training continues exactly as if the warm-up iterations never ran."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(5, 4), torch.nn.BatchNorm1d(4), torch.nn.Linear(4, 1))
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    _adam_steps(model, opt, steps_before, seed=1)
    twin = copy.deepcopy(model)
    twin_opt = torch.optim.Adam(twin.parameters(), lr=1e-2)
    twin_opt.load_state_dict(copy.deepcopy(opt.state_dict()))  # own tensors, not shared ones

    saved = TrainingState([model], [opt])
    _adam_steps(model, opt, 3, seed=99)  # the "warm-up"
    saved.restore()
    _adam_steps(model, opt, 2, seed=2)
    _adam_steps(twin, twin_opt, 2, seed=2)
    for a, b in zip(list(model.parameters()) + list(model.buffers()), list(twin.parameters()) + list(twin.buffers())):
        assert torch.equal(a, b)


def test_step_bodies_match_the_eager_steps():
    """GraphedSteps without capture (CPU) trains exactly like the eager D and G steps of train.py."""
    cfg = load_config(DEBUG_CONFIG, ["optim.grad_clip=0.5"])
    dist = setup(cfg)
    torch.manual_seed(0)
    G, D = build_generator(cfg), build_discriminator(cfg)
    G2, D2 = copy.deepcopy(G), copy.deepcopy(D)
    opt_g, opt_d = torch.optim.Adam(G.parameters(), 1e-3), torch.optim.Adam(D.parameters(), 1e-3)
    opt_g2, opt_d2 = torch.optim.Adam(G2.parameters(), 1e-3), torch.optim.Adam(D2.parameters(), 1e-3)
    t, dim = cfg.train, cfg.model.latent_dim
    reals = [torch.rand(t.batch_real, 1, 28, 28) * 2 - 1 for _ in range(2)]
    graphed = GraphedSteps(cfg, dist, G, D, opt_g, opt_d, iter(reals), clip=0.5, capture=False)

    for step in range(2):
        got_d = graphed.d_step(2 * step)
        got_g = graphed.g_step(2 * step + 1)
        # The eager steps, written out as train.py does them.
        z = noise(t.batch_fake, dim, dist.device, cfg.seed, 2 * step, dist.rank, _D_NOISE)
        with torch.no_grad():
            fake = G2(z)
        logits = D2(torch.cat([reals[step], fake]))
        loss_d = losses.d_loss(logits[: t.batch_real], logits[t.batch_real:], cfg.loss)
        loss_d.backward()
        gnorm_d = torch.nn.utils.clip_grad_norm_(D2.parameters(), 0.5)
        opt_d2.step()
        opt_d2.zero_grad(set_to_none=True)
        D2.requires_grad_(False)
        z = noise(t.batch_real + t.batch_fake, dim, dist.device, cfg.seed, 2 * step + 1, dist.rank, _G_NOISE)
        loss_g = losses.g_loss(D2(G2(z)), cfg.loss)
        loss_g.backward()
        gnorm_g = torch.nn.utils.clip_grad_norm_(G2.parameters(), 0.5)
        opt_g2.step()
        opt_g2.zero_grad(set_to_none=True)
        D2.requires_grad_(True)

        assert math.isclose(got_d["loss_d"], loss_d.item(), rel_tol=1e-6)
        assert math.isclose(got_d["gnorm_d"], gnorm_d.item(), rel_tol=1e-5)
        assert math.isclose(got_g["loss_g"], loss_g.item(), rel_tol=1e-6)
        assert math.isclose(got_g["gnorm_g"], gnorm_g.item(), rel_tol=1e-5)
        assert got_d["images"] == t.batch_real + t.batch_fake and got_g["images"] == t.batch_real + t.batch_fake
    for a, b in zip(list(G.parameters()) + list(D.parameters()), list(G2.parameters()) + list(D2.parameters())):
        assert torch.allclose(a, b, rtol=1e-5, atol=1e-7)
    assert all(p.requires_grad for p in D.parameters())  # the G step unfreezes D again
