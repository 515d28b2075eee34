"""A real run picks its torch threads from the CPUs it may use and records the choice (environment.json)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest
from conftest import DEBUG_CONFIG, REPO, cli_env

pytestmark = pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="needs 2 usable CPUs to see a limit bite")

SHORT = ["train.steps=2", "train.progress=false", "tracking.backend=none", "train.sample_every=1000",
         "tracking.grid_every=1000"]


def _environment(tmp_path, prefix: list[str], **env: str) -> dict:
    run = tmp_path / "run"
    child = cli_env(**env)
    child.pop("OMP_NUM_THREADS")  # the harness's own cap would hide what the run chose
    subprocess.run([*prefix, sys.executable, "-m", "capsgan_dist", "train", str(DEBUG_CONFIG), *SHORT,
                    f"train.run_dir={run}"], check=True, capture_output=True, timeout=300, env=child, cwd=REPO)
    return json.loads((run / "environment.json").read_text())


def test_unconstrained_run_uses_every_usable_cpu(tmp_path):
    env = _environment(tmp_path, [])
    assert env["cpu_threads"] == len(os.sched_getaffinity(0)) and "affinity" in env["cpu_threads_from"]


@pytest.mark.skipif(shutil.which("taskset") is None, reason="taskset (util-linux) is not installed")
def test_taskset_to_one_cpu_gives_one_thread(tmp_path):
    env = _environment(tmp_path, ["taskset", "-c", "0"])
    assert env["cpu_threads"] == 1 and env["cpu_threads_from"] == "1 CPU by affinity"


def test_slurm_cpus_per_task_gives_its_count(tmp_path):
    env = _environment(tmp_path, [], SLURM_CPUS_PER_TASK="1")
    assert env["cpu_threads"] == 1 and env["cpu_threads_from"] == "1 CPU by SLURM_CPUS_PER_TASK"
