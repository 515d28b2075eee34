"""The generative adversarial metric (GAM) of Im et al. 2016, "Generating images with recurrent
adversarial networks", sec. 4: two trained GANs M1 = (G1, D1) and M2 = (G2, D2) swap discriminators.

    r_test    = err(D1; real test images) / err(D2; real test images)
    r_samples = err(D1; G2's samples)     / err(D2; G1's samples)

err is a D's classification error: the share of real images it calls fake (D(x) < 1/2, logit < 0)
or of generated images it calls real (logit >= 0). M1 wins when r_samples < 1 (G1 fools D2 more
often than G2 fools D1), M2 when r_samples > 1; the battle only counts when r_test is close to 1,
i.e. both D's judge real images about equally well.

A D with batch norm judges as it was trained: with each batch's own statistics, every batch of one
kind (all real, or all one G's samples). Its running averages are no use here: training forwards
real and generated batches apart, so they average the two kinds, and in eval mode that D called
most real digits fake (93% in one MNIST run).
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from capsgan_dist.metrics.evaluate import generate


@contextmanager
def batch_statistics(model: nn.Module) -> Iterator[None]:
    """Within the block, `model`'s batch-norm layers normalise with each batch's statistics, as in
    training, and leave their running averages and batch count as they were; other layers keep their
    mode. (In training mode a batch norm that does not track running statistics neither reads nor
    updates them.)"""
    norms = [m for m in model.modules() if isinstance(m, _BatchNorm)]
    saved = [(m.training, m.track_running_stats) for m in norms]
    for m in norms:
        m.train()
        m.track_running_stats = False
    try:
        yield
    finally:
        for m, (training, tracking) in zip(norms, saved):
            m.train(training)
            m.track_running_stats = tracking


def error_rate(D: nn.Module, images: torch.Tensor, real: bool, batch: int = 500) -> float:
    """Share of `images` that D misclassifies (real ones called fake, or generated ones called real).
    `images` are of one kind, so batch norm, if D has it, sees batches of one kind as in training."""
    wrong = 0
    with torch.no_grad(), batch_statistics(D):
        for i in range(0, len(images), batch):
            logits = D(images[i: i + batch]).float().reshape(-1)
            wrong += int((logits < 0).sum() if real else (logits >= 0).sum())
    return wrong / len(images)


def ratio(a: float, b: float) -> float:
    """a / b with 0/0 = 1 (equal, error-free) and x/0 = inf."""
    if a == b:
        return 1.0
    return math.inf if b == 0 else a / b


def battle(G1: nn.Module, D1: nn.Module, G2: nn.Module, D2: nn.Module, test_images: torch.Tensor,
           n: int, seed: int = 0, tolerance: float = 0.2, batch: int = 500) -> dict:
    """One GAM battle of M1 = (G1, D1) against M2 = (G2, D2); every model in eval mode (a D's batch norm
    with batch statistics: `error_rate`), one process.

    `test_images`: real images in [-1, 1] that neither D should have been trained on; `n` samples
    are drawn from each G with noise fixed by `seed`. The winner is "m1", "m2", "tie" (r_samples = 1)
    or "invalid" when |r_test - 1| > `tolerance`.
    """
    gen = torch.Generator().manual_seed(seed)
    z1 = torch.randn(n, G1.latent_dim, generator=gen)
    z2 = torch.randn(n, G2.latent_dim, generator=gen)
    with torch.no_grad():
        s1, s2 = generate(G1, z1, batch), generate(G2, z2, batch)
    err = {
        "test_d1": error_rate(D1, test_images, real=True, batch=batch),
        "test_d2": error_rate(D2, test_images, real=True, batch=batch),
        "d1_on_g2": error_rate(D1, s2, real=False, batch=batch),
        "d2_on_g1": error_rate(D2, s1, real=False, batch=batch),
    }
    r_test = ratio(err["test_d1"], err["test_d2"])
    r_samples = ratio(err["d1_on_g2"], err["d2_on_g1"])
    if not abs(r_test - 1.0) <= tolerance:
        winner = "invalid"
    else:
        winner = "m1" if r_samples < 1 else "m2" if r_samples > 1 else "tie"
    return {"errors": err, "r_test": _finite_or_none(r_test), "r_samples": _finite_or_none(r_samples),
            "winner": winner, "n_samples": n, "n_test": len(test_images)}


def _finite_or_none(x: float) -> float | None:
    return x if math.isfinite(x) else None  # JSON has no infinity; the error rates tell the story


__all__ = ["batch_statistics", "battle", "error_rate", "ratio"]
