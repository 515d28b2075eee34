"""Semi-supervised mode: the three splits, the loss pieces by hand, the K-logit heads, the batch streams."""

from __future__ import annotations

import math

import pytest
import torch
from conftest import FASHION_DIR, REPO

from capsgan_dist import losses
from capsgan_dist.config import DataConfig, LossConfig, load_config, model_hash
from capsgan_dist.data import balanced_subset, load_splits
from capsgan_dist.errors import ConfigError, DataError
from capsgan_dist.metrics.classifier import labelled_split
from capsgan_dist.models import CapsuleClassDiscriminator, ConvClassDiscriminator, build_discriminator
from capsgan_dist.models.capsules import capsule_lengths, squash
from capsgan_dist.models.class_discriminators import length_logits
from capsgan_dist.semisup import stream_indices

SEMISUP_DEBUG = REPO / "configs" / "semisup_debug.yaml"
SYNTH = DataConfig(name="synthetic", synthetic_size=600, labels_per_class=5, test_size=100)


# ---------------------------------------------------------------------------------------------
# Splits


def _labeled_src(s) -> torch.Tensor:
    return s.train_src[s.labeled_pos]


def test_labeled_subset_is_balanced_seeded_and_disjoint_from_the_test_split():
    s0, s0b, s1 = load_splits(SYNTH, 0), load_splits(SYNTH, 0), load_splits(SYNTH, 1)
    assert torch.bincount(s0.labeled_y, minlength=10).tolist() == [5] * 10  # balanced
    assert torch.equal(_labeled_src(s0), _labeled_src(s0b))  # seeded: same seed, same subset
    assert not torch.equal(_labeled_src(s0), _labeled_src(s1))  # another seed, another subset
    assert torch.equal(s0.test_src, s1.test_src)  # the test split does not move with the run's seed
    for s in (s0, s1):
        lab, test = set(_labeled_src(s).tolist()), set(s.test_src.tolist())
        unl = set(s.train_src.tolist()) - lab
        assert not lab & test and not unl & test  # never trained on
        assert len(lab) + len(unl) + len(test) == 600 and len(s.unlabeled_x) == len(unl) == 600 - 100 - 50
        assert len(s.test_x) == 100


def test_mnist_test_split_is_the_classifiers_and_so_is_the_labeled_subset(mnist_dir, tmp_path):
    cfg = DataConfig(name="idx", root=str(mnist_dir), labels_per_class=10, cache_dir=str(tmp_path))
    s = load_splits(cfg, seed=3)
    train_x, train_y, test_x, test_y, _ = labelled_split(mnist_dir, 2000, 0)  # `capsgan classifier train` split
    assert torch.equal(s.test_x, test_x) and torch.equal(s.test_y, test_y)
    assert len(s.labeled_x) == 100 and len(s.unlabeled_x) == 7900
    # `classifier train --labels-per-class 10 --seed 3 --split-seed 0` picks the same labeled images.
    keep = balanced_subset(train_y, 10, 3)[0]
    assert torch.equal(s.labeled_x, train_x[keep]) and torch.equal(s.labeled_y, train_y[keep])
    assert not set(_labeled_src(s).tolist()) & set(s.test_src.tolist())


def test_fashion_uses_its_official_test_split(tmp_path):
    if not (FASHION_DIR / "train-images-idx3-ubyte.gz").is_file():
        pytest.skip(f"Fashion-MNIST not found at {FASHION_DIR}")
    s = load_splits(DataConfig(name="idx", root=str(FASHION_DIR), labels_per_class=10, cache_dir=str(tmp_path)),
                    seed=0)
    assert s.test_src is None and len(s.test_x) == 10_000  # the t10k file
    assert len(s.labeled_x) == 100 and len(s.unlabeled_x) == 59_900


def test_too_many_labels_is_a_data_error_naming_the_key():
    with pytest.raises(DataError, match=r"data.labels_per_class=100: class \d has only"):
        load_splits(DataConfig(name="synthetic", synthetic_size=600, labels_per_class=100, test_size=100), 0)
    with pytest.raises(DataError, match="data.test_size=600"):
        load_splits(DataConfig(name="synthetic", synthetic_size=600, labels_per_class=1, test_size=600), 0)


def test_a_hold_out_that_leaves_too_few_training_images_names_test_size():
    with pytest.raises(DataError, match=r"data.test_size=595 leaves 5 of .* use a smaller data.test_size") as e:
        load_splits(DataConfig(name="synthetic", synthetic_size=600, labels_per_class=10, test_size=595), 0)
    assert "use data.labels_per_class<=" not in str(e.value)


# ---------------------------------------------------------------------------------------------
# Loss pieces against hand computations (float64, plain math)


def _lse(row: list[float]) -> float:
    return math.log(sum(math.exp(v) for v in row))


def _softplus(x: float) -> float:
    return math.log1p(math.exp(x))


