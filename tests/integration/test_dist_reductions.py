"""Cross-rank reductions and the stop-flag agreement in a real 2-process gloo group (torchrun)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import DEBUG_CONFIG, REPO, cli_env

pytestmark = pytest.mark.slow


def test_mean_sum_max_any_and_stop_agreement_across_two_ranks(tmp_path):
    worker = Path(__file__).with_name("reduce_worker.py")
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                           str(worker)], capture_output=True, text=True, timeout=300,
                          env=cli_env(CAPSGAN_CONFIG=str(DEBUG_CONFIG), REDUCE_OUT=str(tmp_path)), cwd=REPO)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert [r["rank"] for r in rows] == [0, 1] and all(r["world"] == 2 for r in rows)
    for r in rows:  # every rank gets the same, reduced values
        assert r["mean"] == {"a": 1.5, "b": 15.0} and r["sum"] == {"a": 3.0, "b": 30.0}
        assert r["max"] == {"a": 5.0, "b": 3.0}  # a from rank 0, b from rank 1
        assert r["any_from_rank1"] is True
        # Signalled on rank 1 at step 12, agreed at the next multiple of 5 on both ranks.
        assert r["stop_at"] == 15
