"""GAN losses and D accuracy against values computed by hand."""

from __future__ import annotations

import math

import pytest
import torch

from capsgan_dist.config import LossConfig
from capsgan_dist.losses import d_accuracy, d_loss, g_loss, margin_loss


def sig(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))


def test_margin_loss_hand_computed():
    lengths = torch.tensor([[0.95, 0.3], [0.5, 0.05]])
    targets = torch.tensor([[1, 0], [0, 1]])
    # sample 0: present 0.95 > m+ -> 0; absent 0.5 * (0.3 - 0.1)^2 = 0.02
    # sample 1: absent 0.5 * (0.5 - 0.1)^2 = 0.08; present (0.9 - 0.05)^2 = 0.7225
    torch.testing.assert_close(margin_loss(lengths, targets), torch.tensor([0.02, 0.8025]))
    # other margins and lambda: m+ 0.8, m- 0.2, lam 1
    # sample 0: 0 + (0.3 - 0.2)^2 = 0.01; sample 1: (0.5 - 0.2)^2 + (0.8 - 0.05)^2 = 0.09 + 0.5625
    torch.testing.assert_close(margin_loss(lengths, targets, m_pos=0.8, m_neg=0.2, lam=1.0),
                               torch.tensor([0.01, 0.6525]))


def test_margin_loss_is_zero_inside_the_margins_and_per_sample():
    lengths = torch.tensor([[0.92, 0.08, 0.0], [1.0, 0.1, 0.05]])
    targets = torch.tensor([[1.0, 0.0, 0.0], [1.0, 0.0, 0.0]])
    out = margin_loss(lengths, targets)
    assert out.shape == (2,)
    assert torch.equal(out, torch.zeros(2))


def test_margin_loss_shape_mismatch():
    with pytest.raises(ValueError, match="differ"):
        margin_loss(torch.zeros(2, 3), torch.zeros(2, 2))


REAL, FAKE = [0.0, 2.0], [-1.0, 0.5, 3.0]


def _bce(p: float, t: float) -> float:
    return -(t * math.log(p) + (1 - t) * math.log(1 - p))


def test_bce_d_loss_hand_computed():
    want = (sum(_bce(sig(x), 1) for x in REAL) + sum(_bce(sig(x), 0) for x in FAKE)) / 5
    got = d_loss(torch.tensor(REAL), torch.tensor(FAKE), LossConfig(gan="bce"))
    assert got.item() == pytest.approx(want, rel=1e-6)


def test_bce_g_losses_hand_computed():
    ns = sum(-math.log(sig(x)) for x in FAKE) / 3
    mm = sum(math.log(1 - sig(x)) for x in FAKE) / 3
    fake = torch.tensor(FAKE)
    assert g_loss(fake, LossConfig(gan="bce")).item() == pytest.approx(ns, rel=1e-6)
    assert g_loss(fake, LossConfig(gan="bce", generator="minimax")).item() == pytest.approx(mm, rel=1e-6)


def test_margin_d_and_g_losses_hand_computed():
    cfg = LossConfig(gan="margin")  # m+ 0.9, m- 0.1, lam 0.5, applied to D's probability
    real_terms = [max(0.0, 0.9 - sig(x)) ** 2 for x in REAL]
    fake_terms = [0.5 * max(0.0, sig(x) - 0.1) ** 2 for x in FAKE]
    want_d = (sum(real_terms) + sum(fake_terms)) / 5
    assert d_loss(torch.tensor(REAL), torch.tensor(FAKE), cfg).item() == pytest.approx(want_d, rel=1e-6)
    want_ns = sum(max(0.0, 0.9 - sig(x)) ** 2 for x in FAKE) / 3
    assert g_loss(torch.tensor(FAKE), cfg).item() == pytest.approx(want_ns, rel=1e-6)
    want_mm = -sum(fake_terms) / 3
    mm = LossConfig(gan="margin", generator="minimax")
    assert g_loss(torch.tensor(FAKE), mm).item() == pytest.approx(want_mm, rel=1e-6)


@pytest.mark.parametrize("gan", ["bce", "margin"])
@pytest.mark.parametrize("generator", ["nonsaturating", "minimax"])
def test_g_loss_gradient_pushes_d_of_fakes_up(gan, generator):
    """Both generator forms decrease when D(G(z)) rises: their gradient w.r.t. the logit is < 0."""
    logits = torch.tensor([-1.0, 0.3, 0.8], requires_grad=True)  # all below m+ for margin
    g_loss(logits, LossConfig(gan=gan, generator=generator)).backward()
    assert (logits.grad < 0).all()


def test_d_loss_weights_real_and_fake_by_count():
    cfg = LossConfig()
    real, fake = torch.tensor([1.0]), torch.tensor([-2.0, 0.0, 4.0])
    want = (_bce(sig(1.0), 1) + _bce(sig(-2.0), 0) + _bce(0.5, 0) + _bce(sig(4.0), 0)) / 4
    assert d_loss(real, fake, cfg).item() == pytest.approx(want, rel=1e-6)


def test_bce_is_finite_for_extreme_logits():
    big = torch.tensor([200.0, -200.0])
    assert torch.isfinite(d_loss(big, -big, LossConfig()))
    assert torch.isfinite(g_loss(-big, LossConfig()))
    assert torch.isfinite(g_loss(big, LossConfig(generator="minimax")))


def test_d_accuracy():
    # real right when logit > 0 (D(x) > 0.5): 2 of 3; fake right when logit < 0: 1 of 2
    acc = d_accuracy(torch.tensor([1.0, -1.0, 0.5]), torch.tensor([-2.0, 3.0]))
    assert acc.item() == pytest.approx(3 / 5)
    assert d_accuracy(torch.tensor([0.0]), torch.tensor([0.0])).item() == 0.0  # 0.5 is undecided
