"""Semi-supervised training through the real CLI: 1 process, bitwise resume, 2 gloo processes, the baseline."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import REPO, cli_env, run_capsgan
from safetensors.torch import load_file

from capsgan_dist.config import load_config
from capsgan_dist.data import load_splits
from capsgan_dist.models import build_discriminator, build_generator
from capsgan_dist.semisup import final_test_error_line, to_unit

CONFIG = REPO / "configs" / "semisup_debug.yaml"  # 20 steps, test error every 10, 128 test images
QUIET = ("train.progress=false",)


def _rows(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def _evals(run: Path) -> dict[int, dict]:
    return {r["step"]: r for r in _rows(run) if "eval/test_acc" in r}


def _d_at(run: Path, step: int):
    cfg = load_config(run / "config.yaml")
    D = build_discriminator(cfg)
    D.load_state_dict(load_file(str(run / "checkpoints" / f"step_{step:07d}" / "D" / "model.safetensors")))
    return cfg, D.eval()


@torch.no_grad()
def _test_accuracy(run: Path, step: int) -> tuple[float, int]:
    """The checkpointed D's accuracy on the whole test split, recomputed here in one process."""
    cfg, D = _d_at(run, step)
    splits = load_splits(cfg.data, cfg.seed)
    right = (D(to_unit(splits.test_x)).argmax(-1) == splits.test_y).sum().item()
    return right / len(splits.test_x), len(splits.test_x)


