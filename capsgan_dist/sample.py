"""Sampling from a finished (or running) run's newest valid checkpoint, on one process."""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import load_file
from torch import nn

from capsgan_dist import checkpoint, plots
from capsgan_dist.config import Config, load_config, model_hash
from capsgan_dist.errors import CheckpointError, UserError
from capsgan_dist.models import build_discriminator, build_generator


def _checkpoint(run_dir: Path, step: int | None) -> tuple[Config, Path]:
    """The run's config and its checkpoint at `step` (None: the newest valid one), verified."""
    cfg_path = run_dir / "config.yaml"
    if not cfg_path.is_file():
        raise UserError(f"{run_dir} has no config.yaml; pass the folder of a training run")
    cfg = load_config(cfg_path)
    if step is None:
        found = checkpoint.latest_valid(run_dir / "checkpoints")
        if found is None:
            raise CheckpointError(f"no valid checkpoint in {run_dir / 'checkpoints'}")
        path, manifest = found
    else:
        path = run_dir / "checkpoints" / f"step_{step:07d}"
        if not path.is_dir():
            raise CheckpointError(f"{run_dir} has no checkpoint of step {step} (keep it with train.keep_steps)")
        manifest = checkpoint.verify(path)
    if manifest["model_hash"] != model_hash(cfg):
        raise CheckpointError(f"{path} does not match {cfg_path} (different model config)")
    return cfg, path


def _weights(path: Path, part: str) -> dict:
    weights = path / part / "model.safetensors"
    if not weights.is_file():  # DeepSpeed checkpoints keep weights in their own format
        raise CheckpointError(f"{weights} not found; loading reads Accelerate's safetensors checkpoints")
    return load_file(str(weights))


def load_generator(run_dir: Path, step: int | None = None) -> tuple[nn.Module, Path]:
    """G with the weights of the run's checkpoint at `step` (default: newest valid), and its path."""
    cfg, path = _checkpoint(run_dir, step)
    G = build_generator(cfg)
    G.load_state_dict(_weights(path, "G"))
    return G.eval(), path


def load_models(run_dir: Path, step: int | None = None) -> tuple[nn.Module, nn.Module, Path]:
    """G and D (eval mode) of the run's checkpoint at `step` (default: newest valid), and its path."""
    cfg, path = _checkpoint(run_dir, step)
    G, D = build_generator(cfg), build_discriminator(cfg)
    G.load_state_dict(_weights(path, "G"))
    D.load_state_dict(_weights(path, "D"))
    return G.eval(), D.eval(), path


def sample_from_run(run_dir: Path, n: int, out: Path | None = None, seed: int = 0) -> Path:
    """Write a grid of n samples from the run's generator to `out` (default: in the run's samples/)."""
    if n < 1:
        raise UserError(f"--n must be >= 1, got {n}")
    G, ckpt = load_generator(run_dir)
    if out is None:  # beside the run's other grids, named so that seeds and checkpoints do not overwrite
        out = run_dir / "samples" / f"sample_{ckpt.name}_seed{seed}.png"
    z = torch.randn(n, G.latent_dim, generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        images = G(z)
    plots.save_grid(images, out)
    return out
