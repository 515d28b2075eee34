"""A preemption signal that reaches only one rank still stops every rank at the same step, with a checkpoint.

On a cluster the signal may reach some processes late or not at all (e.g. a node whose srun task was
not signalled). The ranks agree on the stop flag every train.stop_check_every steps (stop.py), so all
ranks leave the loop together; otherwise the others would hang in the next collective.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import DEBUG_CONFIG, REPO, cli_env

from capsgan_dist.checkpoint import list_checkpoints, verify

pytestmark = pytest.mark.slow


def _children(pid: int) -> list[int]:
    """PIDs whose parent is `pid` (Linux /proc)."""
    out = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            out.append(int(stat.parent.name))
    return out


def _rank_of(pid: int) -> int | None:
    try:
        env = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    except OSError:
        return None
    ranks = [e.split(b"=", 1)[1] for e in env if e.startswith(b"RANK=")]
    return int(ranks[0]) if ranks else None


def test_usr1_to_rank_1_only_stops_both_ranks_with_a_checkpoint(tmp_path: Path):
    run_dir, steps = tmp_path / "run", 400
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           "-m", "capsgan_dist", "train", str(DEBUG_CONFIG), f"train.steps={steps}", "train.log_every=5",
           "train.checkpoint_every=100000", "train.sample_every=100000", "tracking.grid_every=100000",
           "train.progress=false", f"train.run_dir={run_dir}"]
    out = (tmp_path / "out.txt").open("w")
    proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=cli_env(), cwd=REPO,
                            start_new_session=True)
    try:
        deadline = time.monotonic() + 180
        metrics = run_dir / "metrics.jsonl"
        while not (metrics.is_file() and metrics.read_text().strip()):  # mid-training: a metrics row exists
            assert proc.poll() is None, (tmp_path / "out.txt").read_text()[-3000:]
            assert time.monotonic() < deadline, "no training progress within 180 s"
            time.sleep(0.2)
        workers = {_rank_of(p): p for p in _children(proc.pid)}
        assert set(workers) == {0, 1}, workers
        os.kill(workers[1], signal.SIGUSR1)  # rank 1 only; rank 0 and torchrun never see it
        proc.wait(timeout=180)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        out.close()
    log = (tmp_path / "out.txt").read_text(errors="replace")

    ckpts = list_checkpoints(run_dir / "checkpoints")
    assert len(ckpts) == 1, log[-3000:]
    stopped_at = verify(ckpts[0])["step"]
    assert 0 < stopped_at < steps
    # Both ranks left the loop at that step (the checkpoint is saved by all ranks together), rank 0 said
    # so once, and the first rank to exit did so with 75 (torchrun reports it as a failure and stops the
    # other rank, which had already passed the checkpoint's final barrier).
    assert log.count(f"stopped at step {stopped_at} on a signal") == 1, log[-3000:]
    assert re.search(r"exitcode\s*:\s*75\b", log), log[-3000:]
    assert proc.returncode != 0
    last = json.loads(metrics.read_text().splitlines()[-1])["step"]
    assert last <= stopped_at
