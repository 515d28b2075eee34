"""Sample-quality metrics: closed forms on Gaussian features, and sanity on real MNIST digits."""

from __future__ import annotations

import gzip
import json
import os
import struct
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch
import torchvision.transforms.functional as TF
from conftest import DEBUG_CONFIG, REPO

from capsgan_dist.config import METRIC_NAMES, EvalConfig, load_config
from capsgan_dist.data import fingerprint, read_idx_images, synthetic_images
from capsgan_dist.errors import CapsganWarning, CheckpointError, ConfigError, DataError, UserError
from capsgan_dist.metrics import METRICS, Features, MetricSuite, register
from capsgan_dist.metrics.classifier import accuracy, labelled_split, load_classifier, save_classifier, train_classifier
from capsgan_dist.metrics.evaluate import check_classifier
from capsgan_dist.models.classifiers import CapsNet, LeNet
from capsgan_dist.shapes import min_classifier_image

SETTINGS = EvalConfig(kid_subsets=50, kid_subset_size=500)


def _gauss(n: int, d: int, seed: int, mean: float = 0.0, std: float = 1.0) -> Features:
    g = torch.Generator().manual_seed(seed)
    f = (mean + std * torch.randn(n, d, generator=g)).double()
    return Features(f, torch.zeros(n, 10, dtype=torch.float64))


def _score(name: str, real: Features, fake: Features, settings: EvalConfig = SETTINGS) -> dict[str, float]:
    m = METRICS[name](real.features.shape[1], settings, seed=0)
    m.set_real(real)
    return m.score(fake)


def test_metrics_are_registered_by_name():
    assert set(METRICS) == set(METRIC_NAMES) == {"fid", "kid", "is", "pr"}


def test_a_metric_name_outside_the_config_list_is_refused():
    with pytest.raises(ValueError, match="METRIC_NAMES"):
        register("nope")


