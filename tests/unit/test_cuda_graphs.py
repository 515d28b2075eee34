"""perf.cuda_graphs: what can be checked without a GPU (config checks, warm-up undo, step bodies)."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from conftest import DEBUG_CONFIG, cli_env, run_capsgan

from capsgan_dist import checkpoint, losses, train
from capsgan_dist.config import load_config
from capsgan_dist.cuda_graphs import GraphedSteps, TrainingState, check_supported, make_capturable
from capsgan_dist.dist import noise, setup
from capsgan_dist.errors import ConfigError
from capsgan_dist.models import build_discriminator, build_generator
from capsgan_dist.optim import build_adam
from capsgan_dist.step_stats import D_KEYS, G_KEYS, StepStats
from capsgan_dist.steps import D_NOISE, G_NOISE, EagerSteps, iteration


def test_cli_refuses_cuda_graphs_without_a_gpu(tmp_path):
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU: the refusal is for CPU-only runs")
    out = tmp_path / "runs"
    proc = run_capsgan("train", str(DEBUG_CONFIG), "perf.cuda_graphs=true", f"train.out_dir={out}",
                       "tracking.backend=none", check=False, timeout=300)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "perf.cuda_graphs=true needs a CUDA GPU" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not out.exists()  # refused before any work


def test_noise_salts_are_all_different():
    salts = [D_NOISE, G_NOISE, train._FIXED_NOISE, train._RANK_GRID_NOISE]
    assert len(set(salts)) == len(salts)


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
    opt_g, opt_d = build_adam(G.parameters(), 1e-3, (0.9, 0.999), True), build_adam(D.parameters(), 1e-3,
                                                                                   (0.9, 0.999), True)
    opt_g2, opt_d2 = torch.optim.Adam(G2.parameters(), 1e-3), torch.optim.Adam(D2.parameters(), 1e-3)
    t, dim = cfg.train, cfg.model.latent_dim
    reals = [torch.rand(t.batch_real, 1, 28, 28) * 2 - 1 for _ in range(2)]
    graphed = GraphedSteps(cfg, dist, G, D, opt_g, opt_d, iter(reals), clip=0.5, capture=False)

    for step in range(2):
        got_d = dict(zip(D_KEYS, graphed.d_step(2 * step).tolist()))
        got_g = dict(zip(G_KEYS, graphed.g_step(2 * step + 1).tolist()))
        # The eager steps, written out as train.py does them.
        z = noise(t.batch_fake, dim, dist.device, cfg.seed, 2 * step, dist.rank, D_NOISE)
        with torch.no_grad():
            fake = G2(z)
        logits = D2(torch.cat([reals[step], fake]))
        loss_d = losses.d_loss(logits[: t.batch_real], logits[t.batch_real:], cfg.loss)
        loss_d.backward()
        gnorm_d = torch.nn.utils.clip_grad_norm_(D2.parameters(), 0.5)
        opt_d2.step()
        opt_d2.zero_grad(set_to_none=True)
        D2.requires_grad_(False)
        z = noise(t.batch_real + t.batch_fake, dim, dist.device, cfg.seed, 2 * step + 1, dist.rank, G_NOISE)
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
    for a, b in zip(list(G.parameters()) + list(D.parameters()), list(G2.parameters()) + list(D2.parameters())):
        assert torch.allclose(a, b, rtol=1e-5, atol=1e-7)
    assert all(p.requires_grad for p in D.parameters())  # the G step unfreezes D again


def _finite_state(models, opts) -> dict[str, torch.Tensor]:
    """Copies of every parameter and optimizer state tensor, by position."""
    out = {f"m{i}.{n}": p.detach().clone() for i, m in enumerate(models) for n, p in m.named_parameters()}
    for i, opt in enumerate(opts):
        for j, st in enumerate(opt.state.values()):
            out.update({f"o{i}.{j}.{k}": v.detach().clone() for k, v in st.items() if torch.is_tensor(v)})
    return out


def test_nan_batch_in_graph_step_bodies_is_skipped_and_counted():
    """One NaN pixel makes D's gradient NaN: the update is skipped on the device, weights stay finite."""
    cfg = load_config(DEBUG_CONFIG)
    dist = setup(cfg)
    torch.manual_seed(0)
    G, D = build_generator(cfg), build_discriminator(cfg)
    betas = (cfg.optim.beta1, cfg.optim.beta2)
    opt_g, opt_d = build_adam(G.parameters(), 2e-4, betas, True), build_adam(D.parameters(), 2e-4, betas, True)
    t = cfg.train
    reals = [torch.rand(t.batch_real, 1, 28, 28) * 2 - 1 for _ in range(3)]
    reals[1][3, 0, 10, 10] = float("nan")  # D steps 0, 1, 2 are loop steps 0, 2, 4
    graphed = GraphedSteps(cfg, dist, G, D, opt_g, opt_d, iter(reals), clip=math.inf, capture=False)
    stats = StepStats(dist.device, t.max_nonfinite)

    for step in range(2):  # D (clean), G
        iteration(graphed, stats, step, cfg)
    before = _finite_state([D], [opt_d])
    iteration(graphed, stats, 2, cfg)  # D on the NaN batch
    after = _finite_state([D], [opt_d])
    assert after.keys() == before.keys()
    assert all(torch.equal(after[k], before[k]) for k in before), "the NaN step changed D or its Adam state"
    window = stats.read()
    assert math.isnan(window.means["gnorm_d"]) and window.skipped == 1 and window.nonfinite_hit is None

    for step in range(3, 5):  # G, then D on a clean batch trains again
        iteration(graphed, stats, step, cfg)
    assert stats.read().skipped == 1
    final = _finite_state([G, D], [opt_g, opt_d])
    assert all(torch.isfinite(v).all() for v in final.values())
    assert not torch.equal(final["m1.conv1.weight"], after["m0.conv1.weight"])  # D updated after the skip


