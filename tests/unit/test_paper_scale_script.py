"""scripts/results/paper_scale.sh without training: a stub `capsgan` records which lane ran what.

The script runs from a copy of the repository layout in a temporary folder, so its logs never land
in this checkout. The stub writes one line per call, "<lane pid> <arguments>", appended atomically.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

from conftest import REPO, write_script

SCRIPT = REPO / "scripts" / "results" / "paper_scale.sh"
STUB = """#!/bin/bash
echo "$PPID $*" >> "{calls}"
case "$*" in {fail}) exit 3 ;; esac
"""


def _run(tmp: Path, *datasets: str, fail: str = "no-such-call") -> tuple[subprocess.CompletedProcess, list]:
    (tmp / "scripts" / "results").mkdir(parents=True)
    shutil.copy(SCRIPT, tmp / "scripts" / "results" / "paper_scale.sh")
    (tmp / "configs").mkdir()
    for name in ("mnist", "fashion"):
        (tmp / "configs" / f"compare_paper_{name}.yaml").touch()
    (tmp / "runs" / "classifiers").mkdir(parents=True)
    for name in ("mnist", "fashion"):  # present: no classifier is trained
        (tmp / "runs" / "classifiers" / f"{name}-lenet.safetensors").touch()
    calls = tmp / "calls.log"
    stub = write_script(tmp / "capsgan", STUB.format(calls=calls, fail=fail))
    proc = subprocess.run(["bash", str(tmp / "scripts" / "results" / "paper_scale.sh"), *datasets],
                          capture_output=True, text=True, timeout=60, env={**os.environ, "CAPSGAN": str(stub)})
    lines = [ln.split(" ", 1) for ln in calls.read_text().splitlines()] if calls.exists() else []
    return proc, [(pid, args.replace("configs/compare_paper_", "").replace(".yaml", "")) for pid, args in lines]


SHARE_0 = ["compare {} --only capsgan seeds=[0,1]"]
SHARE_1 = ["compare {} --only capsgan seeds=[2]", "compare {} --only dcgan"]


def _share(n: int, dataset: str) -> list[str]:
    return [c.format(dataset) for c in (SHARE_0 if n == 0 else SHARE_1)]


def test_lanes_take_alternate_shares_across_datasets_then_the_reports_run(tmp_path):
    proc, calls = _run(tmp_path)  # both datasets
    assert proc.returncode == 0, proc.stderr
    training, reports = calls[:-2], calls[-2:]
    assert [args for _, args in reports] == ["compare mnist", "compare fashion"]  # after every share
    by_lane: dict[str, list[str]] = {}
    for pid, args in training:
        by_lane.setdefault(pid, []).append(args)
    assert sorted(by_lane.values()) == sorted([_share(0, "mnist") + _share(1, "fashion"),
                                               _share(1, "mnist") + _share(0, "fashion")])


def test_a_stopped_lane_lets_the_other_finish_and_writes_no_report(tmp_path):
    proc, calls = _run(tmp_path, "mnist", "fashion", fail='*"mnist.yaml --only capsgan seeds=[0,1]"*')
    assert proc.returncode == 1 and "a lane stopped" in proc.stderr
    args = [a for _, a in calls]
    assert "compare mnist --only capsgan seeds=[0,1]" in args
    # The script waited for the other lane, which went on to its share of the next dataset ...
    assert all(a in args for a in _share(1, "mnist") + _share(0, "fashion"))
    assert not any(a in args for a in _share(1, "fashion"))  # ... while the stopped lane did not
    assert not any(a in ("compare mnist", "compare fashion") for a in args)


def test_unknown_dataset_fails_before_any_work(tmp_path):
    proc, calls = _run(tmp_path, "cifar")
    assert proc.returncode == 2 and "no configs/compare_paper_cifar.yaml" in proc.stderr
    assert calls == []
