"""GAN objectives on discriminator logits: BCE (the paper) and the capsule margin loss.

D returns logits; its probability is sigmoid(logit). BCE uses the log-sigmoid form (autocast-safe);
the margin loss is applied to the probability, reading it as a 1-capsule "length".
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from capsgan_dist.config import LossConfig


def margin_loss(lengths: torch.Tensor, targets: torch.Tensor, m_pos: float = 0.9,
                m_neg: float = 0.1, lam: float = 0.5) -> torch.Tensor:
    """Sabour et al. eq. 4: sum_k T_k max(0, m+ - |v_k|)^2 + lam (1 - T_k) max(0, |v_k| - m-)^2, shape (B,)."""
    if lengths.shape != targets.shape:
        raise ValueError(f"lengths {tuple(lengths.shape)} and targets {tuple(targets.shape)} differ")
    targets = targets.to(lengths.dtype)
    present = targets * F.relu(m_pos - lengths) ** 2
    absent = lam * (1.0 - targets) * F.relu(lengths - m_neg) ** 2
    return (present + absent).sum(dim=-1)


def _target_loss(logits: torch.Tensor, target: float, cfg: LossConfig) -> torch.Tensor:
    """Mean loss for classifying every logit as `target` (1 real, 0 fake)."""
    logits = logits.float()  # losses in fp32 even under autocast
    if cfg.gan == "bce":
        return F.binary_cross_entropy_with_logits(logits, torch.full_like(logits, target))
    p = torch.sigmoid(logits).unsqueeze(-1)  # (B, 1): D's probability as a capsule length
    t = torch.full_like(p, target)
    return margin_loss(p, t, cfg.m_pos, cfg.m_neg, cfg.lam).mean()


def d_loss(logits_real: torch.Tensor, logits_fake: torch.Tensor, cfg: LossConfig) -> torch.Tensor:
    """Discriminator loss over one batch of real and fake, weighted by their counts."""
    n_r, n_f = logits_real.numel(), logits_fake.numel()
    real, fake = _target_loss(logits_real, 1.0, cfg), _target_loss(logits_fake, 0.0, cfg)
    return (n_r * real + n_f * fake) / (n_r + n_f)


def g_loss(logits_fake: torch.Tensor, cfg: LossConfig) -> torch.Tensor:
    """Generator loss: non-saturating (fakes as real) or the paper's minimax log(1 - D(G(z)))."""
    if cfg.generator == "nonsaturating":
        return _target_loss(logits_fake, 1.0, cfg)
    return -_target_loss(logits_fake, 0.0, cfg)  # minimise minus D's loss on fakes


def d_accuracy(logits_real: torch.Tensor, logits_fake: torch.Tensor) -> torch.Tensor:
    """Fraction of the batch D classifies right (real: D(x) > 0.5, fake: D(G(z)) < 0.5)."""
    right = (logits_real > 0).sum() + (logits_fake < 0).sum()
    return right.float() / (logits_real.numel() + logits_fake.numel())
