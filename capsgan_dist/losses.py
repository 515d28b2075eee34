"""GAN objectives on discriminator logits: BCE (the paper) and the capsule margin loss.

D returns logits; its probability is sigmoid(logit). BCE uses the log-sigmoid form (autocast-safe);
the margin loss is applied to the probability, reading it as a 1-capsule "length".

Semi-supervised mode (Salimans et al. 2016, sec. 5): D returns K class logits l_k; labeled images
get a classification loss on them, and unlabeled real and generated images the GAN loss above on
D(x) = Z(x) / (Z(x) + 1), Z = sum_k exp(l_k), i.e. on the single logit log Z(x).
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


# ---------------------------------------------------------------------------------------------
# Semi-supervised (K class logits)


def real_logit(class_logits: torch.Tensor) -> torch.Tensor:
    """log Z(x) = logsumexp_k l_k (B,): sigmoid of it is D(x) = Z / (Z + 1) (Salimans et al. 2016, sec. 5)."""
    return torch.logsumexp(class_logits.float(), dim=-1)


def supervised_loss(class_logits: torch.Tensor, labels: torch.Tensor, cfg: LossConfig) -> torch.Tensor:
    """Mean loss of labeled images: cross-entropy over the K logits, or the margin loss on sigmoid(l_k)."""
    logits = class_logits.float()
    if cfg.supervised == "ce":
        return F.cross_entropy(logits, labels)
    onehot = F.one_hot(labels, logits.shape[-1]).to(logits.dtype)
    return margin_loss(torch.sigmoid(logits), onehot, cfg.m_pos, cfg.m_neg, cfg.lam).mean()  # Sabour eq. 4


def semisup_d_loss(logits_lab: torch.Tensor, labels: torch.Tensor, logits_unl: torch.Tensor | None,
                   logits_fake: torch.Tensor | None, cfg: LossConfig) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """L = L_supervised + unsup_weight * L_unsupervised (Salimans et al. 2016, sec. 5) and its two parts.

    L_unsupervised is `d_loss` on log Z of the unlabeled (target real) and generated (target fake)
    images; with no unlabeled or generated logits (unsup_weight=0) only the supervised part is left.
    """
    sup = supervised_loss(logits_lab, labels, cfg)
    if logits_unl is None or logits_fake is None:
        return sup, {"loss_sup": sup}
    unsup = d_loss(real_logit(logits_unl), real_logit(logits_fake), cfg)
    return sup + cfg.unsup_weight * unsup, {"loss_sup": sup, "loss_unsup": unsup}


def feature_matching_loss(feats_real: torch.Tensor, feats_fake: torch.Tensor) -> torch.Tensor:
    """||E f(x) - E f(G(z))||^2 / F over F features (Salimans et al. 2016, sec. 3.1); real features detached."""
    diff = feats_real.detach().float().mean(0) - feats_fake.float().mean(0)
    return (diff * diff).mean()


def class_accuracy(class_logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Fraction of images whose largest class logit is their label."""
    return (class_logits.argmax(-1) == labels).float().mean()
