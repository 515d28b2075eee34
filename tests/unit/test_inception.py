"""The FID Inception-v3 as a feature network: read from the user's file only, and refused with a reason."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

from capsgan_dist.config import ConfigError, EvalConfig, load_config
from capsgan_dist.errors import CheckpointError, UserError
from capsgan_dist.metrics import MetricSuite
from capsgan_dist.metrics.inception import load_inception


def _no_download(*args, **kwargs):
    raise AssertionError("the Inception weights must never be downloaded")


@pytest.fixture
def offline(monkeypatch: pytest.MonkeyPatch) -> None:
    import torch_fidelity.feature_extractor_inceptionv3 as fe

    monkeypatch.setattr(fe, "load_state_dict_from_url", _no_download)
    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", _no_download)


def test_features_are_torch_fidelitys_on_the_images_as_uint8_rgb(fid_inception_weights: Path, offline) -> None:
    from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3

    net, meta = load_inception(fid_inception_weights)
    assert net.num_features == 2048 and meta["arch"] == "inception-v3-fid"
    state = torch.load(fid_inception_weights, weights_only=True)
    state.update({k.removesuffix("running_mean") + "num_batches_tracked": torch.tensor(0)
                  for k in list(state) if k.endswith("running_mean")})
    reference = FeatureExtractorInceptionV3("inception-v3-compat", ["2048", "logits_unbiased"],
                                            feature_extractor_weights_path=_saved(state))
    torch.manual_seed(1)
    rgb = torch.rand(3, 3, 32, 32) * 2 - 1
    features, logits = net.features_and_logits(rgb)
    want_f, want_l = reference(((rgb + 1) * 127.5).round().to(torch.uint8))
    assert features.shape == (3, 2048) and logits.shape == (3, 1008)
    assert torch.isfinite(features).all() and features.std() > 0
    torch.testing.assert_close(features, want_f)
    torch.testing.assert_close(logits, want_l)
    grey = rgb[:, :1]  # a grey image is read as the same value in R, G and B
    torch.testing.assert_close(net.features_and_logits(grey)[0], net.features_and_logits(grey.expand(-1, 3, -1, -1))[0])
    net.train()
    assert not net.training and not net.net.training  # inference behaviour (batch norm statistics) always


def _saved(state: dict) -> object:
    import io

    buffer = io.BytesIO()
    torch.save(state, buffer)
    buffer.seek(0)
    return buffer


def test_metric_suite_scores_in_inception_space(fid_inception_weights: Path, offline) -> None:
    net, _ = load_inception(fid_inception_weights)
    suite = MetricSuite(net, EvalConfig(n=5, metrics=["fid", "pr"], batch=5))
    torch.manual_seed(2)
    real = torch.rand(5, 1, 28, 28) * 2 - 1
    suite.set_real(real)
    same, other = suite.score(real), suite.score(-torch.ones(5, 1, 28, 28))
    assert abs(same["fid"]) < 1e-3 * other["fid"] and other["fid"] > 0  # FID(real, real) ~ 0
    assert same["recall"] == 1.0 and other["recall"] == 0.0


def test_bad_inception_files_are_refused_with_the_file_and_the_reason(tmp_path: Path,
                                                                       fid_inception_weights: Path) -> None:
    with pytest.raises(CheckpointError, match="not found.*pt_inception"):
        load_inception(tmp_path / "missing.pth")
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"not a torch file")
    with pytest.raises(CheckpointError, match="cannot read Inception weights .*junk.pth"):
        load_inception(junk)
    pickled = tmp_path / "code.pth"
    torch.save({"fc.weight": torch.zeros(1008, 2048), "extra": Path("x")}, pickled)  # not tensors only
    with pytest.raises(CheckpointError, match="cannot read Inception weights"):
        load_inception(pickled)
    lenet = tmp_path / "lenet.pth"
    torch.save({"fc.weight": torch.zeros(10, 128)}, lenet)
    with pytest.raises(CheckpointError, match="is not the FID Inception-v3"):
        load_inception(lenet)
    state = torch.load(fid_inception_weights, weights_only=True)
    del state["Mixed_7c.branch_pool.conv.weight"]
    torn = tmp_path / "torn.pth"
    torch.save(state, torn)
    with pytest.raises(CheckpointError, match="does not fit the FID Inception-v3.*Mixed_7c.branch_pool"):
        load_inception(torn)


def test_without_torch_fidelity_the_error_names_the_install(monkeypatch: pytest.MonkeyPatch,
                                                            fid_inception_weights: Path) -> None:
    monkeypatch.setitem(sys.modules, "torch_fidelity.feature_extractor_inceptionv3", None)
    with pytest.raises(UserError, match="pip install 'torch-fidelity"):
        load_inception(fid_inception_weights)


def test_config_takes_one_feature_network() -> None:
    with pytest.raises(ConfigError, match="both name a feature network"):
        EvalConfig(classifier="a.safetensors", inception_weights="b.pth")
    cfg = load_config(None, ["eval.every=10", "eval.inception_weights=b.pth"])  # Inception alone is enough
    assert cfg.eval.feature_network == "b.pth"
    with pytest.raises(ConfigError, match="eval.inception_weights"):
        load_config(None, ["eval.every=10"])
