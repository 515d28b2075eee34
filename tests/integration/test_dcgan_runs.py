"""The DCGAN D (batch norm) in real runs: 2 gloo processes, and bitwise resume."""

from __future__ import annotations

import shutil

import pytest
import torch
from conftest import DEBUG_CONFIG, cli_env, run_capsgan

from capsgan_dist import checkpoint

pytestmark = pytest.mark.slow

# batch_fake differs from batch_real so that a mixed forward (real + fake) would show in the probe.
DCGAN = ["model.discriminator=dcgan", "model.d_base_width=8", "train.batch_fake=4", "train.progress=false",
         "tracking.backend=local", "train.log_every=1", "train.sample_every=1000", "tracking.grid_every=1000"]


def test_two_process_dcgan_run_keeps_ranks_equal_and_batches_apart(tmp_path):
    run = tmp_path / "run"
    proc = run_capsgan("train", str(DEBUG_CONFIG), *DCGAN, "train.steps=6", "train.checkpoint_every=6",
                       f"train.run_dir={run}", nproc=2, env=cli_env(CAPSGAN_PROBE="1"))
    assert "terminate called" not in proc.stderr
    events = [torch.load(f, weights_only=False) for f in sorted((run / "probe").glob("rank*.pt"))]
    assert [e[0][1] for e in events] == [{"rank": 0, "world": 2}, {"rank": 1, "world": 2}]
    final = [e[-1][1] for e in events]
    for part in ("G", "D"):  # DDP kept the weights identical
        for k, v in final[0][part].items():
            if "running_" not in k and "num_batches" not in k:  # each rank's own last batches (docs/design.md)
                assert torch.equal(v, final[1][part][k]), f"{part}.{k} differs between ranks"
    assert any("running_mean" in k for k in final[0]["D"])
    for rank_events in events:
        d_sizes = [e[2].shape[0] for e in rank_events if e[0] == "D_in" and e[1] == "d"]
        assert d_sizes == [8, 4] * 3, "each D update forwards its 8 reals, then its 4 fakes, never 12 together"
    rows = [r for r in (run / "metrics.jsonl").read_text().splitlines()]
    assert len(rows) == 6 and all('"loss_d"' in r or '"loss_g"' in r for r in rows)


def test_dcgan_resume_is_bitwise(tmp_path):
    ref, run = tmp_path / "ref", tmp_path / "run"
    run_capsgan("train", str(DEBUG_CONFIG), *DCGAN, "train.steps=8", "train.checkpoint_every=4",
                f"train.run_dir={ref}")
    run_capsgan("train", str(DEBUG_CONFIG), *DCGAN, "train.steps=5", "train.checkpoint_every=4",
                f"train.run_dir={run}")
    shutil.rmtree(run / "checkpoints" / "step_0000005")  # stop after 5 steps, resume from step 4
    run_capsgan("train", "--resume", str(run), "train.steps=8")
    got, want = run / "checkpoints" / "step_0000008", ref / "checkpoints" / "step_0000008"
    assert [p.name for p in checkpoint.list_checkpoints(run / "checkpoints")][-1] == "step_0000008"
    for part in ("G", "D"):  # weights and the batch-norm running statistics
        assert (got / part / "model.safetensors").read_bytes() == (want / part / "model.safetensors").read_bytes()
