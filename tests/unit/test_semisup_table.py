"""scripts/results/semisup_table.py: finished runs become committed record lines that outlive their
run folders, and the table is made from the record and the local runs together."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import yaml
from conftest import REPO


def _module():
    spec = importlib.util.spec_from_file_location("semisup_table", REPO / "scripts" / "results" / "semisup_table.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _run(out: Path, key: str, steps: int, error: float | None) -> None:
    run = out / key
    run.mkdir(parents=True)
    (run / "config.yaml").write_text(yaml.safe_dump({"train": {"steps": steps}}))
    rows = [{"step": steps // 2, "eval/test_error": 0.9}, {"step": steps, "cpu_s": 42.0}]
    if error is not None:
        rows.append({"step": steps, "eval/test_error": error})
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (run / "environment.json").write_text(json.dumps({"git_commit": "0123456789abcdef"}))


def test_record_keeps_runs_whose_folders_are_gone_and_skips_unfinished_ones(tmp_path: Path):
    mod, out, record = _module(), tmp_path / "runs", tmp_path / "record.jsonl"
    _run(out, "mnist_100/conv_ssl/seed0", 100, 0.20)
    _run(out, "mnist_100/conv_ssl/seed1", 100, 0.30)
    _run(out, "mnist_100/capsule_ssl/seed0", 100, None)  # stopped before its last evaluation
    (out / "mnist_100" / "capsnet").mkdir()
    (out / "mnist_100" / "capsnet" / "seed0.json").write_text(json.dumps({"accuracy": 0.75, "steps": 50}))
    (out / "mnist_100" / "capsnet" / "seed1.json").write_text(json.dumps(  # a classifier file naming its commit
        {"accuracy": 0.5, "steps": 50, "cpu_seconds": 7.5, "git_commit": "fedcba9876543210"}))

    runs = mod.merge(mod.read_record(record), mod.local_records(out))
    mod.write_record(record, runs)
    lines = [json.loads(x) for x in record.read_text().splitlines()]
    keys = [x["key"] for x in lines]
    assert keys == ["mnist_100/capsnet/seed0", "mnist_100/capsnet/seed1", "mnist_100/conv_ssl/seed0",
                    "mnist_100/conv_ssl/seed1"]
    assert lines[1] == {"key": "mnist_100/capsnet/seed1", "test_error": 50.0, "steps": 50, "cpu_s": 7.5,
                        "commit": "fedcba9"}
    assert lines[2] == {"key": "mnist_100/conv_ssl/seed0", "test_error": 20.0, "steps": 100, "cpu_s": 42.0,
                        "commit": "0123456"}
    assert lines[0]["test_error"] == 25.0 and lines[0]["commit"]  # an older CapsNet file: the commit recording it
    lines[0]["commit"] = "first00"  # as if recorded at an earlier commit
    record.write_text("".join(json.dumps(x) + "\n" for x in lines))

    # A later invocation: seed 1's folder is gone, seed 0 was rerun locally with another result.
    (out / "mnist_100" / "conv_ssl" / "seed1" / "metrics.jsonl").unlink()
    (out / "mnist_100" / "conv_ssl" / "seed1" / "config.yaml").unlink()
    (out / "mnist_100" / "conv_ssl" / "seed0" / "metrics.jsonl").write_text(
        json.dumps({"step": 100, "eval/test_error": 0.10}) + "\n")
    runs = mod.merge(mod.read_record(record), mod.local_records(out))
    assert runs["mnist_100/conv_ssl/seed1"]["test_error"] == 30.0  # kept from the record
    assert runs["mnist_100/capsnet/seed0"]["commit"] == "first00"  # not moved to the commit re-recording it
    assert runs["mnist_100/conv_ssl/seed0"]["test_error"] == 10.0  # the local run replaces its line
    text = mod.table(runs)
    assert "| mnist_100 | conv D, semi-supervised | 20.00 ± 14.14 | 0: 10.00, 1: 30.00 | 100 steps |" in text
    assert "capsule D, semi-supervised" not in text  # unfinished: no row


def test_plot_draws_the_finished_runs_over_steps(tmp_path: Path):
    mod, out = _module(), tmp_path / "runs"
    _run(out, "mnist_100/conv_ssl/seed0", 100, 0.20)
    _run(out, "mnist_100/capsule_ssl/seed0", 100, None)  # unfinished: left out
    runs = mod.local_records(out)
    mod.plot(out, runs, tmp_path / "img" / "error.png")
    assert (tmp_path / "img" / "error.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
