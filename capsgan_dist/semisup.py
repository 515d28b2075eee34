"""Semi-supervised GAN training (data.labels_per_class > 0): the D and G steps and the test error.

Salimans et al. 2016 ("Improved techniques for training GANs", sec. 5): D has K class logits.
Each D step takes one forward over `batch_labeled` labeled, `batch_real` unlabeled and `batch_fake`
generated images; the loss (losses.semisup_d_loss) is the labeled images' classification loss
plus the GAN loss on D(x) = Z / (Z + 1). G's step is the GAN's, on log Z, or feature matching
(sec. 3.1) against a batch of unlabeled images. `loss.unsup_weight=0` is the supervised-only
baseline: D sees the labeled batches alone, in the same order, and G is never updated.

Unlabeled batches come from train.py's loader (loader.py over the unlabeled split, sharded per rank).
Labeled batches and feature matching's real batches are pure functions of (seed, update index,
rank), so a resumed run reads exactly what the uninterrupted one would have.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import torch
from torch import nn

from capsgan_dist import losses
from capsgan_dist.config import Config
from capsgan_dist.data import SemiSupSplits
from capsgan_dist.dist import Dist, noise, seed_for
from capsgan_dist.steps import D_NOISE, G_NOISE, apply_update

# This module's data-stream salts (the fakes use the GAN path's noise salts).
_LABELED, _FM_REAL = 11, 12
# D-step statistics beyond steps.D_KEYS, kept on the device and read once per log window.
_EXTRA_KEYS = ("loss_sup", "loss_unsup", "acc_lab")
_GAN_ONLY = ("acc_d", "d_real", "d_fake", "loss_g", "gnorm_g")  # meaningless without the GAN part


def stream_indices(n: int, batch: int, k: int, seed: int, salt: int, world: int = 1, rank: int = 0) -> torch.Tensor:
    """Indices of batch `k` of `rank` in an endless stream of seeded permutations of range(n).

    The ranks' batches k are consecutive slices of the stream (rank 0 first), so every epoch shows
    each item once across ranks; the result depends only on the arguments (exact resumes).
    """
    start = (k * world + rank) * batch
    pos = torch.arange(start, start + batch)  # (batch,) positions in the stream
    out = torch.empty(batch, dtype=torch.long)
    for epoch in pos.div(n, rounding_mode="floor").unique().tolist():
        perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed_for(seed, salt, epoch)))
        here = pos.div(n, rounding_mode="floor") == epoch
        out[here] = perm[pos[here] % n]
    return out


def trains_gan(cfg: Config) -> bool:
    """Whether a semi-supervised run plays the GAN game; `loss.unsup_weight=0` trains D on its labels alone."""
    return cfg.loss.unsup_weight > 0


def to_unit(images: torch.Tensor) -> torch.Tensor:
    """uint8 (N, C, H, W) -> float in [-1, 1], as data.TensorImages gives the loader's images."""
    return images.float().div_(127.5).sub_(1.0)


