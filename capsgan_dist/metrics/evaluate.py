"""Evaluate generators: a run's checkpoints (`capsgan eval` -> eval.json) and the training-loop hook.

Real images are the run's own dataset; generated ones come from fixed noise, so evaluations at
different steps (and of different models with the same seed) see the same latents.
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
from pathlib import Path

import torch
from torch import nn

from capsgan_dist import checkpoint
from capsgan_dist.config import Config, EvalConfig
from capsgan_dist.data import describe, fingerprint, load_images
from capsgan_dist.dist import noise
from capsgan_dist.errors import CheckpointError, DataError, UserError, warn
from capsgan_dist.metrics import MetricSuite
from capsgan_dist.metrics.classifier import load_classifier
from capsgan_dist.sample import check_model, generator_at, run_config

_EVAL_NOISE = 5  # salt of the evaluation latents (train.py uses 1-4)


def real_images(cfg: Config) -> torch.Tensor:
    """The run's dataset as float (N, C, H, W) in [-1, 1]."""
    return load_images(cfg.data).float().div(127.5).sub(1.0)


def check_classifier(meta: dict, cfg: Config, classifier_path: str | Path, images: torch.Tensor) -> bool | None:
    """Refuse a classifier for other image shapes; warn when it was trained on other images than `images`.

    Returns whether the run's images are among the classifier's training data (None: the file is
    from before fingerprints were recorded, so nobody can tell).
    """
    want = [cfg.data.channels, cfg.data.image_size, cfg.data.image_size]
    if list(meta["image_shape"]) != want:
        raise DataError(f"classifier {classifier_path} takes {meta['image_shape']} (CxHxW) images but the run "
                        f"makes {want}; train a classifier on the run's dataset")
    data = meta.get("dataset", {})
    if "fingerprints" not in data:
        warn(f"classifier {classifier_path} does not record which images it was trained on (an older file); "
             "cannot check that they are this run's. Retrain it with `capsgan classifier train` to record them")
        return None
    if fingerprint(images) in data["fingerprints"]:
        return True
    warn(f"classifier {classifier_path} was trained on {data.get('root')}, not on this run's images "
         f"({describe(cfg.data)}): its FID/KID/IS/precision/recall measure in another dataset's feature "
         "space; compare them only with runs scored by the same classifier on the same data")
    return False


@torch.no_grad()
def generate(G: nn.Module, z: torch.Tensor, batch: int) -> torch.Tensor:
    """G(z) in eval mode, in batches, as float on the CPU."""
    was = G.training
    G.eval()
    out = torch.cat([G(z[i:i + batch]).float().cpu() for i in range(0, len(z), batch)])
    G.train(was)
    return out


def _suite(settings: EvalConfig, cfg: Config, device: torch.device,
           progress: bool = False) -> tuple[MetricSuite, dict]:
    """Metrics against the run's real data in `settings`' feature network, and that network's metadata
    (+ whether a classifier was trained on the run's data; None for Inception, trained on ImageNet)."""
    images = load_images(cfg.data)  # uint8
    if settings.inception_weights:
        from capsgan_dist.metrics.inception import load_inception

        net, meta = load_inception(settings.inception_weights)
        meta = {**meta, "matches_run_data": None}
    else:
        net, meta = load_classifier(settings.classifier)
        meta = {**meta, "matches_run_data": check_classifier(meta, cfg, settings.classifier, images)}
    suite = MetricSuite(net.to(device), settings, seed=cfg.seed, progress=progress)
    suite.set_real(images.float().div(127.5).sub(1.0))
    return suite, meta


def evaluate_run(run_dir: Path, n: int | None = None, classifier: str | None = None,
                 all_checkpoints: bool = False, out: Path | None = None,
                 inception_weights: str | None = None) -> dict:
    """Metrics of the newest (or every) valid checkpoint of a run; writes `<run>/eval.json`.

    `classifier` or `inception_weights` (at most one) replaces the run's own eval feature network."""
    run_dir = Path(run_dir)
    cfg = run_config(run_dir)
    if classifier or inception_weights:  # both at once: EvalConfig refuses it
        settings = dataclasses.replace(cfg.eval, classifier=classifier, inception_weights=inception_weights)
    else:
        settings = cfg.eval
    if not settings.feature_network:
        raise UserError("no classifier: pass --classifier PATH (from `capsgan classifier train`) or "
                        "--inception-weights FILE, or set eval.classifier in the run's config")
    settings = dataclasses.replace(settings, n=n or settings.n)
    paths = checkpoint.list_checkpoints(run_dir / "checkpoints")
    if not all_checkpoints:
        found = checkpoint.latest_valid(run_dir / "checkpoints")
        paths = [found[0]] if found else []
    if not paths:
        raise CheckpointError(f"no valid checkpoint in {run_dir / 'checkpoints'}")
    t0 = time.perf_counter()
    suite, meta = _suite(settings, cfg, torch.device("cpu"), progress=True)  # Inception on a CPU takes minutes
    z = noise(settings.n, cfg.model.latent_dim, torch.device("cpu"), cfg.seed, _EVAL_NOISE)
    results = []
    for path in paths:
        try:
            manifest = checkpoint.verify(path)
        except CheckpointError as e:
            warn(f"skipping {e}")
            continue
        check_model(cfg, path, manifest)
        scores = suite.score(generate(generator_at(cfg, path), z, settings.batch))
        results.append({"step": int(manifest["step"]), "checkpoint": str(path), **scores})
    report = {"run": str(run_dir), "classifier": str(settings.feature_network), "classifier_arch": meta["arch"],
              "classifier_dataset": meta["dataset"]["root"], "classifier_accuracy": meta["accuracy"],
              "classifier_trained_on_run_data": meta["matches_run_data"],
              "data": dataclasses.asdict(cfg.data),
              "n_fake": settings.n, "metrics": list(settings.metrics), "reference": suite.reference(),
              "checkpoints": results, "seconds": round(time.perf_counter() - t0, 1)}
    out = Path(out) if out else run_dir / "eval.json"
    out.write_text(json.dumps(report, indent=1) + "\n")
    return report


class LoopEval:
    """Training-loop hook: every eval.every steps all ranks sample, the main process scores and logs."""

    def __init__(self, cfg: Config, dist) -> None:
        # No classifier: nothing to score here (a semi-supervised run still evaluates its D).
        self.cfg, self.dist, self.every = cfg, dist, cfg.eval.every if cfg.eval.feature_network else 0
        if not self.every:
            return
        per_rank = math.ceil(cfg.eval.n / dist.world)
        self.z = noise(per_rank, cfg.model.latent_dim, dist.device, cfg.seed, dist.rank, _EVAL_NOISE)
        self.suite = _suite(cfg.eval, cfg, dist.device)[0] if dist.is_main else None

    def __call__(self, G: nn.Module, step: int, tracker) -> None:
        """Score G at `step` if an evaluation is due (every rank must call this)."""
        if not self.every or (step % self.every and step != self.cfg.train.steps):
            return
        t0 = time.perf_counter()
        g = self.dist.acc_g.unwrap_model(G)
        fake = self.dist.gather(generate(g, self.z, self.cfg.eval.batch).to(self.dist.device))
        if self.suite is not None:
            scores = self.suite.score(fake[: self.cfg.eval.n].cpu())
            scores.update(n=float(min(len(fake), self.cfg.eval.n)), ranks=float(self.dist.world),
                          seconds=time.perf_counter() - t0)
            tracker.log(step, {f"eval/{k}": v for k, v in scores.items()})
