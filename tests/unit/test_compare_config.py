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


def test_paper_scale_presets_train_dcgan_three_times_longer_and_keep_the_comparison_points():
    from capsgan_dist.compare import _train_config

    for name in ("compare_paper_mnist.yaml", "compare_paper_fashion.yaml"):
        cc = load_compare_config(REPO / "configs" / name)
        assert cc.points == {"capsgan": [1000, 10000], "dcgan": [10000, 30000]}
        assert cc.gam_models == ["capsgan", "dcgan"]
        caps = _train_config(cc, cc.models["capsgan"], 0, Path("x"), cc.points["capsgan"])
        dc = _train_config(cc, cc.models["dcgan"], 0, Path("x"), cc.points["dcgan"])
        assert (caps.train.steps, dc.train.steps) == (10000, 30000)
        assert dc.train.keep_steps == [10000, 30000] and caps.model.discriminator == "capsule"
        assert caps.train.mixed_precision == "no" and caps.optim.lr_d == caps.optim.lr_g == 2e-4
        assert (caps.train.batch_real, caps.train.batch_fake, caps.train.schedule) == (16, 16, "alternate")


def test_inception_weights_replace_the_classifier_in_every_run(tmp_path: Path):
    from capsgan_dist.compare import _train_config

    path = tmp_path / "c.yaml"
    path.write_text(f"base: {REPO / 'configs' / 'debug.yaml'}\n")
    plain = _train_config(load_compare_config(path), [], 0, Path("x")).eval
    assert (plain.classifier, plain.inception_weights) == ("runs/classifiers/mnist-lenet.safetensors", None)
    cc = load_compare_config(path, ["inception_weights=w.pth"])
    ev = _train_config(cc, [], 0, Path("x")).eval
    assert (ev.classifier, ev.inception_weights, ev.every) == (None, "w.pth", cc.eval_every)


@pytest.mark.parametrize("extra, match", [
    ("points: {nope: [1000]}", "points names 'nope'"),
    ("points: {capsgan: [1500]}", "multiples of eval_every"),
    ("points: {capsgan: [1000]}\ngam_models: [capsgan, dcgan]", "gam_models must name two models"),
])
def test_bad_comparison_points_and_gam_models_are_config_errors(tmp_path: Path, extra: str, match: str):
    path = tmp_path / "c.yaml"
    path.write_text(f"base: {REPO / 'configs' / 'debug.yaml'}\n{extra}\n")
    with pytest.raises(ConfigError, match=match):
        load_compare_config(path)
def test_routing_kinds_ablation_adds_one_variant_per_other_kind(tmp_path: Path):
    path = tmp_path / "c.yaml"
    path.write_text(f"base: {REPO / 'configs' / 'debug.yaml'}\n")
    cc = load_compare_config(path, ["routing_kinds=[dynamic,em,attention]", "routing_ablation=[1]",
                                    "overrides=[model.primary_dim=16,model.caps_dim=16]"])
    v = {(x.name, x.group): x.overrides for x in variants(cc)}
    assert v[("capsgan", "routing")] == ["model.discriminator=capsule"]  # dynamic is the model's own run
    assert v[("capsgan_em", "routing")] == ["model.discriminator=capsule", "model.routing=em"]
    assert v[("capsgan_attention", "routing")] == ["model.discriminator=capsule", "model.routing=attention"]
    assert ("capsgan_r1", "ablation") in v  # the iterations ablation is unchanged beside it


def test_invalid_routing_variant_fails_before_any_training(tmp_path: Path, monkeypatch):
    from capsgan_dist import compare as cmp

    path = tmp_path / "c.yaml"
    path.write_text(f"base: {REPO / 'configs' / 'debug.yaml'}\nout_dir: {tmp_path / 'out'}\n")
    cc = load_compare_config(path, ["routing_kinds=[dynamic,em]"])  # debug.yaml's capsules are 4-D and 8-D
    monkeypatch.setattr(cmp, "run_all", lambda *a, **k: pytest.fail("training started"))
    with pytest.raises(ConfigError, match="model.routing=em"):
        cmp.compare(cc)
    with pytest.raises(ConfigError, match="routing_kinds has 'fuzzy'"):
        load_compare_config(path, ["routing_kinds=[fuzzy]"])


