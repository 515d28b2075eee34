"""How many intra-op CPU threads torch gets: the CPUs this process may really use, shared by its node's ranks.

torch's default is every core of the machine. On a shared or loaded node, or where a scheduler gave
the job fewer CPUs, the extra threads spin-wait for cores they never get: a 2-thread run on a
loaded 2-core machine trained ~30x slower than a 1-thread one. So the count is the smallest of
the CPU affinity mask, the cgroup CPU quota and SLURM_CPUS_PER_TASK, divided among the local
processes of a launch (LOCAL_WORLD_SIZE), and capped by OMP_NUM_THREADS when that is set.
`perf.cpu_threads` overrides all of it.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

CGROUP_ROOT = Path("/sys/fs/cgroup")


def cgroup_cpu_limit(root: Path = CGROUP_ROOT) -> float | None:
    """CPUs allowed by the cgroup quota (v2 cpu.max, or v1 cfs quota/period); None when unlimited."""
    try:
        quota, period = (root / "cpu.max").read_text().split()[:2]
        return None if quota == "max" else int(quota) / int(period)
    except (OSError, ValueError):
        pass
    try:
        quota_us = int((root / "cpu" / "cpu.cfs_quota_us").read_text())
        period_us = int((root / "cpu" / "cpu.cfs_period_us").read_text())
        return quota_us / period_us if quota_us > 0 and period_us > 0 else None
    except (OSError, ValueError):
        return None


def _int_env(name: str) -> int | None:
    try:
        value = int(os.environ.get(name, ""))
    except ValueError:
        return None
    return value if value > 0 else None


def choose_threads(override: int = 0, cgroup_root: Path = CGROUP_ROOT) -> tuple[int, str]:
    """(threads, why): `override` when > 0, else the usable CPUs of this process's share of the node."""
    if override > 0:
        return override, f"perf.cpu_threads={override}"
    limits: dict[str, float] = {"affinity": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity")
                                else os.cpu_count() or 1}
    quota = cgroup_cpu_limit(cgroup_root)
    if quota is not None:
        limits["cgroup quota"] = quota
    slurm = _int_env("SLURM_CPUS_PER_TASK")
    if slurm is not None:
        limits["SLURM_CPUS_PER_TASK"] = slurm
    source = min(limits, key=lambda k: limits[k])
    local = _int_env("LOCAL_WORLD_SIZE") or 1
    threads = max(1, math.floor(limits[source] / local))
    cpus = limits[source]
    why = f"{cpus:g} CPU{'s' * (cpus != 1)} by {source}" + (f" / {local} local processes" if local > 1 else "")
    omp = _int_env("OMP_NUM_THREADS")
    if omp is not None and omp < threads:
        threads, why = omp, f"OMP_NUM_THREADS={omp} (under {why})"
    return threads, why
