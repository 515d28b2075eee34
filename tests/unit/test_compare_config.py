"""Compare presets: defaults, a file's own models, overrides and bad keys."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import REPO

from capsgan_dist.compare import DEFAULT_MODELS, load_compare_config, variants
from capsgan_dist.errors import ConfigError


def test_preset_compares_capsgan_with_dcgan_and_overrides_apply():
    cc = load_compare_config(REPO / "configs" / "compare_mnist.yaml", ["seeds=[0,1]", "steps=400"])
    assert cc.models == DEFAULT_MODELS and cc.seeds == [0, 1] and cc.steps == 400
    names = [v.name for v in variants(cc)]  # ablation [1, 2, 3, 5]: routing 3 is the model's own
    assert names == ["capsgan", "dcgan", "capsgan_r1", "capsgan_r2", "capsgan", "capsgan_r5"]


def test_a_files_own_models_replace_the_defaults(tmp_path: Path):
    path = tmp_path / "c.yaml"
    path.write_text(f"base: {REPO / 'configs' / 'debug.yaml'}\nmodels: {{a: [model.routing_iters=1]}}\n")
    assert load_compare_config(path).models == {"a": ["model.routing_iters=1"]}


def test_unknown_compare_key_is_a_config_error(tmp_path: Path):
    path = tmp_path / "c.yaml"
    path.write_text("sedes: [0]\n")
    with pytest.raises(ConfigError, match="sedes"):
        load_compare_config(path)
