"""`capsgan compare` on synthetic data: 2 models x 2 seeds + a routing ablation, one model trained first
with --only, then a rerun that skips."""

from __future__ import annotations

import json
from pathlib import Path

import yaml
from conftest import REPO, run_capsgan


def test_compare_trains_both_models_over_seeds_and_reports(tmp_path: Path, mnist_classifier: Path):
    out = tmp_path / "cmp"
    cfg = {
        "name": "tiny", "base": str(REPO / "configs" / "debug.yaml"),
        "overrides": ["tracking.backend=local", "train.progress=false", "eval.kid_subsets=10"],
        "seeds": [0, 1], "steps": 20, "eval_every": 10, "eval_n": 100, "classifier": str(mnist_classifier),
        "grid_steps": [10, 20, 1000], "routing_ablation": [1, 2], "out_dir": str(out),
    }
    path = tmp_path / "compare.yaml"
    path.write_text(yaml.safe_dump(cfg))
    # One compare split over processes: --only trains those models' runs and writes no report ...
    only = run_capsgan("compare", str(path), "--only", "dcgan", timeout=600)
    assert sorted(p.name for p in out.iterdir() if p.is_dir()) == ["dcgan"] and not (out / "table.md").exists()
    assert "without --only to write the report" in only.stdout
    # ... and the run without it trains the rest, skips what --only trained, and writes the report.
    proc = run_capsgan("compare", str(path), timeout=600)
    assert proc.stdout.count("finished earlier, skipped") == 2  # dcgan seeds 0 and 1
    assert "grid steps [1000]" in proc.stdout  # beyond 20 steps: said, not silently dropped
    listed = proc.stdout.strip().splitlines()[-1].split(": ", 1)[1].split(", ")  # the closing line
    assert {"table.md", "compare.json", "fid.png", "fid_cpu.png", "ablation.png", "grid_step_0000010.png",
            "grid_step_0000020.png"} == set(listed)
    assert all((out / f).is_file() for f in listed)

    # Same generator, schedule, data and seed: the configs differ only in the discriminator.
    a = yaml.safe_load((out / "capsgan" / "seed1" / "config.yaml").read_text())
    b = yaml.safe_load((out / "dcgan" / "seed1" / "config.yaml").read_text())
    assert a["model"].pop("discriminator") == "capsule" and b["model"].pop("discriminator") == "dcgan"
    for c in (a, b):
        c["train"].pop("run_dir")
    assert a == b and a["seed"] == 1

    agg = json.loads((out / "compare.json").read_text())
    v = agg["variants"]
    assert set(v) == {"capsgan", "dcgan", "capsgan_r1"}  # routing 2 is debug.yaml's own: reused
    assert v["capsgan"]["groups"] == ["models", "ablation"] and v["capsgan_r1"]["groups"] == ["ablation"]
    for name in v:
        assert [r["step"] for r in v[name]["rows"]] == [10, 20]
        assert all(len(r["fid_seeds"]) == 2 and r["fid"] > 0 for r in v[name]["rows"])
    # seeds differ, so do their FIDs; the table holds mean ± std
    assert v["dcgan"]["rows"][-1]["fid_sd"] > 0
    table = (out / "table.md").read_text()
    assert "| capsgan | capsule | 20 |" in table and "| dcgan | dcgan (Radford et al.) | 10 |" \
        in table and "Routing iterations" in table  # each row names its discriminator
    for f in ("fid.png", "ablation.png", "grid_step_0000010.png", "grid_step_0000020.png"):
        assert (out / f).stat().st_size > 1000, f

    again = run_capsgan("compare", str(path), timeout=300)
    assert again.stdout.count("finished earlier, skipped") == 6
