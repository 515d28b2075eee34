"""The generative adversarial metric on cases whose winner is known by construction."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from capsgan_dist.metrics.gam import battle, error_rate, ratio


def _smooth_images(n: int, seed: int) -> torch.Tensor:
    """'Real' images: smooth blobs (low total variation), (n, 1, 16, 16) in [-1, 1]."""
    g = torch.Generator().manual_seed(seed)
    low = torch.rand(n, 1, 4, 4, generator=g) * 2 - 1
    return nn.functional.interpolate(low, size=16, mode="bilinear", align_corners=False)


class TVDiscriminator(nn.Module):
    """Calls an image real (logit > 0) when its mean horizontal total variation is below `threshold`."""

    def __init__(self, threshold: float) -> None:
        super().__init__()
        self.threshold = threshold

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tv = (x[..., 1:] - x[..., :-1]).abs().mean(dim=(1, 2, 3))
        return (self.threshold - tv).unsqueeze(1)


class PoolGenerator(nn.Module):
    """Returns its pool's images in order, blended with uniform noise by `noise` (ignores z's values)."""

    latent_dim = 8

    def __init__(self, pool: torch.Tensor, noise: float) -> None:
        super().__init__()
        self.pool, self.noise, self.served = pool, noise, 0

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        i = torch.arange(self.served, self.served + len(z)) % len(self.pool)
        self.served += len(z)
        g = torch.Generator().manual_seed(7)
        rnd = torch.rand(len(self.pool), *self.pool.shape[1:], generator=g) * 2 - 1
        return ((1 - self.noise) * self.pool + self.noise * rnd)[i]


def test_generator_of_real_held_out_images_beats_noise_generator():
    held_out, test = _smooth_images(200, 1), _smooth_images(200, 2)
    D = TVDiscriminator(0.3)
    assert error_rate(D, test, real=True) == 0.0
    assert error_rate(D, torch.rand(50, 1, 16, 16) * 2 - 1, real=False) == 0.0
    real_g, noise_g = PoolGenerator(held_out, 0.0), PoolGenerator(held_out, 1.0)
    r = battle(real_g, D, noise_g, TVDiscriminator(0.3), test, n=100)
    assert r["r_test"] == 1.0  # same D: equally good on real images, the battle counts
    assert r["errors"]["d2_on_g1"] == 1.0 and r["errors"]["d1_on_g2"] == 0.0
    assert r["r_samples"] == 0.0 and r["winner"] == "m1"
    swapped = battle(PoolGenerator(held_out, 1.0), TVDiscriminator(0.3), PoolGenerator(held_out, 0.0), D, test,
                     n=100)
    assert swapped["winner"] == "m2" and swapped["r_samples"] is None  # x/0: infinite, stored as null


def test_swapping_the_pair_inverts_both_ratios():
    test, pool = _smooth_images(300, 3), _smooth_images(300, 4)
    # Two D's with different thresholds and two partly noisy G's: every error rate strictly between 0 and 1.
    m1 = (PoolGenerator(pool, 0.3), TVDiscriminator(0.20))
    m2 = (PoolGenerator(pool, 0.2), TVDiscriminator(0.22))
    test = torch.cat([test, PoolGenerator(pool, 0.3)(torch.zeros(100, 8))])  # some hard real images
    fwd = battle(*m1, *m2, test, n=300, tolerance=10.0)
    m1[0].served = m2[0].served = 0
    back = battle(*m2, *m1, test, n=300, tolerance=10.0)
    for k in ("r_test", "r_samples"):
        assert fwd[k] not in (None, 0.0, 1.0)
        assert fwd[k] * back[k] == pytest.approx(1.0)
    assert {fwd["winner"], back["winner"]} == {"m1", "m2"}  # the same model wins from either side


def test_battle_is_invalid_when_the_discriminators_disagree_on_real_images():
    test = torch.cat([_smooth_images(100, 5), torch.rand(100, 1, 16, 16) * 2 - 1])  # half look like noise
    lax, strict = TVDiscriminator(10.0), TVDiscriminator(0.3)  # lax calls everything real
    g = PoolGenerator(_smooth_images(50, 6), 0.0)
    r = battle(g, lax, g, strict, test, n=50, tolerance=0.2)
    assert r["errors"]["test_d1"] == 0.0 and r["errors"]["test_d2"] == 0.5
    assert r["winner"] == "invalid"


def test_ratio_edge_cases():
    assert ratio(0.0, 0.0) == 1.0 and ratio(0.2, 0.1) == 2.0 and math.isinf(ratio(0.1, 0.0))


class BatchNormD(nn.Module):
    """Batch norm over the pixels, then logit = 2 - mean |normalised pixel|: real for any batch that is
    normalised by its own statistics (mean |z| ~ 0.8), fake when the running averages are far off."""

    def __init__(self) -> None:
        super().__init__()
        self.norm = nn.BatchNorm2d(1, affine=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return 2 - self.norm(x).abs().mean(dim=(1, 2, 3))


def test_a_batch_norm_d_judges_with_each_batchs_statistics_and_keeps_its_running_averages():
    D = BatchNormD().eval()
    D.norm.running_mean.fill_(100.0)  # averages of other images (training mixes real and fake batches)
    real = _smooth_images(120, 8)
    with torch.no_grad():
        assert (D(real) < 0).all()  # eval mode would call every real image fake
    assert error_rate(D, real, real=True, batch=50) == 0.0  # batches of 50, 50, 20: each its own statistics
    assert not D.training and not D.norm.training and D.norm.momentum == 0.1
    assert D.norm.running_mean.item() == 100.0 and D.norm.running_var.item() == 1.0
    assert D.norm.num_batches_tracked.item() == 0  # three batches judged, none counted as training
