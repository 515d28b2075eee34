"""`capsgan train` on a folder of images: it trains, and a bad folder is one line and exit 2."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
from conftest import DEBUG_CONFIG, REPO, cli_env, run_capsgan
from PIL import Image

QUIET = ["train.progress=false", "tracking.backend=local", "train.sample_every=1000", "tracking.grid_every=1000"]


def _images(root: Path, n: int = 40) -> Path:
    rng = np.random.default_rng(0)
    for i in range(n):  # RGBA and RGB, two subfolders, 40x40 -> 28x28
        (root / f"c{i % 2}").mkdir(parents=True, exist_ok=True)
        mode = "RGBA" if i % 2 else "RGB"
        Image.fromarray(rng.integers(0, 255, (40, 40, len(mode)), dtype=np.uint8), mode).save(
            root / f"c{i % 2}" / f"{i}.png")
    return root


def _folder_args(tmp_path: Path) -> list[str]:
    return [str(DEBUG_CONFIG), "data.name=folder", f"data.root={tmp_path / 'imgs'}", "data.channels=3",
            f"data.cache_dir={tmp_path / 'cache'}", *QUIET]


def test_two_processes_train_from_one_prepared_memory_mapped_cache(tmp_path: Path):
    _images(tmp_path / "imgs")
    run = tmp_path / "run"
    proc = run_capsgan("train", *_folder_args(tmp_path), "train.steps=5", f"train.run_dir={run}", nproc=2)
    assert f"run finished: {run} (step 5)" in proc.stdout
    assert json.loads((run / "environment.json").read_text())["world_size"] == 2
    assert proc.stderr.count("capsgan: prepared 40 images") == 1  # one rank prepared, the other waited
    assert len([p for p in (tmp_path / "cache").iterdir() if p.is_dir()]) == 1
    again = run_capsgan("train", *_folder_args(tmp_path), "train.steps=2", f"train.run_dir={tmp_path / 'r2'}")
    assert "prepared" not in again.stderr  # reused


def test_resume_from_the_cache_is_bitwise(tmp_path: Path):
    _images(tmp_path / "imgs")
    ref, run = tmp_path / "ref", tmp_path / "run"
    run_capsgan("train", *_folder_args(tmp_path), "train.steps=8", "train.checkpoint_every=4", f"train.run_dir={ref}")
    run_capsgan("train", *_folder_args(tmp_path), "train.steps=5", "train.checkpoint_every=4", f"train.run_dir={run}")
    shutil.rmtree(run / "checkpoints" / "step_0000005")  # stopped after step 5: resume from 4
    run_capsgan("train", "--resume", str(run), "train.steps=8")
    for part in ("G", "D"):
        assert (run / "checkpoints" / "step_0000008" / part / "model.safetensors").read_bytes() == \
            (ref / "checkpoints" / "step_0000008" / part / "model.safetensors").read_bytes()


def test_an_empty_folder_is_one_line_and_exit_2(tmp_path: Path):
    (tmp_path / "empty").mkdir()
    proc = run_capsgan("train", str(DEBUG_CONFIG), "data.name=folder", f"data.root={tmp_path / 'empty'}",
                       f"train.out_dir={tmp_path / 'runs'}", *QUIET, check=False)
    assert proc.returncode == 2
    (line,) = proc.stderr.strip().splitlines()
    assert line.startswith("capsgan: error: no images under") and "data.root" in line
    assert not (tmp_path / "runs").exists()  # before any work: no run folder left behind


def test_data_prepare_command_and_its_refusal(tmp_path: Path):
    _images(tmp_path / "imgs", n=6)
    args = _folder_args(tmp_path)[:5]
    out = run_capsgan("data", "prepare", *args)
    assert out.stdout.startswith(f"cache ready: {tmp_path / 'cache'}/folder-imgs-28px-3ch-") and "(6 images, 3x28x28" \
        in out.stdout
    bad = run_capsgan("data", "prepare", str(DEBUG_CONFIG), check=False)
    assert bad.returncode == 2 and "data.name=synthetic has no prepared cache" in bad.stderr


def test_classifier_on_a_class_folder_shares_the_runs_feature_space(tmp_path: Path):
    from capsgan_dist.config import load_config
    from capsgan_dist.data import fingerprint, load_images
    from capsgan_dist.metrics.classifier import load_classifier

    _images(tmp_path / "imgs")
    out = tmp_path / "clf.safetensors"
    proc = run_capsgan("classifier", "train", "--data", str(tmp_path / "imgs"), "--size", "28", "--channels", "3",
                       "--arch", "lenet", "--epochs", "1", "--holdout", "10", "--out", str(out))
    assert "held-out images (2 class folders: seeded random 30 train / 10 held out" in proc.stdout
    _, meta = load_classifier(out)
    assert meta["image_shape"] == [3, 28, 28] and meta["arch_kwargs"]["n_classes"] == 2
    cfg = load_config(DEBUG_CONFIG, ["data.name=folder", f"data.root={tmp_path / 'imgs'}", "data.channels=3",
                                     f"data.cache_dir={tmp_path / 'cache'}"])
    assert fingerprint(load_images(cfg.data)) in meta["dataset"]["fingerprints"]  # the same pixels, same rule
    bad = run_capsgan("classifier", "train", "--data", str(tmp_path / "imgs"), "--out", str(out), check=False)
    assert bad.returncode == 2 and "give the run's image shape too, --size S --channels C" in bad.stderr

    # scripts/reference_points.py reads the same folder by the same rule and scores the reference cases
    ref = subprocess.run([sys.executable, str(REPO / "scripts" / "reference_points.py"), "--classifier", str(out),
                          "--data", str(tmp_path / "imgs"), "--size", "28", "--channels", "3", "--n", "20",
                          "--cache-dir", str(tmp_path / "cache")], capture_output=True, text=True, cwd=REPO,
                         env=cli_env(), timeout=300, check=True)
    cases = dict(line.split(": {", 1) for line in ref.stdout.splitlines()[1:])
    assert list(cases) == ["real: 20 folder images (a subset of the reference)", "uniform noise in [-1, 1]",
                           "all black (-1)", "all white (+1)"], ref.stdout
    fid = {name: json.loads("{" + rest)["fid"] for name, rest in cases.items()}
    assert fid["real: 20 folder images (a subset of the reference)"] < min(fid["all black (-1)"],
                                                                          fid["all white (+1)"])
