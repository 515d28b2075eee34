"""A resumed run trains with the learning rates of its config, not the ones saved in the checkpoint.

PBT relies on this: a cloned trial restores another trial's checkpoint (optimizer state included)
and must continue with its own, perturbed learning rates.
"""

from __future__ import annotations

import json

from conftest import DEBUG_CONFIG, run_capsgan


def test_resume_uses_the_config_learning_rates(tmp_path):
    run = tmp_path / "run"
    common = ["train.log_every=5", "train.checkpoint_every=10", "tracking.backend=local", "train.progress=false"]
    run_capsgan("train", str(DEBUG_CONFIG), "train.steps=10", f"train.run_dir={run}", *common)
    run_capsgan("train", "--resume", str(run), "train.steps=20", "optim.lr_d=3e-4", "optim.lr_g=7e-5", *common)
    rows = {r["step"]: r for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines())}
    assert rows[10]["lr_d"] == 2e-4 and rows[10]["lr_g"] == 2e-4  # before: the debug config's
    assert rows[15]["lr_d"] == 3e-4 and rows[20]["lr_g"] == 7e-5  # after the resume: the new config's
