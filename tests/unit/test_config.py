"""Config loading: precedence, and one clear ConfigError naming the key for each bad-input class."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
from conftest import REPO

from capsgan_dist.config import Config, load_config, model_hash, to_yaml
from capsgan_dist.errors import ConfigError, UserError

CONFIGS = REPO / "configs"


def test_defaults_file_and_overrides_precedence(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("name: x\noptim:\n  lr_d: 1.0e-3\n  lr_g: 5.0e-4\n")
    cfg = load_config(f, ["optim.lr_d=3e-4", "model.routing_iters=5"])
    assert cfg.name == "x"
    assert cfg.optim.lr_d == 3e-4  # override beats file
    assert cfg.optim.lr_g == 5e-4  # file beats default
    assert cfg.model.routing_iters == 5
    assert cfg.train.batch_real == Config().train.batch_real  # default


TRAIN_PRESETS = [p for p in sorted(CONFIGS.glob("*.yaml")) if not p.name.startswith(("sweep_", "compare_"))]


@pytest.mark.parametrize("path", TRAIN_PRESETS, ids=lambda p: p.name)  # sweep/compare files have their own tests
def test_presets_load_and_round_trip(path, tmp_path):
    cfg = load_config(path)
    again = tmp_path / "again.yaml"
    again.write_text(to_yaml(cfg))
    assert load_config(again) == cfg


def test_paper_preset():
    cfg = load_config(CONFIGS / "mnist_capsgan.yaml")
    assert (cfg.train.batch_real, cfg.train.batch_fake, cfg.train.steps) == (16, 16, 10000)
    assert cfg.optim.lr_d == cfg.optim.lr_g == 2e-4
    assert cfg.train.schedule == "alternate" and cfg.model.discriminator == "capsule"
    assert load_config(CONFIGS / "mnist_dcgan.yaml").model.discriminator == "dcgan"  # the baseline that holds


def test_model_hash_tracks_shapes_only():
    a = load_config(None)
    assert model_hash(a) == model_hash(load_config(None, ["optim.lr_d=1e-3", "train.steps=5"]))
    assert model_hash(a) != model_hash(load_config(None, ["model.n_caps=4"]))


def _error(*overrides: str, path: Path | None = None) -> str:
    with pytest.raises(ConfigError) as e:
        load_config(path, list(overrides))
    assert isinstance(e.value, UserError)
    assert "\n" not in str(e.value)  # one line for the CLI
    return str(e.value)


def test_unknown_override_key_suggests_the_right_one():
    msg = _error("optim.lr_dd=1e-4")
    assert "optim.lr_dd" in msg and "did you mean 'optim.lr_d'" in msg


def test_unknown_key_in_file_names_key_and_file(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("train:\n  stepz: 3\n")
    msg = _error(path=f)
    assert "train.stepz" in msg and str(f) in msg and "did you mean 'train.steps'" in msg


def test_unknown_section_suggests_the_right_one():
    msg = _error("trian.steps=3")
    assert "trian" in msg and "did you mean 'train'" in msg


@pytest.mark.parametrize("override,key", [("train.steps=abc", "train.steps"), ("train.steps=1.5", "train.steps"),
                                          ("optim.lr_d=fast", "optim.lr_d"),
                                          ("model.g_batchnorm=maybe", "model.g_batchnorm")])
def test_wrong_type_names_the_key(override, key):
    msg = _error(override)
    assert f"'{key}'" in msg and "wrong type" in msg


@pytest.mark.parametrize("override,key", [("model=3", "model"), ("data=foo", "data")])
def test_value_given_for_a_section_names_it(override, key):
    msg = _error(override)
    assert f"'{key}'" in msg and "section" in msg


@pytest.mark.parametrize("override,key", [
    ("model.routing_iters=0", "model.routing_iters"), ("model.routing_iters=-2", "model.routing_iters"),
    ("optim.lr_d=0", "optim.lr_d"), ("optim.lr_g=-1e-4", "optim.lr_g"),
    ("train.batch_real=0", "train.batch_real"), ("train.batch_fake=-1", "train.batch_fake"),
    ("train.steps=0", "train.steps"), ("data.image_size=30", "data.image_size"),
    ("optim.beta1=1.0", "optim.beta1"),
])
def test_out_of_range_names_the_key(override, key):
    assert key in _error(override)


@pytest.mark.parametrize("override,key,allowed", [
    ("data.name=imagenet", "data.name", "mnist"), ("model.discriminator=mlp", "model.discriminator", "capsule"),
    ("loss.gan=wgan", "loss.gan", "margin"), ("train.schedule=random", "train.schedule", "alternate"),
    ("model.routing_grad=none", "model.routing_grad", "last"),
])
def test_unknown_choice_names_key_and_allowed_values(override, key, allowed):
    msg = _error(override)
    assert key in msg and allowed in msg


def test_idx_needs_root():
    assert "data.root" in _error("data.name=idx")


def test_yaml_syntax_error_names_file_and_line(tmp_path):
    f = tmp_path / "broken.yaml"
    f.write_text("name: x\ntrain:\n  steps: 3: 4\n")
    msg = _error(path=f)
    assert str(f) in msg and "line 3" in msg


def test_yaml_not_a_mapping(tmp_path):
    f = tmp_path / "list.yaml"
    f.write_text("- a\n- b\n")
    assert str(f) in _error(path=f)


def test_missing_config_file(tmp_path):
    assert str(tmp_path / "nope.yaml") in _error(path=tmp_path / "nope.yaml")


def test_override_without_equals_is_named():
    msg = _error("model.routing_iters")
    assert "'model.routing_iters'" in msg and "key=value" in msg


def test_config_is_frozen():
    cfg = load_config(None)
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.train.steps = 3  # type: ignore[misc]


def test_mixed_precision_no_on_the_command_line_means_no():
    # YAML 1.1 (and OmegaConf's dotlist) read a bare `no` as the boolean false.
    assert load_config(None, ["train.mixed_precision=no"]).train.mixed_precision == "no"


def test_run_name_carries_the_model_overrides_in_short_form():
    from capsgan_dist.config import run_name

    assert run_name("debug", ["model.routing=em", "optim.lr_d=1e-4", "model.generator=capsule"]) == \
        "debug-routing=em-generator=capsule"
    assert run_name("debug", ["model.d_widths=[8, 16,32]"]) == "debug-d_widths=8x16x32"
    assert run_name("debug", ["train.steps=5"]) == "debug"


def test_help_shows_each_options_default():
    from capsgan_dist.cli import build_parser

    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command").choices
    train_clf = next(a for a in sub["classifier"]._actions if a.dest == "action").choices["train"]
    text = " ".join(train_clf.format_help().split())
    for option, default in (("--epochs", "5"), ("--batch", "64"), ("--lr", "0.001"), ("--seed", "0")):
        assert f"{option} {option.upper()[2:]}" in text and f"(default: {default})" in text, option
    assert "--out OUT output .safetensors (a .json goes beside it)" in text  # no default: nothing added
    sample = " ".join(sub["sample"].format_help().split())
    assert "--n N number of images (default: 64)" in sample
    assert "(default: None)" not in text + sample and "(default: False)" not in text + sample
