"""EM routing between matrix capsules (Hinton, Sabour & Frosst 2018, "Matrix capsules with EM routing").

A matrix capsule is a 4x4 pose matrix M and an activation a in (0, 1); here it travels as one
vector of 17 numbers, the 16 pose entries (row-major) then the activation. A capsule i votes for
capsule j with V_ij = M_i W_ij (W_ij a learned 4x4 transform) and the layer above fits one Gaussian
per output capsule to the votes by EM (Procedure 1 of the paper); docs/design.md writes the steps
out. Two choices the paper leaves open are stated there too: the inverse-temperature schedule
and the scale of the cost. Two conventions for them (`schedule`):

- "ramp" (this project's reading, the default): lambda_t = (t + 1) / T, a linear ramp to 1, and the
  assigned data of capsule j counted relative to what uniform routing gives it, kappa = n_out / n_in.
- "authors" (the authors' code, google-research's capsule_em): lambda_t = 0.01 (1 - 0.95^(t + 1)),
  and the cost scaled by 100 / (children per parent), i.e. kappa = 100 / n_in in a fully connected layer.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

POSE = 16  # a 4x4 pose matrix, flattened
SCHEDULES = ("ramp", "authors")  # model.em_schedule; see the module docstring
AUTHORS_FINAL_LAMBDA = 0.01  # the authors' final inverse temperature
AUTHORS_COST_SCALE = 100.0  # the authors' cost scale, divided by the children of each parent
VAR_EPS = 1e-6  # added to sigma^2: one vote (or identical votes) would give log(0)
MASS_EPS = 1e-8  # added to sum_i R_ij: a capsule that gets no data would divide by zero


def inverse_temperatures(iterations: int, schedule: str = "ramp") -> list[float]:
    """lambda_t of EM iteration t = 0..T-1: ramp (t + 1) / T (the last M-step uses 1), or the authors'
    0.01 (1 - 0.95^(t + 1))."""
    if schedule == "authors":
        return [AUTHORS_FINAL_LAMBDA * (1 - 0.95 ** (t + 1)) for t in range(iterations)]
    return [(t + 1) / iterations for t in range(iterations)]


def cost_scale(n_in: int, n_out: int, schedule: str = "ramp") -> float:
    """kappa, the factor on an output capsule's assigned data in its cost: n_out / n_in, or the authors' 100 / n_in."""
    return AUTHORS_COST_SCALE / n_in if schedule == "authors" else n_out / n_in


def em_routing(votes: torch.Tensor, a_in: torch.Tensor, beta_u: torch.Tensor, beta_a: torch.Tensor,
               iterations: int, grad: str = "all", schedule: str = "ramp") -> tuple[torch.Tensor, torch.Tensor]:
    """Pose means mu (B, n_out, P) and activations a (B, n_out) of votes (B, n_in, n_out, P), a_in (B, n_in).

    Procedure 1 of Hinton et al. 2018: R_ij = 1/n_out; then `iterations` times an M-step (weighted
    Gaussian fit per output capsule, its cost and activation) followed by an E-step (R_ij from each
    capsule's likelihood of the vote), the last E-step left out since nothing reads it.
    beta_u, beta_a: (n_out,) learned per output capsule. grad="last" holds R fixed (detached) in the
    last M-step, as dynamic routing's "last" detaches the earlier iterations. `schedule` picks the
    inverse temperatures and the cost scale (module docstring).
    """
    if iterations < 1:
        raise ValueError(f"routing iterations must be >= 1, got {iterations}")
    if grad not in ("all", "last"):
        raise ValueError(f"grad must be 'all' or 'last', got {grad!r}")
    if schedule not in SCHEDULES:
        raise ValueError(f"schedule must be one of {SCHEDULES}, got {schedule!r}")
    B, n_in, n_out, P = votes.shape
    kappa = cost_scale(n_in, n_out, schedule)  # ramp: sum_i R_ij a_i relative to uniform routing's n_in/n_out
    R = votes.new_full((B, n_in, n_out), 1.0 / n_out)
    for t, lam in enumerate(inverse_temperatures(iterations, schedule)):
        if grad == "last" and t == iterations - 1:
            R = R.detach()
        # M-step
        Ra = R * a_in.unsqueeze(-1)  # R_ij <- R_ij a_i, (B, n_in, n_out)
        mass = Ra.sum(1) + MASS_EPS  # (B, n_out)
        mu = torch.einsum("bij,bijh->bjh", Ra, votes) / mass.unsqueeze(-1)  # (B, n_out, P)
        dev2 = (votes - mu.unsqueeze(1)) ** 2  # (B, n_in, n_out, P)
        var = torch.einsum("bij,bijh->bjh", Ra, dev2) / mass.unsqueeze(-1) + VAR_EPS
        cost = (beta_u.unsqueeze(-1) + 0.5 * torch.log(var)) * (kappa * mass).unsqueeze(-1)  # log sigma = log(var)/2
        logit = lam * (beta_a - cost.sum(-1))  # (B, n_out)
        if t == iterations - 1:
            return mu, torch.sigmoid(logit)
        # E-step: R_ij = a_j p_j(V_ij) / sum_k a_k p_k(V_ik), in the log domain
        log_p = -0.5 * (dev2 / var.unsqueeze(1)).sum(-1) - 0.5 * torch.log(var).sum(-1).unsqueeze(1) \
            - 0.5 * P * math.log(2 * math.pi)  # (B, n_in, n_out)
        R = torch.softmax(F.logsigmoid(logit).unsqueeze(1) + log_p, dim=2)
    raise AssertionError("unreachable")


class PrimaryMatrixCaps(nn.Module):
    """Conv (stride 2) read as `channels` matrix capsules per pixel: 16 pose entries and a sigmoid activation."""

    def __init__(self, in_channels: int, channels: int, kernel: int, stride: int = 2):
        super().__init__()
        self.channels = channels
        self.conv = nn.Conv2d(in_channels, channels * (POSE + 1), kernel, stride=stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x)  # (B, channels*17, H, W)
        B, _, H, W = y.shape
        pose = y[:, : self.channels * POSE].reshape(B, self.channels, POSE, H, W).permute(0, 1, 3, 4, 2)
        act = torch.sigmoid(y[:, self.channels * POSE:])  # (B, channels, H, W)
        # (B, n_in, 17), capsules in (channel, row, column) order like PrimaryCaps
        return torch.cat([pose.reshape(B, -1, POSE), act.reshape(B, -1, 1)], dim=-1)


class EMCaps(nn.Module):
    """Fully connected matrix-capsule layer: votes V_ij = M_i W_ij, then EM routing. (B, n_in, 17) -> (B, n_out, 17)."""

    out_dim = POSE + 1

    def __init__(self, n_in: int, n_out: int, iterations: int = 3, grad: str = "all", schedule: str = "ramp"):
        super().__init__()
        if n_out < 2:
            raise ValueError(f"EMCaps needs at least 2 output capsules (got {n_out}): the E-step "
                             "normalises over output capsules, so with one R_ij is always 1")
        if schedule not in SCHEDULES:
            raise ValueError(f"schedule must be one of {SCHEDULES}, got {schedule!r}")
        self.iterations, self.grad, self.schedule = iterations, grad, schedule
        # The cost compares log sigma with beta_u (0 at init): votes of rms ~0.4 (std 1 here, poses of
        # rms ~0.2 at init on MNIST) make every capsule look cheap and saturate a_j at 1 (a(1 - a) ~ 1e-4,
        # measured); std 3 gives votes of rms ~1.3 and initial activations of 0.6-0.95 (docs/design.md).
        self.weight = nn.Parameter(3.0 * torch.randn(n_in, n_out, 4, 4))
        self.beta_u = nn.Parameter(torch.zeros(n_out))
        self.beta_a = nn.Parameter(torch.zeros(n_out))

    def votes(self, x: torch.Tensor) -> torch.Tensor:
        """V_ij = M_i W_ij for every (i, j): (B, n_in, 17) -> (B, n_in, n_out, 16)."""
        B, n_in, _ = x.shape
        M = x[..., :POSE].reshape(B, n_in, 4, 4)
        V = torch.einsum("bixy,ijyz->bijxz", M, self.weight.to(M.dtype))  # (B, n_in, n_out, 4, 4)
        return V.reshape(B, n_in, -1, POSE)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        V = self.votes(x)  # in the autocast dtype under autocast
        acc = torch.promote_types(V.dtype, torch.float32)
        # The Gaussian statistics (variances, logs, the softmax) stay fp32 under bf16 autocast.
        with torch.autocast(x.device.type, enabled=False):
            mu, a = em_routing(V.to(acc), x[..., POSE].to(acc), self.beta_u.to(acc), self.beta_a.to(acc),
                               self.iterations, self.grad, self.schedule)
        return torch.cat([mu, a.unsqueeze(-1)], dim=-1)  # (B, n_out, 17)

    @staticmethod
    def presence(out: torch.Tensor) -> torch.Tensor:
        """Probability that each output entity is present: the activation, (B, n_out)."""
        return out[..., POSE]

    @staticmethod
    def pose(out: torch.Tensor) -> torch.Tensor:
        """The 16 pose entries of each output capsule, (B, n_out, 16)."""
        return out[..., :POSE]


__all__ = ["POSE", "SCHEDULES", "em_routing", "inverse_temperatures", "cost_scale", "PrimaryMatrixCaps", "EMCaps"]