class SemiSupervised:
    """The loop's steps (steps.Steps: statistics as device tensors) and the test error as an eval hook."""

    def __init__(self, cfg: Config, dist: Dist, splits: SemiSupSplits, G: nn.Module, D: nn.Module,
                 D_plain: nn.Module, opt_g: torch.optim.Optimizer, opt_d: torch.optim.Optimizer,
                 real_batches: Iterator[torch.Tensor], clip: float) -> None:
        self.cfg, self.dist, self.splits = cfg, dist, splits
        self.G, self.D, self.D_plain, self.opt_g, self.opt_d = G, D, D_plain, opt_g, opt_d
        self.real_batches, self.clip = real_batches, clip
        self.gan = trains_gan(cfg)
        self._extra = torch.zeros(len(_EXTRA_KEYS), dtype=torch.float64, device=dist.device)
        self._extra_n = 0
        both = cfg.train.schedule == "both"
        self._update = (lambda step: step) if both else (lambda step: step // 2)  # updates of D (or G) before step

    def images(self, do_d: bool, do_g: bool) -> float:
        """Images through the models in a step: labeled + unlabeled + fake of a D update, G's latents."""
        t = self.cfg.train
        d = t.batch_labeled + (t.batch_real + t.batch_fake if self.gan else 0)
        return float(d * do_d + (t.batch_real + t.batch_fake if self.gan else 0) * do_g)

    def window_extras(self) -> dict[str, float | None]:
        """Means of the labeled-loss statistics over the window's D steps (one host read); GAN keys
        dropped for the supervised-only baseline."""
        out: dict[str, float | None] = dict.fromkeys(_GAN_ONLY) if not self.gan else {}
        if self._extra_n:
            sums = self._extra.tolist()
            out.update({k: v / self._extra_n for k, v in zip(_EXTRA_KEYS, sums) if self.gan or k != "loss_unsup"})
        self._extra.zero_()
        self._extra_n = 0
        return out

    def d_step(self, step: int) -> torch.Tensor:
        """One D update on labeled, unlabeled and generated images; returns steps.D_KEYS (5,) on the device."""
        cfg, t, dist = self.cfg, self.cfg.train, self.dist
        idx = stream_indices(len(self.splits.labeled_x), t.batch_labeled, self._update(step), cfg.seed, _LABELED,
                             dist.world, dist.rank)
        x_lab = to_unit(self.splits.labeled_x[idx]).to(dist.device)
        y = self.splits.labeled_y[idx].to(dist.device)
        zero = torch.zeros((), device=dist.device)
        if not self.gan:  # supervised-only baseline
            logits_lab = self.D(x_lab)
            loss, parts = losses.semisup_d_loss(logits_lab, y, None, None, cfg.loss)
            acc_d = d_real = d_fake = zero  # dropped from the log (window_extras)
        else:
            real = next(self.real_batches)
            z = noise(t.batch_fake, cfg.model.latent_dim, dist.device, cfg.seed, step, dist.rank, D_NOISE)
            with torch.no_grad():
                fake = self.G(z)
            logits = self.D(torch.cat([x_lab, real, fake.to(real.dtype)]))  # (B_lab + B_real + B_fake, K)
            logits_lab, lr_, lf = logits.split([len(x_lab), len(real), len(fake)])
            loss, parts = losses.semisup_d_loss(logits_lab, y, lr_, lf, cfg.loss)
            r, f = losses.real_logit(lr_), losses.real_logit(lf)
            acc_d, d_real, d_fake = losses.d_accuracy(r, f), torch.sigmoid(r).mean(), torch.sigmoid(f).mean()
        dist.acc_d.backward(loss)
        gnorm = apply_update(dist.acc_d, self.D, self.opt_d, self.clip, dist.device)
        with torch.no_grad():
            extra = [parts["loss_sup"], parts.get("loss_unsup", zero), losses.class_accuracy(logits_lab, y)]
            self._extra += torch.stack([e.detach().double() for e in extra])
            self._extra_n += 1
            return torch.stack([loss.detach().float(), acc_d.float(), d_real.float(), d_fake.float(), gnorm])

    def g_step(self, step: int) -> torch.Tensor | None:
        """One G update (GAN loss on log Z, or feature matching); returns steps.G_KEYS (2,), or None
        for the supervised-only baseline, whose G is never updated."""
        if not self.gan:
            return None
        cfg, t, dist = self.cfg, self.cfg.train, self.dist
        self.D.requires_grad_(False)  # frozen: no D grads, and DeepSpeed needs it (docs/distributed.md)
        n = t.batch_real + t.batch_fake
        z = noise(n, cfg.model.latent_dim, dist.device, cfg.seed, step, dist.rank, G_NOISE)
        fake = self.G(z)
        if cfg.loss.generator == "feature_matching":
            idx = stream_indices(len(self.splits.unlabeled_x), n, self._update(step), cfg.seed, _FM_REAL,
                                 dist.world, dist.rank)
            real = to_unit(self.splits.unlabeled_x[idx]).to(dist.device)
            feats, _ = self.D_plain.features_and_logits(torch.cat([real, fake.to(real.dtype)]))
            loss = losses.feature_matching_loss(feats[:n], feats[n:])
        else:
            loss = losses.g_loss(losses.real_logit(self.D_plain(fake)), cfg.loss)
        dist.acc_g.backward(loss)
        gnorm = apply_update(dist.acc_g, self.G, self.opt_g, self.clip, dist.device)
        self.D.requires_grad_(True)
        with torch.no_grad():
            return torch.stack([loss.detach().float(), gnorm])

    @torch.no_grad()
    def test_error(self) -> dict[str, float]:
        """D's accuracy and error on the test split: each rank scores a shard, counts summed over ranks."""
        dist, batch = self.dist, self.cfg.eval.batch
        shard = torch.arange(dist.rank, len(self.splits.test_x), dist.world)
        was = self.D_plain.training
        self.D_plain.eval()
        right = 0
        for i in range(0, len(shard), batch):
            idx = shard[i:i + batch]
            logits = self.D_plain(to_unit(self.splits.test_x[idx]).to(dist.device))
            right += int((logits.argmax(-1).cpu() == self.splits.test_y[idx]).sum())
        self.D_plain.train(was)
        total = dist.sum({"right": float(right), "n": float(len(shard))})
        acc = total["right"] / total["n"]
        return {"eval/test_acc": acc, "eval/test_error": 1.0 - acc, "eval/test_n": total["n"]}

    def with_test_error(self, evaluate: Callable[[nn.Module, int, object], None]) -> Callable:
        """The loop's eval hook, plus the test error every eval.every steps and at the last step."""
        every, last = self.cfg.eval.every, self.cfg.train.steps

        def hook(G: nn.Module, step: int, tracker) -> None:
            evaluate(G, step, tracker)
            if (every and step % every == 0) or step == last:
                tracker.log(step, self.test_error())

        return hook


def final_test_error_line(run_dir: Path) -> str | None:
    """'test error 12.50% (best 11.25% at step 15)' from a run's metrics.jsonl; None if it logged none."""
    from capsgan_dist.plots import read_metrics

    errs = [(r["step"], r["eval/test_error"]) for r in read_metrics(Path(run_dir) / "metrics.jsonl")
            if "eval/test_error" in r]
    if not errs:
        return None
    best_step, best = min(errs, key=lambda e: e[1])
    return f"test error {100 * errs[-1][1]:.2f}% (best {100 * best:.2f}% at step {best_step})"
