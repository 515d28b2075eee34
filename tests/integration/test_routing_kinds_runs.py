"""em and attention routing through the real CLI: 2 gloo processes, DeepSpeed ZeRO-2, bf16, bitwise
resume, and the CapsNet classifier. dynamic routing is what every other integration test runs.

The 2-process runs are checked as in test_distributed.py: every rank's inputs are recorded by the
probe and replayed in a plain single-process GAN on the concatenated batches.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from conftest import DEBUG_CONFIG, cli_env, run_capsgan
from test_distributed import (
    FAST,
    PROBE_ENV,
    STEPS,
    Reference,
    _assert_tensors_equal,
    assert_states_close,
    assert_states_equal,
    clean_exit,
    ds_files,
    final_state,
    init_state,
    local_sh,
    meta,
    metrics,
    optimizer_steps,
    probes,
    rel_err,
    resume_copy,
)

from capsgan_dist.config import load_config

pytestmark = pytest.mark.slow

# debug.yaml's tiny D with each kind; em's matrix capsules need 16-D primary and routed capsules.
KINDS = {"em": ["model.routing=em", "model.primary_dim=16", "model.caps_dim=16"],
         "attention": ["model.routing=attention"]}
# 2 ranks x 8 against 1 x 16, fp32: measured relative 2-norm gradient differences (whole model) of
# 1.4e-6 (D) and 5.7e-6 (G, whose gradient crosses the EM statistics) for em, and after 4 Adam steps
# parameters within 5.5e-6 (Adam turns rounding on near-zero gradient elements into up to a few % of
# an lr-sized step, 2e-4). A missing or wrong gradient average is off by ~1e-1 and ~lr.
GRAD_RTOL, PARAM_ATOL = 2e-5, 2e-5


@pytest.fixture(scope="module", params=list(KINDS))
def ddp(request, tmp_path_factory) -> dict:
    """torchrun, 2 CPU processes (gloo), probe on."""
    kind, extra = request.param, KINDS[request.param]
    run_dir = tmp_path_factory.mktemp(f"ddp_{kind}") / "run"
    proc = run_capsgan("train", str(DEBUG_CONFIG), *FAST, *extra, f"train.run_dir={run_dir}", nproc=2,
                       env=cli_env(**PROBE_ENV))
    cfg = load_config(DEBUG_CONFIG, extra)
    ev = probes(run_dir)
    ref = Reference(cfg, init_state(ev[0]), lr=cfg.optim.lr_d)
    steps = [optimizer_steps(e, cfg.train.batch_real) for e in ev]
    return {"kind": kind, "extra": extra, "run_dir": run_dir, "proc": proc, "cfg": cfg, "events": ev, "ref": ref,
            "steps": steps, "records": ref.replay(steps)}


def test_two_processes_train_the_routing_kind_like_one_process_on_the_whole_batch(ddp):
    clean_exit(ddp["proc"])
    assert [meta(e) for e in ddp["events"]] == [{"rank": 0, "world": 2}, {"rank": 1, "world": 2}]
    r0, r1 = ddp["events"]
    D = init_state(r0)["D"]
    if ddp["kind"] == "em":  # the run really built matrix capsules
        assert {"caps.beta_u", "caps.beta_a"} <= set(D) and D["caps.weight"].shape[-2:] == (4, 4)
    else:
        assert "caps.log_prior" in D
    assert_states_equal(final_state(r0), final_state(r1), f"{ddp['kind']}: ranks after {STEPS} steps")
    for rec, got in zip(ddp["records"][:2], ddp["steps"][0]):  # the first D and G updates' averaged gradients
        want, have = rec["grads"], got["grads"]
        flat = [torch.cat([g[k].flatten() for k in want]) for g in (have, want)]
        assert rel_err(*flat) <= GRAD_RTOL, f"{ddp['kind']}: {rec['kind']} gradient differs from reference"
    assert_states_close(final_state(r0), ddp["ref"].state(), PARAM_ATOL, f"{ddp['kind']}: 2 ranks vs reference")
    moved = max((final_state(r0)["D"][k] - v).abs().max().item() for k, v in D.items())
    assert moved > 20 * PARAM_ATOL  # D trained: the agreement is not that of untouched weights


@pytest.fixture(scope="module", params=list(KINDS))
def zero2(request, tmp_path_factory) -> dict:
    kind, extra = request.param, KINDS[request.param]
    overrides = [*FAST, *extra, "optim.grad_clip=0.0"]
    run_dir = tmp_path_factory.mktemp(f"zero2_{kind}") / "run"
    proc = local_sh("--cpu", "2", "--zero", "2", str(DEBUG_CONFIG), *overrides, f"train.run_dir={run_dir}")
    cfg = load_config(DEBUG_CONFIG, overrides)
    ev = probes(run_dir)
    ref = Reference(cfg, init_state(ev[0]), lr=cfg.optim.lr_d)
    ref.replay([optimizer_steps(e, cfg.train.batch_real) for e in ev])
    return {"kind": kind, "run_dir": run_dir, "proc": proc, "events": ev, "ref": ref}


def test_deepspeed_zero2_matches_reference_and_resumes_bitwise(zero2, tmp_path):
    clean_exit(zero2["proc"])
    r0, r1 = zero2["events"]
    assert [meta(e)["world"] for e in zero2["events"]] == [2, 2]
    assert_states_equal(final_state(r0), final_state(r1), "ZeRO-2 ranks")
    assert_states_close(final_state(r0), zero2["ref"].state(), PARAM_ATOL, f"{zero2['kind']}: ZeRO-2 vs reference")
    # Resume from the half-way checkpoint: same weights and optimizer shards as the uninterrupted run.
    run = resume_copy(zero2["run_dir"], tmp_path / "run", drop_step=STEPS)
    clean_exit(local_sh("--cpu", "2", "--zero", "2", "--resume", str(run)))
    for e in probes(run):
        assert_states_equal(final_state(e), final_state(r0), "resumed vs uninterrupted weights")
    name = f"step_{STEPS:07d}"
    a_files, b_files = ds_files(zero2["run_dir"] / "checkpoints" / name), ds_files(run / "checkpoints" / name)
    assert [f.name for f in a_files] == [f.name for f in b_files] and a_files
    for fa, fb in zip(a_files, b_files):
        _assert_tensors_equal(torch.load(fa, weights_only=False), torch.load(fb, weights_only=False), fa.name)


def test_bf16_two_process_run_has_finite_losses_near_fp32(ddp, tmp_path):
    run_dir = tmp_path / "run"
    clean_exit(run_capsgan("train", str(DEBUG_CONFIG), *FAST, *ddp["extra"], "train.mixed_precision=bf16",
                           f"train.run_dir={run_dir}", nproc=2, env=cli_env(**PROBE_ENV)))
    rows = metrics(run_dir)
    assert len(rows) == STEPS and all(math.isfinite(r[k]) for r in rows for k in ("loss_d", "loss_g") if k in r)
    # Same weights, data and noise as the fp32 run: step 1's loss differs by bf16 rounding only.
    bf16, fp32 = rows[0]["loss_d"], metrics(ddp["run_dir"])[0]["loss_d"]
    assert bf16 != fp32 and abs(bf16 - fp32) < 0.05


@pytest.mark.parametrize("kind", list(KINDS))
def test_resume_matches_uninterrupted_run_bitwise(kind, tmp_path):
    """One process: stop after 3 steps (D, G, D), resume to 6: weights and Adam state are those of a 6-step run."""
    common = [*KINDS[kind], "train.checkpoint_every=3", "train.sample_every=1000", "tracking.grid_every=1000",
              "train.progress=false"]
    whole, part = tmp_path / "whole", tmp_path / "part"
    run_capsgan("train", str(DEBUG_CONFIG), *common, "train.steps=6", f"train.run_dir={whole}")
    run_capsgan("train", str(DEBUG_CONFIG), *common, "train.steps=3", f"train.run_dir={part}")
    run_capsgan("train", "--resume", str(part), "train.steps=6")
    for sub in ("G", "D"):
        a, b = whole / "checkpoints" / "step_0000006" / sub, part / "checkpoints" / "step_0000006" / sub
        assert (a / "model.safetensors").read_bytes() == (b / "model.safetensors").read_bytes(), sub
        _assert_tensors_equal(torch.load(a / "optimizer.bin", weights_only=False),
                              torch.load(b / "optimizer.bin", weights_only=False), f"{sub} optimizer")


@pytest.mark.parametrize("kind", list(KINDS))
def test_capsnet_classifier_trains_with_the_routing_kind(kind, mnist_dir: Path, tmp_path):
    out = tmp_path / f"capsnet-{kind}.safetensors"
    proc = run_capsgan("classifier", "train", "--data", str(mnist_dir), "--arch", "capsnet", "--routing", kind,
                       "--epochs", "0.03", "--holdout", "200", "--out", str(out), timeout=600)  # 5 steps of 64
    assert f"capsnet ({kind} routing) accuracy" in proc.stdout
    saved = json.loads(out.with_suffix(".json").read_text())
    assert saved["arch_kwargs"]["routing"] == kind and saved["steps"] == 5 and 0 <= saved["accuracy"] <= 1
    from capsgan_dist.metrics.classifier import load_classifier

    model, _ = load_classifier(out)  # rebuilt from the metadata: the routing kind travels with the file
    x = torch.zeros(2, 1, 28, 28)
    feats, logits = model.features_and_logits(x)
    assert logits.shape == (2, 10) and feats.shape == (2, 10 * (17 if kind == "em" else 16))


def test_routing_flag_needs_capsnet(tmp_path):
    proc = run_capsgan("classifier", "train", "--data", str(tmp_path), "--arch", "lenet", "--routing", "em",
                       "--out", str(tmp_path / "x.safetensors"), check=False, timeout=120)
    assert proc.returncode == 2 and "--routing em needs --arch capsnet" in proc.stderr
    assert "Traceback" not in proc.stderr
