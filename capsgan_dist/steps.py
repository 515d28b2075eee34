"""One training step as the loop runs it: real batch, noise, the D and/or G update, statistics.

`EagerSteps` holds train.py's two updates; `cuda_graphs.GraphedSteps` replays the same two from
CUDA graphs. Both return their statistics as device tensors (step_stats.D_KEYS / G_KEYS) and
never read the device from the host, so the CPU can queue the next step while the GPU works.
`iteration()` is one step of the loop; train.py and benchmarks/step.py both call it, so the
benchmark times what trains.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Protocol

import torch
from torch import nn

from capsgan_dist import losses, optim
from capsgan_dist.config import Config
from capsgan_dist.dist import Dist, noise
from capsgan_dist.models.dcgan_discriminator import has_batchnorm
from capsgan_dist.step_stats import StepStats

# Salts that keep the noise streams of the two updates apart (train.py has the others).
D_NOISE, G_NOISE = 1, 2


class Steps(Protocol):
    def d_step(self, step: int) -> torch.Tensor | None: ...

    def g_step(self, step: int) -> torch.Tensor | None: ...

    def images(self, do_d: bool, do_g: bool) -> float: ...

    def window_extras(self) -> dict[str, float | None]: ...


class GanSteps:
    """What the plain GAN's steps share: images per step, and no statistics beyond D_KEYS / G_KEYS."""

    cfg: Config

    def images(self, do_d: bool, do_g: bool) -> float:
        """Images through the models in a step: real + fake of a D update, latents of a G update."""
        return float((self.cfg.train.batch_real + self.cfg.train.batch_fake) * (do_d + do_g))

    def window_extras(self) -> dict[str, float | None]:
        """Statistics of this log window beyond D_KEYS / G_KEYS (read once per window; None drops a key)."""
        return {}


def separate_batches(cfg: Config, D: nn.Module) -> bool:
    """Whether a D update forwards real and generated images separately (train.d_batches; auto: if D has batch norm)."""
    if cfg.train.d_batches == "auto":
        return has_batchnorm(D)
    return cfg.train.d_batches == "separate"


def d_logits(D: nn.Module, real: torch.Tensor, fake: torch.Tensor, separate: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """D's logits on the real and the generated batch: two forwards, or one over both (B_real + B_fake,)."""
    fake = fake.to(real.dtype)
    if separate:  # batch norm sees each batch alone, as in Radford et al.'s training loop
        return D(real), D(fake)
    logits = D(torch.cat([real, fake]))
    return logits[: len(real)], logits[len(real):]


def apply_update(acc, model: nn.Module, opt, clip: float, device: torch.device) -> torch.Tensor:
    """Clip (or just measure) the gradient norm, step unless it is non-finite; the norm, on the device."""
    norm = optim.grad_norm(model, clip, acc)
    optim.step_if_finite(opt, norm, acc)
    opt.zero_grad(set_to_none=True)
    if not torch.is_tensor(norm):  # DeepSpeed reports a Python float (or None)
        norm = torch.tensor(float("nan") if norm is None else norm, device=device)
    return norm.detach().float()


class EagerSteps(GanSteps):
    """train.py's D step (G frozen) and G step (D frozen), through the Accelerators."""

    def __init__(self, cfg: Config, dist: Dist, G: nn.Module, D: nn.Module, D_plain: nn.Module,
                 opt_g, opt_d, real_batches: Iterator[torch.Tensor], clip: float):
        self.cfg, self.dist, self.clip = cfg, dist, clip
        self.G, self.D, self.D_plain = G, D, D_plain  # D_plain: unwrapped, used where D is frozen
        self.opt_g, self.opt_d, self.real_batches = opt_g, opt_d, real_batches
        self.separate = separate_batches(cfg, D_plain)

    def d_step(self, step: int) -> torch.Tensor:
        """One D update on this rank's next real batch and batch_fake fakes; returns D_KEYS (5,)."""
        t, dist = self.cfg.train, self.dist
        real = next(self.real_batches)
        z = noise(t.batch_fake, self.cfg.model.latent_dim, dist.device, self.cfg.seed, step, dist.rank, D_NOISE)
        with torch.no_grad():
            fake = self.G(z)
        lr_, lf = d_logits(self.D, real, fake, self.separate)
        loss = losses.d_loss(lr_, lf, self.cfg.loss)
        dist.acc_d.backward(loss)
        gnorm = self._update(dist.acc_d, self.D, self.opt_d)
        with torch.no_grad():
            return torch.stack([loss.float(), losses.d_accuracy(lr_, lf), torch.sigmoid(lr_.float()).mean(),
                                torch.sigmoid(lf.float()).mean(), gnorm])

    def g_step(self, step: int) -> torch.Tensor:
        """One G update on batch_real + batch_fake latents through the frozen D; returns G_KEYS (2,)."""
        t, dist = self.cfg.train, self.dist
        self.D.requires_grad_(False)  # frozen: no D grads, and DeepSpeed needs it (docs/distributed.md)
        z = noise(t.batch_real + t.batch_fake, self.cfg.model.latent_dim, dist.device, self.cfg.seed, step,
                  dist.rank, G_NOISE)
        loss = losses.g_loss(self.D_plain(self.G(z)), self.cfg.loss)
        dist.acc_g.backward(loss)
        gnorm = self._update(dist.acc_g, self.G, self.opt_g)
        self.D.requires_grad_(True)
        with torch.no_grad():
            return torch.stack([loss.float(), gnorm])

    def _update(self, acc, model: nn.Module, opt) -> torch.Tensor:
        return apply_update(acc, model, opt, self.clip, self.dist.device)


def updates_at(step: int, schedule: str) -> tuple[bool, bool]:
    """(D update?, G update?) at `step`: alternate = D on even steps, G on odd; both = D then G."""
    both = schedule == "both"
    return both or step % 2 == 0, both or step % 2 == 1


def iteration(steps: Steps, stats: StepStats, step: int, cfg: Config) -> None:
    """One step of the loop: the D and/or G update the schedule asks for, statistics kept on the device."""
    do_d, do_g = updates_at(step, cfg.train.schedule)
    d = steps.d_step(step) if do_d else None
    g = steps.g_step(step) if do_g else None  # None: no update this step (a supervised-only baseline's G)
    stats.record(step, d, g, steps.images(do_d, do_g))
