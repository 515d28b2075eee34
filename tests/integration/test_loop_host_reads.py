"""The eager loop reads the device from the host once per log window, and its device noise survives a resume.

Every `.item()`, `.tolist()`, `float(t)`, ... on a GPU tensor makes the CPU wait for the GPU. The
first test counts those calls over whole in-process training runs of two lengths: the longer run
has two more log windows and must make at most two more reads, whatever its step count.
"""

from __future__ import annotations

import functools
from pathlib import Path

import pytest
import torch
from conftest import DEBUG_CONFIG, cli_env, run_capsgan

from capsgan_dist.config import load_config
from capsgan_dist.train import train

READS = ("item", "tolist", "__float__", "__int__", "__bool__", "__index__", "numpy", "cpu")


def _reads_in_run(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, steps: int) -> int:
    """Host reads of tensors during one in-process training run of `steps` steps (log every 10)."""
    calls = [0]

    def counted(original):
        @functools.wraps(original)
        def wrapper(*args, **kwargs):
            calls[0] += 1
            return original(*args, **kwargs)
        return wrapper

    cfg = load_config(DEBUG_CONFIG, [f"train.steps={steps}", "train.log_every=10", f"train.run_dir={tmp_path}",
                                     "train.checkpoint_every=1000", "train.sample_every=1000",
                                     "tracking.grid_every=1000", "tracking.backend=none", "train.progress=false"])
    with monkeypatch.context() as m:
        for name in READS:
            m.setattr(torch.Tensor, name, counted(getattr(torch.Tensor, name)))
        summary = train(cfg)
    assert summary["step"] == steps and summary["skipped_steps"] == 0
    return calls[0]


def test_eager_loop_reads_the_device_once_per_log_window_not_per_step(monkeypatch, tmp_path):
    short = _reads_in_run(monkeypatch, tmp_path / "a", 20)
    long = _reads_in_run(monkeypatch, tmp_path / "b", 40)  # 20 more steps, 2 more log windows
    # The loop before device-side statistics (commit 8c9d370) made 314 more: .item() per statistic,
    # float(norm) before each optimizer step, a stop-flag reduction and Adam's step counts per step.
    assert long - short <= 2, f"{long - short} host reads for 20 more steps (2 more log windows)"
    assert long - short >= 1  # the window's statistics are read: the counting sees them


def _probe_inputs(run: Path) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Latents of every training G forward and real images of every D step, in order (one process)."""
    (path,) = (run / "probe").glob("rank*.pt")
    events = torch.load(path, weights_only=False)
    z = [e[2] for e in events if e[0] == "G_in"]
    real = [e[2][:8] for e in events if e[0] == "D_in" and e[1] == "d"]  # batch_real = 8 in debug.yaml
    return z, real


@pytest.mark.slow
def test_device_noise_and_batches_are_identical_across_a_resume(tmp_path):
    """A run stopped after 7 steps and resumed to 12 draws the same latents and batches as an uninterrupted one."""
    quiet = ["train.progress=false", "tracking.backend=none", "train.sample_every=1000", "tracking.grid_every=1000"]
    env = cli_env(CAPSGAN_PROBE="1")
    full, part = tmp_path / "full", tmp_path / "part"
    run_capsgan("train", str(DEBUG_CONFIG), f"train.run_dir={full}", "train.steps=12", *quiet, env=env)
    run_capsgan("train", str(DEBUG_CONFIG), f"train.run_dir={part}", "train.steps=7", *quiet, env=env)
    run_capsgan("train", "--resume", str(part), "train.steps=12", env=env)  # rewrites part's probe: steps 7-11
    z_full, real_full = _probe_inputs(full)
    z_resumed, real_resumed = _probe_inputs(part)
    assert len(z_full) == 12 and len(z_resumed) == 5  # one G forward per step (alternate schedule)
    assert all(torch.equal(a, b) for a, b in zip(z_full[7:], z_resumed)), "latents differ after the resume"
    assert len(real_resumed) == 2 and all(torch.equal(a, b) for a, b in zip(real_full[4:], real_resumed))
    assert not torch.equal(z_full[7], z_full[9])  # fresh noise each step, not one tensor replayed
