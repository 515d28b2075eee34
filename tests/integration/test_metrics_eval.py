"""`capsgan eval` and the training-loop evaluation, through the real CLI (1 and 2 processes)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from conftest import DEBUG_CONFIG, run_capsgan

from capsgan_dist.config import load_config, to_yaml
from capsgan_dist.metrics.evaluate import evaluate_run
from capsgan_dist.plots import read_metrics


def _train_debug(run_dir: Path, classifier: Path, *extra: str, nproc: int = 1) -> list[dict]:
    run_capsgan("train", str(DEBUG_CONFIG), f"train.run_dir={run_dir}", "train.progress=false",
                "eval.every=10", "eval.n=101", f"eval.classifier={classifier}", "eval.kid_subsets=10",
                *extra, nproc=nproc, timeout=300)
    return [r for r in read_metrics(run_dir / "metrics.jsonl") if "eval/fid" in r]


def test_training_loop_evaluates_every_n_steps_and_eval_writes_eval_json(tmp_path: Path, mnist_classifier: Path):
    run = tmp_path / "run"
    rows = _train_debug(run, mnist_classifier)
    assert [r["step"] for r in rows] == [10, 20]  # debug.yaml: 20 steps, eval.every=10
    for r in rows:
        assert r["eval/n"] == 101 and r["eval/ranks"] == 1
        assert all(math.isfinite(r[f"eval/{k}"]) for k in ("fid", "kid", "is", "precision", "recall"))

    proc = run_capsgan("eval", "--run", str(run), "--n", "150", "--all", timeout=300)
    assert "wrote" in proc.stdout
    # A synthetic-data run scored by an MNIST classifier: the numbers come with a one-line warning.
    warned = [ln for ln in proc.stderr.splitlines() if ln.startswith("capsgan: warning: classifier")]
    assert len(warned) == 1 and "not on this run's images (data.name=synthetic)" in warned[0], proc.stderr
    report = json.loads((run / "eval.json").read_text())
    assert report["classifier_trained_on_run_data"] is False
    assert [c["step"] for c in report["checkpoints"]] == [10, 20]
    assert report["n_fake"] == 150 and report["classifier"] == str(mnist_classifier)
    assert report["classifier_accuracy"] > 0.85 and report["reference"]["is_real"] > 1
    assert all(c["fid"] > 0 and 0 <= c["precision"] <= 1 for c in report["checkpoints"])

    newest = evaluate_run(run, n=150)  # default: the newest checkpoint only (in-process, saves a start-up)
    assert [c["step"] for c in newest["checkpoints"]] == [20]
    # same latents, same weights, same real set (thread counts may differ: tolerance for float sums)
    assert newest["checkpoints"][0]["fid"] == pytest.approx(report["checkpoints"][1]["fid"], rel=1e-5)


def test_eval_samples_on_both_ranks_and_scores_on_the_main_process(tmp_path: Path, mnist_classifier: Path):
    rows = _train_debug(tmp_path / "run", mnist_classifier, nproc=2)
    assert [r["step"] for r in rows] == [10, 20]
    assert all(r["eval/ranks"] == 2 and r["eval/n"] == 101 for r in rows)  # 2 x 51 gathered, cut to 101


def test_eval_without_a_classifier_is_a_one_line_user_error(tmp_path: Path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_text(to_yaml(load_config(DEBUG_CONFIG)))
    proc = run_capsgan("eval", "--run", str(run), check=False, timeout=300)
    assert proc.returncode == 2 and "--classifier" in proc.stderr and "Traceback" not in proc.stderr


def test_training_loop_and_eval_score_in_the_fid_inception_space(tmp_path: Path, fid_inception_weights: Path):
    run = tmp_path / "run"
    small = ["data.synthetic_size=8", "eval.n=5", "eval.metrics=[fid,pr]", "eval.batch=8"]  # 299 px: slow
    run_capsgan("train", str(DEBUG_CONFIG), f"train.run_dir={run}", "train.progress=false", "eval.every=10",
                f"eval.inception_weights={fid_inception_weights}", *small, timeout=300)
    rows = [r for r in read_metrics(run / "metrics.jsonl") if "eval/fid" in r]
    assert [r["step"] for r in rows] == [10, 20] and all(r["eval/fid"] > 0 for r in rows)

    proc = run_capsgan("eval", "--run", str(run), "--inception-weights", str(fid_inception_weights), "--all",
                       timeout=300)
    assert "capsgan: warning" not in proc.stderr  # nothing to check a network trained on ImageNet against
    assert "real images: image 8/8 (100%)" in proc.stderr  # slow on a CPU: it says how far it is
    assert proc.stderr.count("generated images: image 5/5 (100%)") == 2  # one per checkpoint
    report = json.loads((run / "eval.json").read_text())
    assert report["classifier_arch"] == "inception-v3-fid" and report["classifier"] == str(fid_inception_weights)
    assert report["classifier_trained_on_run_data"] is None
    fids = [c["fid"] for c in report["checkpoints"]]
    assert [c["step"] for c in report["checkpoints"]] == [10, 20] and all(math.isfinite(f) and f > 0 for f in fids)
    assert report["reference"] == {} and report["metrics"] == ["fid", "pr"]


def test_eval_takes_a_classifier_or_the_inception_weights_not_both(capsys: pytest.CaptureFixture) -> None:
    from capsgan_dist.cli import build_parser

    with pytest.raises(SystemExit) as stop:
        build_parser().parse_args(["eval", "--run", "r", "--inception-weights", "x.pth", "--classifier", "y"])
    assert stop.value.code == 2 and "not allowed with argument" in capsys.readouterr().err
