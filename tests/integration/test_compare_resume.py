"""`capsgan compare` killed mid-run and rerun ends with the results of a compare never interrupted;
evaluations made before the kill are kept, not recomputed. Models with their own step counts,
comparison points (their checkpoints kept), training CPU time and GAM battles included."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import yaml
from conftest import REPO, cli_env, run_capsgan
from test_faults import HOOKS

# Measurements, not results: they differ between any two runs.
TIMING = ("cpu_s", "img_s", "wall_s", "eval/seconds", "seconds")


def _config(tmp: Path, out: Path, classifier: Path) -> Path:
    cfg = {
        "name": "tiny", "base": str(REPO / "configs" / "debug.yaml"),
        "overrides": ["tracking.backend=local", "train.progress=false", "eval.kid_subsets=10",
                      "train.checkpoint_every=20", "train.keep_checkpoints=1"],
        "models": {"capsgan": ["model.discriminator=capsule"],
                   "dcgan": ["model.discriminator=conv", "train.steps=40"]},
        "seeds": [0], "steps": 20, "eval_every": 10, "eval_n": 64, "classifier": str(classifier),
        "grid_steps": [10, 20, 40], "points": {"capsgan": [10, 20], "dcgan": [20, 40]},
        "gam_models": ["capsgan", "dcgan"], "gam_n": 32, "out_dir": str(out),
    }
    path = tmp / f"{out.name}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def _rows(run: Path) -> list[dict]:
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in r.items() if k not in TIMING} for r in rows]


def _evals(run: Path) -> dict[int, dict]:
    return {r["step"]: r for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines()) if "eval/fid" in r}


def _strip(obj):
    """compare.json without timings and paths (the two compares live in different folders)."""
    if isinstance(obj, dict):
        drop = ("wall_s_seeds", "out_dir", "grids")
        return {k: _strip(v) for k, v in obj.items()
                if k not in TIMING and not k.startswith(("cpu_s", "seconds")) and k not in drop}
    if isinstance(obj, list):
        return [_strip(v) for v in obj]
    return obj


def test_compare_killed_mid_run_resumes_to_the_uninterrupted_result(tmp_path: Path, mnist_classifier: Path):
    whole = tmp_path / "whole"
    run_capsgan("compare", str(_config(tmp_path, whole, mnist_classifier)), timeout=600)

    broken = tmp_path / "broken"
    cfg = _config(tmp_path, broken, mnist_classifier)
    fault = {"kill_after_eval": {"run": "dcgan", "step": 30}}
    env = cli_env(PYTHONPATH=f"{HOOKS}:{REPO}", CAPSGAN_FAULTS=json.dumps(fault))
    killed = subprocess.run([sys.executable, "-m", "capsgan_dist", "compare", str(cfg)], capture_output=True,
                            text=True, timeout=600, env=env, cwd=REPO)
    assert killed.returncode == -9, killed.stderr[-2000:]
    dc = broken / "dcgan" / "seed0"
    before = _evals(dc)
    assert sorted(before) == [10, 20, 30]  # the eval at 30 came after the last checkpoint (20)
    assert not (broken / "compare.json").exists()

    again = run_capsgan("compare", str(cfg), timeout=600)
    assert "capsgan seed 0: finished earlier, skipped" in again.stdout
    assert "resuming" in again.stderr and "step_0000020" in again.stderr

    after = _evals(dc)
    assert sorted(after) == [10, 20, 30, 40]
    for step in (10, 20):  # made before the kill and covered by the checkpoint: kept as written
        assert after[step]["eval/seconds"] == before[step]["eval/seconds"]
    for model in ("capsgan", "dcgan"):
        assert _rows(broken / model / "seed0") == _rows(whole / model / "seed0"), model
    a, b = (json.loads((d / "compare.json").read_text()) for d in (whole, broken))
    assert _strip(a) == _strip(b)
    # What the compare adds for the paper's comparison: per-model steps, points kept, CPU time, GAM.
    assert [r["step"] for r in b["variants"]["dcgan"]["rows"]] == [10, 20, 30, 40]
    assert sorted(p.name for p in (dc / "checkpoints").iterdir()) == ["step_0000020", "step_0000040"]
    assert all(r["cpu_s"] > 0 for r in b["variants"]["dcgan"]["rows"])
    assert len(b["gam"]) == 4 and {g["winner"] for g in b["gam"]} <= {"m1", "m2", "tie", "invalid"}
    table = (broken / "table.md").read_text()
    assert "## Comparison points" in table and "## GAM battles" in table
    for f in ("fid_cpu.png", "grid_points.png", "gam.json", "grid_step_0000040.png"):  # 40: dcgan alone
        assert (broken / f).stat().st_size > 100, f
    # GAM battles already fought are read back, not fought again.
    third = run_capsgan("compare", str(cfg), timeout=300)
    assert "GAM [" not in third.stdout and third.stdout.count("finished earlier, skipped") == 2
