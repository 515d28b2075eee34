"""scripts/results/two_lanes.sh without training: a stub `capsgan` records each call (pid, arguments)."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

from conftest import REPO, write_script

STUB = """#!/bin/bash
echo "$$ $*" >> "{calls}"
case "$*" in {fail}) exit 3 ;; esac
"""


def _run(tmp: Path, *args: str, fail: str = "no-such-call") -> tuple[subprocess.CompletedProcess, list[list[str]]]:
    (tmp / "scripts" / "results").mkdir(parents=True)
    shutil.copy(REPO / "scripts" / "results" / "two_lanes.sh", tmp / "scripts" / "results")
    calls = tmp / "calls.log"
    stub = write_script(tmp / "capsgan", STUB.format(calls=calls, fail=fail))
    proc = subprocess.run(["bash", str(tmp / "scripts" / "results" / "two_lanes.sh"), *args], capture_output=True,
                          text=True, timeout=60, env={**os.environ, "CAPSGAN": str(stub)}, cwd=tmp)
    lines = [ln.split(" ", 1) for ln in calls.read_text().splitlines()] if calls.exists() else []
    return proc, lines


def test_each_lane_runs_its_models_in_its_own_process_then_the_report(tmp_path: Path) -> None:
    proc, calls = _run(tmp_path, "c.yaml", "exp", "a,b", "c")
    assert proc.returncode == 0, proc.stderr
    lanes, report = calls[:2], calls[2]
    assert sorted(args for _, args in lanes) == ["compare c.yaml --only a,b", "compare c.yaml --only c"]
    assert report[1] == "compare c.yaml"  # last, after both lanes
    assert sorted(p.name for p in (tmp_path / "runs").iterdir()) == ["exp.log", "exp_lane0.log", "exp_lane1.log"]


def test_a_stopped_lane_lets_the_other_finish_and_writes_no_report(tmp_path: Path) -> None:
    proc, calls = _run(tmp_path, "c.yaml", "exp", "a", "b", fail='*"--only a"*')
    assert proc.returncode == 1 and "exp: a lane stopped" in proc.stderr
    assert sorted(args for _, args in calls) == ["compare c.yaml --only a", "compare c.yaml --only b"]


def test_wrong_arguments_say_the_usage(tmp_path: Path) -> None:
    proc, calls = _run(tmp_path, "c.yaml")
    assert proc.returncode == 2 and "usage: two_lanes.sh CONFIG LOG_PREFIX" in proc.stderr and calls == []
