"""`capsgan compare` with the four generator x discriminator pairings in one table (synthetic data, tiny)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from conftest import CAPSULE_G_DEBUG, REPO, run_capsgan
from PIL import Image

pytestmark = pytest.mark.slow

MODELS = {"dcgan": ["model.generator=dcgan", "model.discriminator=conv"],
          "capsgan": ["model.generator=dcgan", "model.discriminator=capsule"],
          "capsg_capsd": ["model.generator=capsule", "model.discriminator=capsule"],
          "capsg_convd": ["model.generator=capsule", "model.discriminator=conv"]}


def test_compare_reports_four_generator_discriminator_pairings(tmp_path: Path, mnist_classifier: Path):
    out = tmp_path / "cmp"
    cfg = {"name": "four", "base": str(REPO / "configs" / "debug.yaml"),
           "overrides": ["tracking.backend=local", "train.progress=false", "eval.kid_subsets=10",
                         *CAPSULE_G_DEBUG[1:]],
           "models": MODELS, "seeds": [0], "steps": 10, "eval_every": 10, "eval_n": 100,
           "classifier": str(mnist_classifier), "grid_steps": [10], "routing_ablation": [], "out_dir": str(out)}
    path = tmp_path / "compare.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))  # the table keeps the models' order
    run_capsgan("compare", str(path), timeout=600)

    configs = {n: yaml.safe_load((out / n / "seed0" / "config.yaml").read_text()) for n in MODELS}
    for name, c in configs.items():
        assert [f"model.generator={c['model'].pop('generator')}",
                f"model.discriminator={c['model'].pop('discriminator')}"] == MODELS[name]
        c["train"].pop("run_dir")
    assert all(c == configs["dcgan"] for c in configs.values())  # nothing else differs

    agg = json.loads((out / "compare.json").read_text())
    assert list(agg["variants"]) == list(MODELS)
    for name, v in agg["variants"].items():
        assert [r["step"] for r in v["rows"]] == [10] and v["rows"][0]["fid"] > 0, name
        assert len(v["wall_s_seeds"]) == 1
    table = (out / "table.md").read_text()
    for name in MODELS:  # each row names its discriminator
        assert f"| {name} | {agg['variants'][name]['d']} | 10 |" in table
    assert agg["variants"]["capsg_convd"]["d"].startswith("conv (paper's reading)")
    with Image.open(out / "grid_step_0000010.png") as im:  # four sample grids side by side
        assert im.size[0] > 3 * im.size[1]
