"""torch's CPU threads: the CPUs a process may use, shared among its node's ranks (threads.py)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from capsgan_dist.threads import cgroup_cpu_limit, choose_threads

AFFINITY = len(os.sched_getaffinity(0))


@pytest.fixture
def clean_env(monkeypatch, tmp_path):
    for name in ("SLURM_CPUS_PER_TASK", "LOCAL_WORLD_SIZE", "OMP_NUM_THREADS"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(os, "sched_getaffinity", lambda _pid: set(range(8)))
    return tmp_path  # an empty cgroup folder: no quota


def test_cgroup_quota_v2_and_v1(tmp_path: Path):
    (tmp_path / "cpu.max").write_text("150000 100000\n")
    assert cgroup_cpu_limit(tmp_path) == 1.5
    (tmp_path / "cpu.max").write_text("max 100000\n")
    assert cgroup_cpu_limit(tmp_path) is None
    (tmp_path / "cpu.max").unlink()
    (tmp_path / "cpu").mkdir()
    (tmp_path / "cpu" / "cpu.cfs_quota_us").write_text("300000")
    (tmp_path / "cpu" / "cpu.cfs_period_us").write_text("100000")
    assert cgroup_cpu_limit(tmp_path) == 3.0
    (tmp_path / "cpu" / "cpu.cfs_quota_us").write_text("-1")
    assert cgroup_cpu_limit(tmp_path) is None


def test_the_smallest_limit_wins_and_local_processes_share_it(clean_env, monkeypatch):
    assert choose_threads(0, clean_env) == (8, "8 CPUs by affinity")
    (clean_env / "cpu.max").write_text("400000 100000\n")
    assert choose_threads(0, clean_env) == (4, "4 CPUs by cgroup quota")
    monkeypatch.setenv("SLURM_CPUS_PER_TASK", "2")
    assert choose_threads(0, clean_env) == (2, "2 CPUs by SLURM_CPUS_PER_TASK")
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
    assert choose_threads(0, clean_env) == (1, "2 CPUs by SLURM_CPUS_PER_TASK / 2 local processes")
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "4")  # never below one thread
    assert choose_threads(0, clean_env)[0] == 1


def test_omp_num_threads_caps_and_the_config_key_overrides(clean_env, monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    assert choose_threads(0, clean_env) == (3, "OMP_NUM_THREADS=3 (under 8 CPUs by affinity)")
    monkeypatch.setenv("OMP_NUM_THREADS", "16")  # a cap only: more than the CPUs changes nothing
    assert choose_threads(0, clean_env)[0] == 8
    assert choose_threads(5, clean_env) == (5, "perf.cpu_threads=5")
