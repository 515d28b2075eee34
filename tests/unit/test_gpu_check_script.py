"""benchmarks/gpu_check.sh without a GPU: --smoke runs its plumbing on CPU; what it leaves in $OUT."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from conftest import REPO, write_script

SCRIPT = REPO / "benchmarks" / "gpu_check.sh"


def _run(out: Path, **env: str) -> subprocess.CompletedProcess:
    base = {k: v for k, v in os.environ.items() if k not in ("PYTHON", "OUT")}
    # Section 1 only (environment): the file layout is the same as a full run's.
    return subprocess.run(["bash", str(SCRIPT), "--smoke"], capture_output=True, text=True, timeout=300,
                          env={**base, "OUT": str(out), "GPU_CHECK_ONLY": "1", "WANDB_MODE": "offline", **env},
                          cwd=REPO)


def test_writes_one_report_one_json_one_log(tmp_path):
    proc = _run(tmp_path / "out", PYTHON=sys.executable)
    assert proc.returncode == 0, proc.stderr[-2000:]
    files = sorted(p.name for p in (tmp_path / "out").rglob("*"))
    assert files == ["gpu_check.json", "gpu_check.log", "gpu_check.md"]
    report = (tmp_path / "out" / "gpu_check.md").read_text()
    assert "### 1. Environment" in report and "nvidia-smi" in report  # its output (or why there is none)


def test_uses_python3_where_python_is_absent(tmp_path):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    # this interpreter as `python3`; `python` is not on this PATH
    write_script(bin_dir / "python3", f'#!/bin/sh\nexec "{sys.executable}" "$@"\n')
    path = os.pathsep.join([str(bin_dir), "/usr/bin", "/bin"])
    probe = subprocess.run(["bash", "-c", "command -v python"], env={"PATH": path}, capture_output=True)
    assert probe.returncode != 0, "this machine has a `python` on /usr/bin or /bin: the test cannot hide it"
    proc = _run(tmp_path / "out", PATH=path)
    assert proc.returncode == 0, proc.stderr[-2000:] + proc.stdout[-2000:]
    assert (tmp_path / "out" / "gpu_check.md").is_file()


def test_larger_image_section_times_the_capsule_and_conv_d_at_64_and_128_px(tmp_path):
    proc = _run(tmp_path / "out", PYTHON=sys.executable, GPU_CHECK_ONLY="6")
    assert proc.returncode == 0, proc.stderr[-2000:]
    report = (tmp_path / "out" / "gpu_check.md").read_text()
    assert "### 6. Larger images" in report
    for size in (64, 128):
        assert f"--set data.image_size={size} data.channels=3" in report
    assert report.count("| d_conv | 4 |") == 2  # one table per size, both cases timed