def test_validating_eval_metrics_imports_no_metric_code():
    """config -> metrics was an import cycle: the config now checks names against its own list."""
    code = ("import sys; from capsgan_dist.config import load_config; load_config(None, ['eval.metrics=[fid,pr]']); "
            "print(sorted(m for m in sys.modules if m.startswith('capsgan_dist')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env={**os.environ, "PYTHONPATH": str(REPO)}).stdout
    assert "capsgan_dist.metrics" not in out and "capsgan_dist.config" in out


def test_fid_matches_the_closed_form_for_gaussians():
    # FID(N(0, I), N(m, s^2 I)) = d m^2 + d (1 + s^2 - 2 s); d = 8.
    real = _gauss(8000, 8, seed=1)
    assert _score("fid", real, _gauss(8000, 8, seed=2, mean=1.0))["fid"] == pytest.approx(8.0, abs=0.6)
    assert _score("fid", real, _gauss(8000, 8, seed=3, std=2.0))["fid"] == pytest.approx(8.0, abs=0.6)
    assert _score("fid", real, _gauss(8000, 8, seed=4))["fid"] < 0.1


def test_kid_is_unbiased_near_zero_for_identical_distributions():
    real = _gauss(2000, 16, seed=1)
    same = _score("kid", real, _gauss(2000, 16, seed=2))
    shifted = _score("kid", real, _gauss(2000, 16, seed=3, mean=0.3))
    assert abs(same["kid"]) < 2 * same["kid_std"]  # zero within its own spread (may be negative)
    assert abs(same["kid"]) < 0.05 * shifted["kid"]
    assert shifted["kid"] > 3 * shifted["kid_std"]


def test_inception_score_is_number_of_classes_for_confident_balanced_logits():
    labels = torch.arange(1000) % 10
    confident = Features(torch.zeros(1000, 1).double(), 30.0 * torch.nn.functional.one_hot(labels, 10).double())
    collapsed = Features(torch.zeros(1000, 1).double(), 30.0 * torch.nn.functional.one_hot(labels * 0, 10).double())
    # 10 random splits of 100: each split's classes are only roughly balanced, hence ~9.7, not 10
    assert 9.5 < _score("is", confident, confident)["is"] <= 10.0
    assert _score("is", confident, collapsed)["is"] == pytest.approx(1.0, rel=1e-3)


def test_precision_recall_separate_quality_from_coverage():
    real = _gauss(1500, 4, seed=1)
    same = _score("pr", real, _gauss(1500, 4, seed=2))
    far = _score("pr", real, _gauss(1500, 4, seed=3, mean=20.0))
    collapsed = _score("pr", real, _gauss(1500, 4, seed=4, std=0.2))  # inside the real manifold, narrow
    assert same["precision"] > 0.8 and same["recall"] > 0.8
    assert far["precision"] == 0.0 and far["recall"] == 0.0
    assert collapsed["precision"] > 0.95 and collapsed["recall"] < 0.3


def test_eval_config_rejects_unknown_metric_and_missing_classifier():
    with pytest.raises(ConfigError, match="fid"):
        load_config(None, ["eval.metrics=[fod]"])
    with pytest.raises(ConfigError, match="eval.classifier"):
        load_config(None, ["eval.every=10"])
    with pytest.raises(ConfigError, match="eval.n=3 is too small"):
        load_config(None, ["eval.n=3"])


def test_load_classifier_rejects_weights_that_do_not_fit_the_metadata(tmp_path: Path):
    meta = {"arch": "capsnet", "arch_kwargs": {}, "image_shape": [1, 28, 28]}
    save_classifier(LeNet(), meta, tmp_path / "c.safetensors")
    with pytest.raises(CheckpointError, match="cannot load classifier"):
        load_classifier(tmp_path / "c.safetensors")
    with pytest.raises(CheckpointError, match="not found"):
        load_classifier(tmp_path / "missing.safetensors")


def _write_labelled_idx(root: Path, n: int, size: int) -> None:
    """t10k-images/labels IDX files of n random size x size images (what `classifier train --data` reads)."""
    root.mkdir(parents=True, exist_ok=True)
    pixels = torch.randint(0, 256, (n, size, size), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    with gzip.open(root / "t10k-images-idx3-ubyte.gz", "wb") as f:
        f.write(struct.pack(">IIII", 2051, n, size, size) + pixels.numpy().tobytes())
    with gzip.open(root / "t10k-labels-idx1-ubyte.gz", "wb") as f:
        f.write(struct.pack(">II", 2049, n) + bytes(i % 10 for i in range(n)))


@pytest.mark.parametrize("arch", ["lenet", "capsnet"])
def test_classifier_minimum_image_size_is_exact_and_smaller_data_is_a_user_error(arch: str, tmp_path: Path):
    smallest = min_classifier_image(arch)
    cls = {"lenet": LeNet, "capsnet": CapsNet}[arch]
    with torch.no_grad():
        assert cls(image_size=smallest)(torch.zeros(2, 1, smallest, smallest)).shape == (2, 10)
    with pytest.raises(ValueError, match=f"needs >= {smallest}"):
        cls(image_size=smallest - 1)
    _write_labelled_idx(tmp_path / "small", 40, 12)
    with pytest.raises(UserError, match=f"--arch {arch} needs images of at least {smallest}x{smallest}.*12x12"):
        train_classifier(tmp_path / "small", arch, tmp_path / "c.safetensors", holdout=10)
    assert not (tmp_path / "c.safetensors").exists()


def test_a_classifier_for_other_images_is_refused_and_for_other_data_warned(tmp_path: Path):
    cfg = load_config(DEBUG_CONFIG)  # synthetic 28x28x1
    images = synthetic_images(64, 28, 1)
    meta = {"image_shape": [1, 28, 28], "dataset": {"root": "mnist/", "fingerprints": [fingerprint(images)]}}
    with warnings.catch_warnings():
        warnings.simplefilter("error", CapsganWarning)  # the same images: no warning at all
        assert check_classifier(meta, cfg, "c.safetensors", images) is True
    other = {**meta, "dataset": {"root": "mnist/", "fingerprints": ["0" * 16]}}
    with pytest.warns(CapsganWarning, match=r"trained on mnist/, not on this run's images \(data.name=synthetic\)"):
        assert check_classifier(other, cfg, "c.safetensors", images) is False
    old = {**meta, "dataset": {"root": "mnist/"}}  # written before fingerprints were recorded
    with pytest.warns(CapsganWarning, match="does not record which images"):
        assert check_classifier(old, cfg, "c.safetensors", images) is None
    with pytest.raises(DataError, match=r"takes \[1, 32, 32\].*makes \[1, 28, 28\]"):
        check_classifier({**meta, "image_shape": [1, 32, 32]}, cfg, "c.safetensors", images)


def test_single_split_folder_holds_out_a_seeded_disjoint_set(mnist_dir: Path):
    tx, ty, vx, vy, info = labelled_split(mnist_dir, 2000, seed=0)
    assert (len(tx), len(vx)) == (8000, 2000) and len(ty) == 8000 and len(vy) == 2000
    again = labelled_split(mnist_dir, 2000, seed=0)
    assert torch.equal(vx, again[2]) and torch.equal(vy, again[3])
    # disjoint: no held-out digit appears among the training digits
    train_rows = {bytes(r) for r in tx.flatten(1).numpy()}
    assert not any(bytes(r) in train_rows for r in vx.flatten(1).numpy()[:200])
    assert "8000 train / 2000 held out" in info["split"]


# --- On real digits, in a briefly trained LeNet's feature space -------------------------------

_SUITE: dict[str, object] = {}


@pytest.fixture
def mnist_suite(mnist_classifier: Path, mnist_dir: Path) -> tuple[MetricSuite, torch.Tensor]:
    """Metrics with 2,000 real digits as reference, and 2,000 other real digits."""
    if not _SUITE:
        clf, _ = load_classifier(mnist_classifier)
        x = read_idx_images(mnist_dir / "t10k-images-idx3-ubyte.gz").float() / 127.5 - 1
        perm = torch.randperm(len(x), generator=torch.Generator().manual_seed(0))
        suite, fid_only = MetricSuite(clf, SETTINGS), MetricSuite(clf, EvalConfig(metrics=["fid"]))
        suite.set_real(x[perm[:2000]])
        fid_only.set_real(x[perm[:2000]])
        _SUITE.update(suite=suite, fid=fid_only, other=x[perm[2000:4000]])
    return _SUITE["suite"], _SUITE["other"]


@pytest.fixture
def mnist_fid(mnist_suite) -> tuple[MetricSuite, torch.Tensor]:
    """Like mnist_suite, FID only (cheaper for the sweeps)."""
    return _SUITE["fid"], _SUITE["other"]


def test_classifier_trains_to_well_above_chance_and_reloads_weights_only(mnist_classifier: Path, mnist_dir: Path):
    meta = json.loads(mnist_classifier.with_suffix(".json").read_text())
    assert meta["arch"] == "lenet" and meta["dataset"]["n_test"] == 2000
    assert meta["accuracy"] > 0.85, meta  # chance is 0.10; 1 epoch on 8,000 digits gives ~0.94
    clf, _ = load_classifier(mnist_classifier)
    _, _, vx, vy, _ = labelled_split(mnist_dir, 2000, seed=0)
    assert accuracy(clf, vx, vy) == pytest.approx(meta["accuracy"])


def test_fid_of_real_split_is_near_zero_and_far_below_noise(mnist_suite):
    suite, other = mnist_suite
    real = suite.score(other)
    noise = suite.score(torch.rand(2000, 1, 28, 28, generator=torch.Generator().manual_seed(1)) * 2 - 1)
    assert real["fid"] < 10 and real["fid"] < 0.02 * noise["fid"], (real, noise)
    assert abs(real["kid"]) < 0.01 * noise["kid"], (real, noise)
    assert real["precision"] > 0.8 and real["recall"] > 0.8 and noise["recall"] < 0.05
    assert real["is"] > 5 > noise["is"]


def test_fid_rises_monotonically_with_gaussian_noise(mnist_fid):
    suite, other = mnist_fid
    g = torch.Generator().manual_seed(2)
    fids = [suite.score((other + s * torch.randn(other.shape, generator=g)).clamp(-1, 1))["fid"]
            for s in (0.0, 0.1, 0.2, 0.4, 0.8)]
    assert all(a < b for a, b in zip(fids, fids[1:])), fids


def test_fid_rises_monotonically_with_blur(mnist_fid):
    suite, other = mnist_fid
    fids = [suite.score(other)["fid"]] + [suite.score(TF.gaussian_blur(other, 7, s))["fid"] for s in (0.5, 1.0, 2.0)]
    assert all(a < b for a, b in zip(fids, fids[1:])), fids


def test_capsnet_starts_unsaturated_and_its_loss_falls():
    torch.manual_seed(0)
    x = torch.rand(32, 1, 28, 28) * 2 - 1
    # Paper size: class capsules must start short, or the margin loss sits at 9 * 0.5 * 0.9^2.
    lengths = CapsNet()(x[:4]).exp()
    assert lengths.max() < 0.1, lengths  # the GAN-style init gave ~0.5 here, ~1 on digits
    small = CapsNet(conv1_channels=16, primary_channels=4)
    y = torch.arange(32) % 10
    opt = torch.optim.Adam(small.parameters(), lr=1e-3)
    losses = []
    for _ in range(15):
        loss, _ = small.training_loss(x, y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.7 * losses[0], losses