LAB = [[2.0, 0.0, -1.0], [0.5, 1.5, 0.0]]
LABELS = [0, 2]
UNL = [[1.0, 1.0, 1.0]]
FAKE = [[-2.0, -3.0, 0.0], [0.0, 0.0, 0.0]]


def _t(rows: list[list[float]]) -> torch.Tensor:
    return torch.tensor(rows, dtype=torch.float64)


def test_semisup_d_loss_matches_a_hand_computation():
    cfg = LossConfig(unsup_weight=0.7)
    # Cross-entropy: -l_y + logsumexp(l), averaged.
    ce = sum(_lse(r) - r[y] for r, y in zip(LAB, LABELS)) / 2
    # D(x) = Z/(Z+1) with Z = sum exp(l_k): -log D(x) = softplus(-log Z), -log(1 - D(x)) = softplus(log Z).
    real_terms = [_softplus(-_lse(r)) for r in UNL]
    fake_terms = [_softplus(_lse(r)) for r in FAKE]
    unsup = (sum(real_terms) + sum(fake_terms)) / 3  # 1 unlabeled + 2 fakes, weighted by count
    loss, parts = losses.semisup_d_loss(_t(LAB), torch.tensor(LABELS), _t(UNL), _t(FAKE), cfg)
    assert parts["loss_sup"].item() == pytest.approx(ce, rel=1e-6)
    assert parts["loss_unsup"].item() == pytest.approx(unsup, rel=1e-6)
    assert loss.item() == pytest.approx(ce + 0.7 * unsup, rel=1e-6)
    # Z of the all-zero fake row is 3: D = 3/4 exactly.
    assert torch.sigmoid(losses.real_logit(_t(FAKE)))[1].item() == pytest.approx(0.75, rel=1e-6)
    # unsup_weight=0 / no unlabeled batch: the supervised part alone.
    sup_only, parts = losses.semisup_d_loss(_t(LAB), torch.tensor(LABELS), None, None, cfg)
    assert sup_only.item() == pytest.approx(ce, rel=1e-6) and set(parts) == {"loss_sup"}


def test_margin_supervised_loss_reads_sigmoid_of_the_logits_as_lengths():
    cfg = LossConfig(supervised="margin")
    total = 0.0
    for r, y in zip(LAB, LABELS):
        for k, v in enumerate(r):
            length = 1 / (1 + math.exp(-v))
            total += max(0.0, 0.9 - length) ** 2 if k == y else 0.5 * max(0.0, length - 0.1) ** 2
    got = losses.supervised_loss(_t(LAB), torch.tensor(LABELS), cfg)
    assert got.item() == pytest.approx(total / 2, rel=1e-6)


def test_generator_losses_match_a_hand_computation():
    # Non-saturating on log Z: -log D(G(z)) = softplus(-log Z).
    want = sum(_softplus(-_lse(r)) for r in FAKE) / 2
    assert losses.g_loss(losses.real_logit(_t(FAKE)), LossConfig()).item() == pytest.approx(want, rel=1e-6)
    # Feature matching: mean over features of (mean real - mean fake)^2.
    real, fake = [[1.0, 2.0], [3.0, 0.0]], [[0.0, 0.0], [1.0, 1.0]]
    want = ((2.0 - 0.5) ** 2 + (1.0 - 0.5) ** 2) / 2
    assert losses.feature_matching_loss(_t(real), _t(fake)).item() == pytest.approx(want, rel=1e-12)
    assert losses.class_accuracy(_t(LAB), torch.tensor(LABELS)).item() == 0.5  # row 0 right, row 1 wrong


def test_feature_matching_moves_only_the_generated_side():
    real = torch.randn(4, 3, requires_grad=True)
    fake = torch.randn(4, 3, requires_grad=True)
    losses.feature_matching_loss(real, fake).backward()
    assert real.grad is None and fake.grad is not None and fake.grad.abs().sum() > 0


# ---------------------------------------------------------------------------------------------
# The K-logit heads


def test_capsule_lengths_become_logits_whose_sigmoid_is_the_length():
    s = torch.randn(5, 10, 16, dtype=torch.float64) * torch.logspace(-1, 1, 10, dtype=torch.float64).view(1, 10, 1)
    v = squash(s)
    logits = length_logits(v).double()
    torch.testing.assert_close(torch.sigmoid(logits), capsule_lengths(v), rtol=1e-5, atol=1e-6)
    # logit(|v|) of a squashed capsule is log |s|^2 (docs/design.md): fp32 within rounding.
    torch.testing.assert_close(logits, torch.log((s * s).sum(-1)), rtol=1e-4, atol=1e-4)