@pytest.fixture(scope="module")
def semisup_run(tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("semisup") / "run"
    proc = run_capsgan("train", str(CONFIG), f"train.run_dir={run}", *QUIET, timeout=300)
    assert f"run finished: {run} (step 20); test error " in proc.stdout
    assert "semi-supervised: synthetic: 384 train / 128 held out" in proc.stderr
    return run


def _class_outputs(*runs: Path, n: int) -> tuple[dict[str, str], str]:
    """scripts/results/class_outputs.py on RUNS: the cells of its one table row by column, and its stderr."""
    proc = subprocess.run([sys.executable, str(REPO / "scripts" / "results" / "class_outputs.py"), *map(str, runs),
                           "--n", str(n)], capture_output=True, text=True, timeout=120, env=cli_env())
    assert proc.returncode == 0, proc.stderr
    header, _, row = proc.stdout.strip().splitlines()
    cells = [c.strip() for c in row.strip("|").split("|")]
    return dict(zip([c.strip() for c in header.strip("|").split("|")], cells)), proc.stderr


def test_semisup_run_logs_its_losses_and_the_test_error_of_its_d(semisup_run):
    rows = [r for r in _rows(semisup_run) if "loss_d" in r]
    assert [r["step"] for r in rows] == [5, 10, 15, 20]
    for r in rows:
        for k in ("loss_sup", "loss_unsup", "acc_lab", "d_real", "d_fake", "loss_g"):
            assert k in r, f"step {r['step']}: {k} missing"
        assert 0 <= r["acc_lab"] <= 1 and r["loss_sup"] > 0
    evals = _evals(semisup_run)
    assert sorted(evals) == [10, 20]  # eval.every=10
    # The closing line gives the last and the best of them, and where the best was.
    best_step = min(evals, key=lambda st: evals[st]["eval/test_error"])
    line = final_test_error_line(semisup_run)
    assert line == (f"test error {100 * evals[20]['eval/test_error']:.2f}% (best "
                    f"{100 * evals[best_step]['eval/test_error']:.2f}% at step {best_step})")
    for step, r in evals.items():
        acc, n = _test_accuracy(semisup_run, step)
        assert r["eval/test_n"] == n == 128
        assert r["eval/test_acc"] == pytest.approx(acc) and r["eval/test_error"] == pytest.approx(1 - acc)


def test_class_outputs_report_reads_the_newest_checkpoint_of_d(semisup_run):
    """scripts/results/class_outputs.py: the test error and the classes D calls present, per run."""
    not_a_run = semisup_run.parent / "not_a_run"
    cells, stderr = _class_outputs(semisup_run, not_a_run, n=128)
    assert f"capsgan: warning: skipping: {not_a_run} has no config.yaml" in stderr
    assert 0 <= float(cells["D(generated)"]) <= 1  # G trained: D judged its samples
    acc, _ = _test_accuracy(semisup_run, 20)
    assert cells["run"] == str(semisup_run) and cells["step"] == "20"
    assert float(cells["test error %"]) == pytest.approx(100 * (1 - acc), abs=0.005)
    cfg, D = _d_at(semisup_run, 20)
    with torch.no_grad():
        logits = D(to_unit(load_splits(cfg.data, cfg.seed).test_x))
    present = (torch.sigmoid(logits) > 0.5).sum(1).float().mean().item()
    assert float(cells["classes present"]) == pytest.approx(present, abs=0.005)


def test_semisup_resume_matches_uninterrupted_run_bitwise(semisup_run, tmp_path):
    """Stop after 7 steps (a D update done, its G update not yet), resume to 20: same bytes, same test error."""
    run = tmp_path / "run"
    run_capsgan("train", str(CONFIG), f"train.run_dir={run}", "train.steps=7", *QUIET, timeout=300)
    proc = run_capsgan("train", "--resume", str(run), "train.steps=20", timeout=300)
    assert "(step 20)" in proc.stdout
    for step in ("step_0000010", "step_0000020"):
        for part in ("G", "D"):
            got = (run / "checkpoints" / step / part / "model.safetensors").read_bytes()
            assert got == (semisup_run / "checkpoints" / step / part / "model.safetensors").read_bytes(), \
                f"{step}/{part} weights differ from the uninterrupted run"
    ref, got = _evals(semisup_run), _evals(run)
    assert got[20] == ref[20] and got[10] == ref[10]
    ref_rows = {r["step"]: r for r in _rows(semisup_run) if "loss_d" in r}
    for r in _rows(run):
        if r["step"] in (15, 20) and "loss_d" in r:
            for k in ("loss_d", "loss_sup", "loss_unsup", "acc_lab", "loss_g"):
                assert r[k] == ref_rows[r["step"]][k], f"step {r['step']}: {k}"


def _wandb_history(run: Path) -> dict[int, dict]:
    """History rows by step of the run's one offline W&B run, read with wandb's own reader (`wandb leet inspect`)."""
    (offline,) = [d for d in (run / "wandb").iterdir() if d.is_dir() and d.name.startswith("offline-run-")]
    out = subprocess.run([sys.executable, "-m", "wandb", "leet", "inspect", "--json", str(offline)],
                         capture_output=True, text=True, timeout=60, check=True).stdout
    rows: dict[int, dict] = {}
    for rec in (json.loads(line) for line in out.splitlines() if line.strip()):
        if rec.get("type") == "history":
            item = rec["history"]["item"]
            rows.setdefault(item["_step"], {}).update(item)
    return rows


@pytest.mark.slow
def test_two_process_run_logs_the_test_accuracy_reduced_over_ranks(tmp_path):
    run = tmp_path / "run"
    env = cli_env(WANDB_CONFIG_DIR=str(tmp_path / "wc"), WANDB_CACHE_DIR=str(tmp_path / "wk"),
                  WANDB_DATA_DIR=str(tmp_path / "wd"))
    proc = run_capsgan("train", str(CONFIG), f"train.run_dir={run}", "train.steps=4", "eval.every=2",
                       "train.checkpoint_every=2", "train.log_every=2", "tracking.backend=wandb", *QUIET,
                       nproc=2, timeout=420, env=env)
    assert proc.returncode == 0 and "terminate called" not in proc.stderr
    assert json.loads((run / "environment.json").read_text())["world_size"] == 2
    evals = _evals(run)
    assert sorted(evals) == [2, 4]
    history = _wandb_history(run)
    for step, r in evals.items():
        acc, n = _test_accuracy(run, step)
        # Each rank scored half of the 128 test images; the logged value counts both halves.
        assert r["eval/test_n"] == n == 128
        assert r["eval/test_acc"] == pytest.approx(acc)
        for k in ("eval/test_acc", "eval/test_error", "eval/test_n"):  # the same values reached W&B
            assert history[step][k] == r[k], (step, k)


def test_supervised_only_baseline_trains_d_alone_and_never_g(tmp_path):
    """loss.unsup_weight=0 with the conv D: labeled batches only, G stays at its initial weights."""
    run = tmp_path / "run"
    run_capsgan("train", str(CONFIG), f"train.run_dir={run}", "loss.unsup_weight=0", "model.discriminator=conv",
                "loss.generator=nonsaturating", "train.steps=10", *QUIET, timeout=300)
    cfg = load_config(run / "config.yaml")
    torch.manual_seed(cfg.seed)
    G0, D0 = build_generator(cfg), build_discriminator(cfg)  # the run's initial weights (train.py's order)
    G = load_file(str(run / "checkpoints" / "step_0000010" / "G" / "model.safetensors"))
    assert all(torch.equal(G[k], v) for k, v in G0.state_dict().items())
    D = load_file(str(run / "checkpoints" / "step_0000010" / "D" / "model.safetensors"))
    assert any(not torch.equal(D[k], v) for k, v in D0.state_dict().items())  # D did train
    rows = [r for r in _rows(run) if "loss_d" in r]
    assert rows and all("loss_g" not in r and "loss_unsup" not in r and r["loss_d"] == r["loss_sup"] for r in rows)
    assert 10 in _evals(run)
    # its G never trained, so the class-outputs report gives no D(generated)
    cells, _ = _class_outputs(run, n=64)
    assert cells["D(generated)"] == "-" and float(cells["D(real test)"]) > 0


def test_semisup_bad_input_fails_in_one_line(tmp_path):
    proc = run_capsgan("train", str(CONFIG), "model.n_caps=4", f"train.run_dir={tmp_path / 'r'}", check=False,
                       timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        "capsgan: error: model.n_caps=4: semi-supervised training reads one routed capsule per class and the "
        "data has 10; set model.n_caps=10"]
    assert not (tmp_path / "r").exists()


@pytest.mark.slow
def test_sweep_ranks_semisup_trials_by_test_error(tmp_path):
    """`metric: eval/test_error`: two trials (ce vs margin), embedded Ray, table sorted by the reported error."""
    pytest.importorskip("ray", reason="ray[tune] is an optional dependency (pip install -e .[tune])")
    import csv

    import yaml

    spec = {"name": "ss", "base": str(CONFIG), "out_dir": str(tmp_path / "sweeps"), "trials": 1,
            "overrides": ["train.steps=10", "eval.every=5", "train.checkpoint_every=10", "tracking.backend=local"],
            "metric": "eval/test_error", "mode": "min", "scheduler": {"name": "fifo"}, "cpus_per_trial": 1,
            "space": {"model.routing_iters": None, "optim.lr_d": None, "optim.lr_g": None,
                      "loss.supervised": {"grid": ["ce", "margin"]}}}
    path = tmp_path / "ss.yaml"
    path.write_text(yaml.safe_dump(spec))
    proc = run_capsgan("sweep", str(path), timeout=300)
    assert "sweep metric: eval/test_error (min)" in proc.stderr
    with open(tmp_path / "sweeps" / "ss" / "results.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 2 and {r["loss.supervised"] for r in rows} == {"ce", "margin"}
    errors = [float(r["eval/test_error"]) for r in rows]
    assert errors == sorted(errors)
    for r in rows:  # each trial reported its own last evaluation
        assert float(r["eval/test_error"]) == pytest.approx(_evals(Path(r["run_dir"]))[10]["eval/test_error"])


def test_classifier_baseline_trains_on_the_runs_labeled_subset(tmp_path, mnist_dir):
    """`classifier train --labels-per-class 2`: 20 images, the semi-supervised split's labeled ones."""
    out = tmp_path / "lenet.safetensors"
    proc = run_capsgan("classifier", "train", "--data", str(mnist_dir), "--arch", "lenet", "--labels-per-class", "2",
                       "--seed", "4", "--split-seed", "0", "--epochs", "1", "--out", str(out), timeout=180)
    assert "on 2000 held-out images" in proc.stdout
    meta = json.loads(out.with_suffix(".json").read_text())
    assert meta["dataset"]["n_train"] == 20 and meta["dataset"]["labels_per_class"] == 2
    assert meta["dataset"]["n_test"] == 2000 and "(seed 0)" in meta["dataset"]["split"]
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True).stdout.strip()
    assert meta["git_commit"] == head and isinstance(meta["cpu_seconds"], float)  # what the results record reads
    bad = run_capsgan("classifier", "train", "--data", str(mnist_dir), "--labels-per-class", "5000",
                      "--out", str(tmp_path / "x"), check=False, timeout=120)
    lines = bad.stderr.strip().splitlines()
    assert bad.returncode == 2 and len(lines) == 1
    assert lines[0].startswith("capsgan: error: --labels-per-class=5000: class 0 has only")
