"""Ctrl-C or SIGTERM on `launch/local.sh --cpu 2`: one line from rank 0 with the command that continues
this launch, exit 75 (stopped, resumable), and none of torch elastic's shutdown narration."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import DEBUG_CONFIG, REPO, cli_env

from capsgan_dist.checkpoint import list_checkpoints, verify

pytestmark = pytest.mark.slow


def _interruptible() -> None:
    """As from a terminal: SIGINT at its default. A test run in the background inherits it ignored, and a
    shell cannot trap a signal that was ignored when it started."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _stop_launch(tmp_path: Path, send) -> tuple[int, str, Path]:
    """Start a 2-process launch, `send(proc)` once it is training; its exit code, output and run folder."""
    run = tmp_path / "run"
    proc = subprocess.Popen(["bash", str(REPO / "launch" / "local.sh"), "--cpu", "2", str(DEBUG_CONFIG),
                             "train.steps=100000", "train.log_every=5", "train.progress=false",
                             "tracking.backend=local", f"train.run_dir={run}"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=REPO,
                            env=cli_env(PYTHON=sys.executable), start_new_session=True,
                            preexec_fn=_interruptible)
    try:
        deadline = time.monotonic() + 240
        metrics = run / "metrics.jsonl"
        while not (metrics.is_file() and metrics.read_text().strip()):  # the event: a logged training row
            assert proc.poll() is None, proc.communicate()[0][-3000:]
            assert time.monotonic() < deadline, "no training progress within 240 s"
            time.sleep(0.2)
        send(proc)
        out, _ = proc.communicate(timeout=240)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    return proc.returncode, out, run


def _assert_one_resumable_stop(rc: int, out: str, run: Path) -> None:
    assert rc == 75, out[-3000:]
    (line,) = [ln for ln in out.splitlines() if "on a signal" in ln]
    step = verify(list_checkpoints(run / "checkpoints")[-1])["step"]
    assert line == (f"stopped at step {step} on a signal; checkpoint saved. Resume with: "
                    f"bash launch/local.sh --cpu 2 --resume {run}")
    for noise in ("death signal", "closing signal", "Traceback", "ChildFailedError"):
        assert noise not in out, out[-3000:]


def test_ctrl_c_stops_every_rank_once_with_the_launch_resume_command(tmp_path: Path):
    # A terminal's Ctrl-C: SIGINT to the whole foreground process group.
    _assert_one_resumable_stop(*_stop_launch(tmp_path, lambda p: os.killpg(p.pid, signal.SIGINT)))


def test_sigterm_to_the_launch_script_does_the_same(tmp_path: Path):
    _assert_one_resumable_stop(*_stop_launch(tmp_path, lambda p: p.send_signal(signal.SIGTERM)))
