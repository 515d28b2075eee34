"""launch/slurm/train.sbatch on a real two-node SLURM cluster started on this machine.

Both nodes are this machine (n1, n2 on 127.0.0.1), each runs one torchrun with one CPU process:
a gloo world of 2 whose rendezvous is on the first node of the allocation.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import pytest
from conftest import DEBUG_CONFIG, REPO, cli_env
from slurm_cluster import SlurmCluster, _free_ports, missing_binaries, start_cluster

from capsgan_dist.checkpoint import list_checkpoints, verify
from capsgan_dist.train import PREEMPTED_EXIT_CODE

SCRIPT = REPO / "launch" / "slurm" / "train.sbatch"
JOB_TIMEOUT = 240  # seconds per job; the shared 2-core machine is slow when loaded
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def slurm_cluster():
    """A local cluster with nodes n1 and n2, torn down (daemons stopped by PID file) after the module."""
    missing = missing_binaries()
    if missing:
        pytest.skip(f"SLURM/munge binaries absent ({', '.join(missing)}); install them with scripts/install.sh "
                    "(apt: slurmctld slurmd slurm-client munge)")
    cluster = start_cluster()
    yield cluster
    cluster.stop()


def _job_env(cluster: SlurmCluster) -> dict[str, str]:
    """The test's CLI environment for a job: this checkout's code and Python, a free rendezvous port."""
    return cluster.job_env(cli_env(CAPSGAN_PYTHON=sys.executable, CAPSGAN_MASTER_PORT=str(_free_ports(1)[0])))


def _metric_steps(run_dir: Path) -> list[int]:
    path = run_dir / "metrics.jsonl"
    if not path.is_file():
        return []
    return [json.loads(line)["step"] for line in path.read_text().splitlines() if line.strip()]


def test_sbatch_two_nodes_trains_with_world_size_2(slurm_cluster: SlurmCluster, tmp_path: Path):
    run_dir = tmp_path / "run"
    job_id = slurm_cluster.sbatch(
        "--nodes=2", f"--output={tmp_path}/job-%j.out", str(SCRIPT), str(DEBUG_CONFIG),
        f"train.run_dir={run_dir}", "train.progress=false", env=_job_env(slurm_cluster), cwd=REPO)
    job = slurm_cluster.wait_job(job_id, JOB_TIMEOUT)
    log = (tmp_path / f"job-{job_id}.out").read_text(errors="replace")
    assert (job.state, job.exit_code) == ("COMPLETED", 0), log[-4000:]
    assert job.fields["NodeList"] == "n[1-2]" and job.fields["NumNodes"] == "2"

    # The script ran one torchrun per node with one process each, rendezvous on the first node.
    assert "2 node(s) x 1 process(es), rendezvous n1:" in log
    assert "--nnodes=2 --nproc-per-node=1 --master-addr=n1" in log
    assert "run finished:" in log and "(step 20)" in log

    # World size 2: Accelerate saved one RNG state per process in the final checkpoint, no more.
    manifest = verify(run_dir / "checkpoints" / "step_0000020")
    for model in ("G", "D"):
        ranks = sorted(int(m.group(1)) for f in manifest["files"]
                       if (m := re.fullmatch(rf"{model}/random_states_(\d+)\.pkl", f)))
        assert ranks == [0, 1], manifest["files"]
    assert _metric_steps(run_dir) == [5, 10, 15, 20]


def test_preempted_job_checkpoints_exits_75_and_resubmission_resumes(slurm_cluster: SlurmCluster, tmp_path: Path):
    steps = 120
    # No train.run_dir: the script derives a fixed one from the arguments, so resubmitting resumes.
    args = (str(SCRIPT), str(DEBUG_CONFIG), f"train.steps={steps}", "train.log_every=5",
            "train.checkpoint_every=100000", "train.sample_every=100000", "tracking.grid_every=100000")
    env = _job_env(slurm_cluster)
    first = slurm_cluster.sbatch("--nodes=2", f"--output={tmp_path}/job-%j.out", *args, env=env, cwd=tmp_path)

    def training_progress() -> Path | None:
        """The run folder once a metrics row exists (the job is mid-training); fails if the job ended."""
        job = slurm_cluster.job(first)
        assert job.state in ("PENDING", "CONFIGURING", "RUNNING"), f"job ended before the signal: {job}"
        runs = list((tmp_path / "runs").glob("debug-*"))
        return runs[0] if runs and _metric_steps(runs[0]) else None

    run_dir = slurm_cluster.wait_until("the first metrics row", training_progress, JOB_TIMEOUT)
    # What SLURM does before the time limit with `#SBATCH --signal=B:USR1@120`: USR1 to the batch shell only.
    slurm_cluster.run("scancel", "--signal=USR1", "--batch", str(first))
    job = slurm_cluster.wait_job(first, JOB_TIMEOUT)
    log = (tmp_path / f"job-{first}.out").read_text(errors="replace")
    assert (job.state, job.exit_code) == ("FAILED", PREEMPTED_EXIT_CODE), log[-4000:]
    assert "USR1 received" in log
    assert "death signal" not in log and "closing signal" not in log  # torchrun's narration stays quiet

    ckpts = list_checkpoints(run_dir / "checkpoints")
    assert len(ckpts) == 1, ckpts
    stopped_at = verify(ckpts[0])["step"]
    assert 0 < stopped_at < steps
    # One line, from rank 0, with the command that continues this job.
    (line,) = [ln for ln in log.splitlines() if "on a signal; checkpoint saved" in ln]
    assert line.startswith(f"stopped at step {stopped_at} on a signal; checkpoint saved. Resume with: cd {tmp_path}")
    assert "&& sbatch --nodes=2 [same options]" in line and f"resume=auto picks up {run_dir}" in line
    rows_before = (run_dir / "metrics.jsonl").read_text().splitlines()

    second = slurm_cluster.sbatch("--nodes=2", f"--output={tmp_path}/job-%j.out", *args, env=env, cwd=tmp_path)
    job = slurm_cluster.wait_job(second, JOB_TIMEOUT)
    log2 = (tmp_path / f"job-{second}.out").read_text(errors="replace")
    assert (job.state, job.exit_code) == ("COMPLETED", 0), log2[-4000:]
    assert f"train.run_dir={run_dir}" in log2 and "resume=auto" in log2

    # Resumed, not restarted: from the checkpoint of the step the first job stopped at; the metrics
    # rows up to it are the first job's rows, untouched, and the rest continue to the end.
    assert re.search(rf"capsgan: resuming \S+ from step_{stopped_at:07d}\n", log2), log2[-3000:]
    rows_after = (run_dir / "metrics.jsonl").read_text().splitlines()
    kept = [r for r in rows_before if json.loads(r)["step"] <= stopped_at]
    assert kept and rows_after[: len(kept)] == kept
    steps_after = _metric_steps(run_dir)
    assert steps_after == sorted(set(steps_after)) and steps_after[-1] == steps
    assert (run_dir / "checkpoints" / f"step_{steps:07d}").is_dir()
