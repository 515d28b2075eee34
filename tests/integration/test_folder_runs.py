"""`capsgan train` on a folder of images: it trains, and a bad folder is one line and exit 2."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from conftest import DEBUG_CONFIG, run_capsgan
from PIL import Image

QUIET = ["train.progress=false", "tracking.backend=local", "train.sample_every=1000", "tracking.grid_every=1000"]


def test_training_on_a_folder_of_colour_images(tmp_path: Path):
    rng = np.random.default_rng(0)
    for i in range(40):  # RGBA and RGB, two subfolders, 40x40 -> 28x28
        (tmp_path / "imgs" / f"c{i % 2}").mkdir(parents=True, exist_ok=True)
        mode = "RGBA" if i % 2 else "RGB"
        Image.fromarray(rng.integers(0, 255, (40, 40, len(mode)), dtype=np.uint8), mode).save(
            tmp_path / "imgs" / f"c{i % 2}" / f"{i}.png")
    run = tmp_path / "run"
    proc = run_capsgan("train", str(DEBUG_CONFIG), "data.name=folder", f"data.root={tmp_path / 'imgs'}",
                       "data.channels=3", "train.steps=5", f"train.run_dir={run}", *QUIET)
    assert f"run finished: {run} (step 5)" in proc.stdout
    assert (run / "checkpoints" / "step_0000005").is_dir()


def test_an_empty_folder_is_one_line_and_exit_2(tmp_path: Path):
    (tmp_path / "empty").mkdir()
    proc = run_capsgan("train", str(DEBUG_CONFIG), "data.name=folder", f"data.root={tmp_path / 'empty'}",
                       f"train.out_dir={tmp_path / 'runs'}", *QUIET, check=False)
    assert proc.returncode == 2
    (line,) = proc.stderr.strip().splitlines()
    assert line.startswith("capsgan: error: no images under") and "data.root" in line
    assert not (tmp_path / "runs").exists()  # before any work: no run folder left behind