def test_report_has_a_routing_kinds_table_and_plot(tmp_path: Path):
    """report() on finished runs' metrics: one row per routing kind and step, and routing.png."""
    import json

    from capsgan_dist.compare import report

    path = tmp_path / "c.yaml"
    path.write_text(f"base: {REPO / 'configs' / 'debug.yaml'}\nout_dir: {tmp_path / 'out'}\n"
                    "models: {capsgan: [model.discriminator=capsule]}\nseeds: [0, 1]\n")
    cc = load_compare_config(path, ["routing_kinds=[dynamic,attention]"])
    for i, name in enumerate(["capsgan", "capsgan_attention"]):
        for seed in (0, 1):
            run = tmp_path / "out" / name / f"seed{seed}"
            run.mkdir(parents=True)
            rows = [{"step": s, "eval/fid": 100.0 - s / 10 + i + seed} for s in (10, 20)]
            (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    agg = report(cc)
    assert agg["variants"]["capsgan_attention"]["groups"] == ["routing"]
    assert agg["variants"]["capsgan_attention"]["rows"][1]["fid"] == pytest.approx(100.0 - 2 + 1 + 0.5)
    table = (tmp_path / "out" / "table.md").read_text()
    assert "## Routing kinds (capsgan)" in table and "| capsgan_attention | capsule (attention) | 20 |" in table
    assert (tmp_path / "out" / "routing.png").stat().st_size > 1000


def test_only_names_an_unknown_model_fails_before_any_training(tmp_path: Path, monkeypatch):
    from capsgan_dist import compare as cmp
    from capsgan_dist.errors import UserError

    path = tmp_path / "c.yaml"
    path.write_text(f"base: {REPO / 'configs' / 'debug.yaml'}\nout_dir: {tmp_path / 'out'}\n")
    cc = load_compare_config(path, ["routing_ablation=[1]"])
    monkeypatch.setattr("capsgan_dist.train.train", lambda *a, **k: pytest.fail("training started"))
    with pytest.raises(UserError, match=r"--only capsgn: not a model .*capsgan, dcgan, capsgan_r1"):
        cmp.compare(cc, only=["capsgn"])
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("path", sorted((REPO / "configs").glob("compare_*.yaml")), ids=lambda p: p.name)
def test_every_compare_preset_builds_every_runs_train_config(path: Path, monkeypatch):
    """Each preset's models are valid train configs (a bad override fails here, not hours into a run)."""
    from capsgan_dist.compare import _train_config

    monkeypatch.chdir(REPO)
    cc = load_compare_config(path)
    for v in variants(cc):
        cfg = _train_config(cc, v.overrides, cc.seeds[0], Path("run"))
        assert cfg.seed == cc.seeds[0]


def test_a_one_seed_table_shows_values_without_a_spread():
    from capsgan_dist.compare import table

    one = {"step": 10, "fid": 12.345, "fid_sd": 0.0, "fid_seeds": [12.345]}
    two = {"step": 10, "fid": 12.0, "fid_sd": 1.5, "fid_seeds": [11.0, 13.0]}
    text = table({"variants": {"a": {"groups": ["models"], "rows": [one]}, "b": {"groups": ["models"], "rows": [two]}}})
    assert "| a | - | 10 | 12.35 |" in text and "± 0.00" not in text
    assert "| b | - | 10 | 12.00 ± 1.50 |" in text


def test_each_row_names_its_discriminator():
    from capsgan_dist.compare import d_label
    from capsgan_dist.config import load_config

    def label(*ovs: str) -> str:
        return d_label(load_config(None, list(ovs)).model)

    assert label() == "capsule" and label("model.routing=attention") == "capsule (attention)"
    assert label("model.d_init=dcgan") == "capsule, d_init=dcgan"
    assert label("model.discriminator=dcgan") == "dcgan (Radford et al.)"
    assert label("model.discriminator=dcgan", "model.d_batchnorm=false") == "dcgan (Radford et al.), no batch norm"
    assert label("model.discriminator=conv") == "conv (paper's reading)"
    assert label("model.discriminator=conv", "model.d_kernel=4", "model.d_widths=[64,128,256]") == \
        "conv (paper's reading), d_kernel=4, d_widths=64-128-256"
