"""scripts/results/seed_grid.py: the seeds every named model has at the step, one row per model."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import torch
from conftest import REPO

from capsgan_dist.plots import save_grid


def _grid(cmd_args: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(REPO / "scripts" / "results" / "seed_grid.py"), *cmd_args],
                          capture_output=True, text=True, timeout=120)


def test_grid_takes_the_seeds_every_model_has(tmp_path: Path):
    for model, seeds in (("capsule_ssl", [0, 1]), ("conv_ssl", [0, 1, 2])):
        for seed in seeds:
            save_grid(torch.rand(4, 1, 8, 8), tmp_path / model / f"seed{seed}" / "samples" / "step_000100.png", nrow=2)
    png = tmp_path / "grid.png"
    proc = _grid([str(tmp_path), "100", str(png), "capsule_ssl", "conv_ssl"])
    assert proc.returncode == 0, proc.stderr
    import matplotlib.pyplot as plt

    h, w = plt.imread(png).shape[:2]
    assert w < 1.2 * h  # two seeds (0, 1) across, two models down (with seed 2 too: w = 1.46 h)
    missing = _grid([str(tmp_path), "200", str(tmp_path / "none.png"), "capsule_ssl", "conv_ssl"])
    assert missing.returncode == 1 and "no seed of capsule_ssl, conv_ssl" in missing.stderr
