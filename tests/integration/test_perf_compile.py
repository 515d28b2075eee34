"""perf.compile=true trains like eager (to rounding) and writes checkpoints an eager run can load."""

from __future__ import annotations

import json

import pytest
from conftest import DEBUG_CONFIG, run_capsgan


def _last_row(run_dir) -> dict:
    rows = (run_dir / "metrics.jsonl").read_text().splitlines()
    return json.loads(rows[-1])


@pytest.mark.slow
def test_compiled_run_matches_eager_and_its_checkpoint_loads_uncompiled(tmp_path):
    common = [str(DEBUG_CONFIG), "train.steps=4", "train.log_every=2", "tracking.backend=local",
              "train.progress=false"]
    run_capsgan("train", *common, f"train.run_dir={tmp_path / 'eager'}", timeout=600)
    run_capsgan("train", *common, f"train.run_dir={tmp_path / 'compiled'}", "perf.compile=true", timeout=1500)
    eager, compiled = _last_row(tmp_path / "eager"), _last_row(tmp_path / "compiled")
    for key in ("loss_d", "loss_g", "d_real", "d_fake"):
        assert compiled[key] == pytest.approx(eager[key], rel=1e-3), key
    # nn.Module.compile() works in place: parameter names, hence checkpoints, are the eager ones.
    out = tmp_path / "grid.png"
    run_capsgan("sample", "--run", str(tmp_path / "compiled"), "--n", "4", "--out", str(out), timeout=300)
    assert out.is_file() and out.stat().st_size > 0
