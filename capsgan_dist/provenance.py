"""Where a result came from: the git commit and the hardware, written beside runs and classifiers."""

from __future__ import annotations

import os
import platform
import subprocess
from pathlib import Path

import torch


def git_commit() -> str | None:
    """The commit of the checked-out package (None outside a git checkout)."""
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True,
                              cwd=Path(__file__).parent, timeout=5).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def environment() -> dict:
    """Git commit and hardware, for a run's tracked config."""
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    return {"git_commit": git_commit(), "hostname": platform.node(), "gpu": gpu,
            "gpu_count": torch.cuda.device_count(), "cpu_count": os.cpu_count(),
            "torch": torch.__version__, "cpu_threads": torch.get_num_threads()}