def test_both_discriminators_give_k_logits_and_their_features():
    cfg = load_config(SEMISUP_DEBUG)
    x = torch.randn(3, 1, 28, 28)
    for kind, cls in (("capsule", CapsuleClassDiscriminator), ("conv", ConvClassDiscriminator)):
        torch.manual_seed(0)
        D = build_discriminator(load_config(SEMISUP_DEBUG, [f"model.discriminator={kind}"]))
        assert isinstance(D, cls)
        feats, logits = D.features_and_logits(x)
        assert logits.shape == (3, 10) and feats.shape[0] == 3 and feats.ndim == 2
        torch.testing.assert_close(D(x), logits)
        if kind == "capsule":  # feature matching reads the primary capsules, the routed layer's input
            torch.testing.assert_close(feats, D.primary(D.act1(D.conv1(x))).flatten(1))
    gan = load_config(SEMISUP_DEBUG, ["data.labels_per_class=0", "eval.every=0", "loss.generator=nonsaturating"])
    assert model_hash(cfg) != model_hash(gan)  # a GAN checkpoint never resumes as a K-logit D


def test_capsule_class_d_bounds_its_primary_grid_as_the_gan_d_does():
    strides = {}
    for size in (28, 64, 128):
        cfg = load_config(SEMISUP_DEBUG, [f"data.image_size={size}", "data.channels=3"])
        D = build_discriminator(cfg)
        gan = build_discriminator(load_config(SEMISUP_DEBUG, [f"data.image_size={size}", "data.channels=3",
                                                              "data.labels_per_class=0", "eval.every=0",
                                                              "loss.generator=nonsaturating"]))
        assert D.conv1.stride == gan.conv1.stride
        n_in = D.caps.weight.shape[0]
        assert n_in == gan.caps.weight.shape[0] <= cfg.model.primary_channels * 12 * 12  # caps_max_grid 12
        assert D(torch.randn(2, 3, size, size)).shape == (2, 10)
        strides[size] = D.conv1.stride[0]
    assert strides[28] == 1 and strides[128] > strides[64] > 1  # the paper's stride at 28 px only


# ---------------------------------------------------------------------------------------------
# Batch streams and config checks


def test_stream_batches_cover_each_item_once_per_epoch_across_ranks():
    n, batch, world = 12, 3, 2  # 2 steps of 2 ranks x 3 = one epoch
    epoch0 = torch.cat([stream_indices(n, batch, k, 7, 11, world, r) for k in range(2) for r in range(world)])
    assert sorted(epoch0.tolist()) == list(range(n))
    assert torch.equal(stream_indices(n, batch, 5, 7, 11, world, 1), stream_indices(n, batch, 5, 7, 11, world, 1))
    # A batch that straddles two epochs (n = 5, batch 3): positions 3, 4 | 0 of the next permutation.
    straddle = stream_indices(5, 3, 1, 7, 11)
    assert len(set(straddle[:2].tolist())) == 2 and 0 <= straddle[2] < 5


@pytest.mark.parametrize("overrides, match", [
    (["model.n_caps=4"], "model.n_caps=4: semi-supervised training reads one routed capsule per class"),
    (["data.labels_per_class=0", "eval.every=0"], "loss.generator=feature_matching is a semi-supervised option"),
    (["loss.supervised=hinge"], "loss.supervised='hinge' is not allowed"),
    (["loss.unsup_weight=-1"], "loss.unsup_weight=-1"),
    (["perf.cuda_graphs=true"], "perf.cuda_graphs=true does not capture the semi-supervised steps"),
    (["model.routing=attention"], "model.routing=attention: the semi-supervised capsule D reads class capsule"),
])
def test_bad_semisup_configs_fail_naming_the_key(overrides, match):
    with pytest.raises(ConfigError, match=match):
        load_config(SEMISUP_DEBUG, overrides)


def test_eval_every_needs_a_classifier_only_outside_semisup():
    assert load_config(SEMISUP_DEBUG).eval.every == 10  # no classifier: D is scored itself
    with pytest.raises(ConfigError, match="eval.every>0 needs eval.classifier"):
        load_config(REPO / "configs" / "debug.yaml", ["eval.every=10"])


# ---------------------------------------------------------------------------------------------
# The sweep metric (imports kept here: the sweep modules may move into a package)


def test_test_error_is_a_sweep_metric_only_for_semisup_trials_that_evaluate(tmp_path):
    import yaml

    from capsgan_dist.sweep.config import TEST_ERROR_METRIC, load_sweep_config, resolve_metric
    from capsgan_dist.sweep.run import resolve_base

    def sweep(*overrides: str):
        path = tmp_path / "s.yaml"
        path.write_text(yaml.safe_dump({"base": str(SEMISUP_DEBUG), "metric": TEST_ERROR_METRIC,
                                        "overrides": list(overrides)}))
        s = load_sweep_config(path)
        return resolve_metric(s, resolve_base(s))

    assert sweep().metric == "eval/test_error" and sweep().mode == "min"  # no classifier needed
    with pytest.raises(ConfigError, match="needs semi-supervised trials that evaluate"):
        sweep("eval.every=0")
    with pytest.raises(ConfigError, match="needs semi-supervised trials that evaluate"):
        sweep("data.labels_per_class=0", "loss.generator=nonsaturating", "eval.every=0")
    s = load_sweep_config(REPO / "configs" / "sweep_semisup.yaml")
    assert (s.metric, s.mode) == ("eval/test_error", "min")
