"""One-process training runs through the real CLI: outputs, --dry-run, bitwise resume, sampling, learning."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import pytest
import torch
import yaml
from conftest import DEBUG_CONFIG, run_capsgan
from PIL import Image
from safetensors.torch import load_file

from capsgan_dist import checkpoint
from capsgan_dist.config import load_config
from capsgan_dist.data import synthetic_images
from capsgan_dist.models import build_discriminator, build_generator

STEP_KEYS = ("loss_d", "acc_d", "loss_g", "d_real", "d_fake", "img_s")
QUIET = ("train.progress=false",)


def _grid_size(n: int, size: int, nrow: int = 8, pad: int = 2) -> tuple[int, int]:
    """(width, height) of torchvision's make_grid for n images of size x size."""
    cols, rows = min(n, nrow), math.ceil(n / nrow)
    return cols * (size + pad) + pad, rows * (size + pad) + pad


def _rows(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def debug_run(tmp_path_factory) -> Path:
    """configs/debug.yaml as shipped (20 steps, samples and checkpoints every 10)."""
    run = tmp_path_factory.mktemp("debug") / "run"
    proc = run_capsgan("train", str(DEBUG_CONFIG), f"train.run_dir={run}", *QUIET, timeout=300)
    assert f"run finished: {run} (step 20)" in proc.stdout
    return run


def test_debug_run_writes_every_output(debug_run):
    run = debug_run
    assert load_config(run / "config.yaml") == load_config(DEBUG_CONFIG, [f"train.run_dir={run}", *QUIET])

    rows = _rows(run)
    assert [r["step"] for r in rows] == [5, 10, 15, 20]  # log_every=5
    for r in rows:
        for k in STEP_KEYS:
            assert k in r and math.isfinite(r[k]), f"step {r['step']}: {k} missing or not finite"
        assert 0 <= r["acc_d"] <= 1 and 0 < r["d_real"] < 1 and 0 < r["d_fake"] < 1
        assert r["img_s"] > 0 and r["loss_d"] > 0

    for step in (10, 20):
        with Image.open(run / "samples" / f"step_{step:07d}.png") as im:  # the checkpoints' 7 digits
            assert im.size == _grid_size(16, 28)  # n_samples=16 fixed-noise images
    with Image.open(run / "curves.png") as im:
        assert im.format == "PNG" and im.size[0] > 500
    with Image.open(run / "samples.gif") as im:
        assert im.format == "GIF" and im.n_frames == 2  # one frame per sample grid

    ckpts = checkpoint.list_checkpoints(run / "checkpoints")
    assert [p.name for p in ckpts] == ["step_0000010", "step_0000020"]
    for p in ckpts:
        manifest = checkpoint.verify(p)
        for part in ("G", "D"):
            assert f"{part}/model.safetensors" in manifest["files"]
            assert f"{part}/optimizer.bin" in manifest["files"]


def test_a_run_logged_to_a_file_prints_only_our_lines(tmp_path):
    """stderr is a pipe here, not a terminal: progress is a line every train.progress_every_s and one at
    the end (not a bar redrawn per step), and DeepSpeed, which was not asked for, prints nothing."""
    run = tmp_path / "run"
    proc = run_capsgan("train", str(DEBUG_CONFIG), f"train.run_dir={run}", "train.progress_every_s=3600",
                       timeout=300)
    assert proc.stdout.splitlines() == [f"run finished: {run} (step 20)"]
    lines = proc.stderr.splitlines()
    assert len(lines) == 1 and re.fullmatch(r"run: step 20/20 \(100%\), [\d.e+]+ steps/s, loss_d=\S+ loss_g=\S+ "
                                            r"acc_d=\S+ img_s=\S+", lines[0]), proc.stderr


def test_dry_run_prints_the_merged_overrides(tmp_path):
    out = tmp_path / "runs"
    proc = run_capsgan("train", str(DEBUG_CONFIG), "model.routing_iters=4", "optim.lr_d=3e-4",
                       f"train.out_dir={out}", "--dry-run", timeout=120)
    printed = yaml.safe_load(proc.stdout)
    assert printed["model"]["routing_iters"] == 4 and printed["optim"]["lr_d"] == 3e-4  # overrides
    assert printed["name"] == "debug-routing_iters=4"  # the model-defining override, in the run's name
    assert printed["model"]["n_caps"] == 4  # from the file
    assert printed["optim"]["beta1"] == 0.5  # a default
    assert not out.exists()  # nothing run, nothing written


def _optimizer_state(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=False)


def _assert_same_state(a, b, where: str) -> None:
    """Nested optimizer state dicts equal, tensors bitwise."""
    if isinstance(a, torch.Tensor):
        assert torch.equal(a, b), f"{where} differs"
    elif isinstance(a, dict):
        assert a.keys() == b.keys(), f"{where}: keys differ"
        for k in a:
            _assert_same_state(a[k], b[k], f"{where}.{k}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), f"{where}: lengths differ"
        for i, (x, y) in enumerate(zip(a, b)):
            _assert_same_state(x, y, f"{where}[{i}]")
    else:
        assert a == b, f"{where}: {a!r} != {b!r}"


def test_resume_matches_uninterrupted_run_bitwise(debug_run, tmp_path):
    """Stop after 7 steps (a D update done, its G update not yet), resume to 20: same bytes."""
    run = tmp_path / "run"
    run_capsgan("train", str(DEBUG_CONFIG), f"train.run_dir={run}", "train.steps=7", *QUIET, timeout=300)
    assert [p.name for p in checkpoint.list_checkpoints(run / "checkpoints")] == ["step_0000007"]
    proc = run_capsgan("train", "--resume", str(run), "train.steps=20", timeout=300)
    assert "(step 20)" in proc.stdout

    for step in ("step_0000010", "step_0000020"):
        ref, got = debug_run / "checkpoints" / step, run / "checkpoints" / step
        for part in ("G", "D"):
            assert (got / part / "model.safetensors").read_bytes() == (ref / part / "model.safetensors").read_bytes(), \
                f"{step}/{part} weights differ from the uninterrupted run"
            _assert_same_state(_optimizer_state(got / part / "optimizer.bin"),
                               _optimizer_state(ref / part / "optimizer.bin"), f"{step}/{part}/optimizer")
    # The logged losses after the resume match too (the window at step 10 straddles the stop).
    ref_rows = {r["step"]: r for r in _rows(debug_run)}
    rows = _rows(run)
    assert [r["step"] for r in rows] == [5, 7, 10, 15, 20]
    for r in rows:
        if r["step"] in (15, 20):
            for k in ("loss_d", "loss_g", "acc_d", "d_real", "d_fake"):
                assert r[k] == ref_rows[r["step"]][k], f"step {r['step']}: {k}"


def test_sample_command_writes_a_grid(debug_run, tmp_path):
    out = tmp_path / "x.png"
    proc = run_capsgan("sample", "--run", str(debug_run), "--n", "16", "--out", str(out), timeout=120)
    assert str(out) in proc.stdout
    with Image.open(out) as im:
        assert im.format == "PNG" and im.size == _grid_size(16, 28)
        lo, hi = im.convert("L").getextrema()
    assert hi > lo  # not a blank image
    out9 = tmp_path / "nine.png"
    run_capsgan("sample", "--run", str(debug_run), "--n", "9", "--out", str(out9), timeout=120)
    with Image.open(out9) as im:
        assert im.size == _grid_size(9, 28)
    # Without --out the grid goes into the run folder, not the folder the command ran in.
    here = tmp_path / "cwd"
    here.mkdir()
    proc = run_capsgan("sample", "--run", str(debug_run), "--n", "4", "--seed", "3", cwd=here, timeout=120)
    default = debug_run / "samples" / "sample_step_0000020_seed3.png"
    assert f"wrote {default}" in proc.stdout and not any(here.iterdir())
    with Image.open(default) as im:
        assert im.size == _grid_size(4, 28)


def _held_out_accuracy(D: torch.nn.Module, G: torch.nn.Module, cfg, n: int = 128) -> tuple[float, float]:
    """D's accuracy on fresh real images (another seed than training's) and fresh-noise fakes."""
    real = synthetic_images(n, cfg.data.image_size, cfg.data.channels, seed=98765).float() / 127.5 - 1
    z = torch.randn(n, cfg.model.latent_dim, generator=torch.Generator().manual_seed(4321))
    with torch.no_grad():
        lr_, lf = D.eval()(real), D(G.eval()(z))
    return (lr_ > 0).float().mean().item(), (lf < 0).float().mean().item()


def test_discriminator_beats_chance_on_held_out_batches(tmp_path):
    """After 150 steps D tells fresh real images from fresh fakes; at initialisation it cannot.

    The debug preset's lr 2e-4 needs ~110 steps before D's batch accuracy leaves 0.5, so this
    test raises the learning rates (D 1e-3, G 5e-4) rather than weakening the assertion.
    """
    run = tmp_path / "run"
    run_capsgan("train", str(DEBUG_CONFIG), f"train.run_dir={run}", "train.steps=150",
                "optim.lr_d=1e-3", "optim.lr_g=5e-4", "train.log_every=10", "train.sample_every=150",
                "train.checkpoint_every=150", "tracking.grid_every=150", *QUIET, timeout=300)
    cfg = load_config(run / "config.yaml")
    path, _ = checkpoint.latest_valid(run / "checkpoints")
    assert path.name == "step_0000150"

    torch.manual_seed(cfg.seed)  # the initial weights, as train() draws them
    G0, D0 = build_generator(cfg), build_discriminator(cfg)
    init_real, init_fake = _held_out_accuracy(D0, G0, cfg)
    assert (init_real + init_fake) / 2 < 0.65, "D is already good at initialisation: the test proves nothing"

    G, D = build_generator(cfg), build_discriminator(cfg)
    G.load_state_dict(load_file(str(path / "G" / "model.safetensors")))
    D.load_state_dict(load_file(str(path / "D" / "model.safetensors")))
    acc_real, acc_fake = _held_out_accuracy(D, G, cfg)
    assert (acc_real + acc_fake) / 2 >= 0.8, f"held-out accuracy real {acc_real:.2f}, fake {acc_fake:.2f}"
    assert min(acc_real, acc_fake) >= 0.6  # not one class only
    # and G was trained too: its weights moved from the initial ones
    assert any(not torch.equal(a, b) for a, b in zip(G.state_dict().values(), G0.state_dict().values()))