def test_checkpoint_of_a_graphs_run_resumes_without_graphs(tmp_path):
    """A checkpoint whose optimizers carry capturable=True (as CUDA-graph capture sets it) loads and steps on CPU."""
    cfg = load_config(DEBUG_CONFIG)
    betas = (cfg.optim.beta1, cfg.optim.beta2)

    def run_objects():
        dist = setup(cfg)
        torch.manual_seed(0)
        G, D = build_generator(cfg), build_discriminator(cfg)
        opt_g, opt_d = build_adam(G.parameters(), 2e-4, betas, True), build_adam(D.parameters(), 2e-4, betas, True)
        G, opt_g = dist.acc_g.prepare(G, opt_g)
        D, opt_d = dist.acc_d.prepare(D, opt_d)
        batches = iter([torch.rand(cfg.train.batch_real, 1, 28, 28) * 2 - 1 for _ in range(4)])
        steps = EagerSteps(cfg, dist, G, D, dist.acc_d.unwrap_model(D), opt_g, opt_d, batches, math.inf)
        return dist, steps, (opt_g, opt_d)

    dist, steps, opts = run_objects()
    steps.d_step(0)
    steps.g_step(1)
    for opt in opts:
        make_capturable(opt.optimizer)  # what GraphedSteps does before its capture
    saved = checkpoint.save_checkpoint(dist, tmp_path, 2, "hash", keep=2)
    written = torch.load(saved / "D" / "optimizer.bin", weights_only=True)
    assert all(g["capturable"] for g in written["param_groups"])  # the test really resumes a graphs-mode state

    dist, steps, opts = run_objects()  # a new run, graphs off
    assert checkpoint.load_checkpoint(dist, saved, checkpoint.verify(saved), "hash") == 2
    for opt in opts:
        assert all(not g["capturable"] and g["fused"] for g in opt.param_groups)
        assert all(st["step"].item() == 1 for st in opt.optimizer.state.values())
    d, g = steps.d_step(2), steps.g_step(3)  # raised AssertionError (capturable on CPU) before the fix
    assert torch.isfinite(d).all() and torch.isfinite(g).all()
    assert all(st["step"].item() == 2 for opt in opts for st in opt.optimizer.state.values())


def test_probe_with_cuda_graphs_is_refused_in_one_line_before_any_work(tmp_path):
    out = tmp_path / "runs"
    proc = run_capsgan("train", str(DEBUG_CONFIG), "perf.cuda_graphs=true", f"train.out_dir={out}",
                       "tracking.backend=none", check=False, timeout=300, env=cli_env(CAPSGAN_PROBE="1"))
    assert proc.returncode == 2, proc.stderr[-2000:]
    lines = [ln for ln in proc.stderr.splitlines() if ln.startswith("capsgan: error:")]
    assert len(lines) == 1 and "CAPSGAN_PROBE=1 cannot record a perf.cuda_graphs=true run" in lines[0], proc.stderr
    assert "Traceback" not in proc.stderr
    assert not out.exists()  # refused before the run folder (or anything else) was made
