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


def run_config(run_dir: Path) -> Config:
    """The config a training run saved in its folder."""
    cfg_path = run_dir / "config.yaml"
    if not cfg_path.is_file():
        raise UserError(f"{run_dir} has no config.yaml; pass the folder of a training run")
    return load_config(cfg_path)


def check_model(cfg: Config, path: Path, manifest: dict) -> None:
    """Fail when checkpoint `path` (its verified manifest) was saved by another model config."""
    if manifest["model_hash"] != model_hash(cfg):
        raise CheckpointError(f"{path} does not match its run's config.yaml (different model config)")


def _checkpoint(run_dir: Path, step: int | None) -> tuple[Config, Path]:
    """The run's config and its checkpoint at `step` (None: the newest valid one), verified."""
    cfg = run_config(run_dir)
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
    check_model(cfg, path, manifest)
    return cfg, path


def _weights(path: Path, part: str) -> dict:
    weights = path / part / "model.safetensors"
    if not weights.is_file():  # DeepSpeed checkpoints keep weights in their own format
        raise CheckpointError(f"{weights} not found; loading reads Accelerate's safetensors checkpoints")
    return load_file(str(weights))


def generator_at(cfg: Config, path: Path) -> nn.Module:
    """G (eval mode) with the weights of checkpoint `path` of a run with config `cfg`."""
    G = build_generator(cfg)
    G.load_state_dict(_weights(path, "G"))
    return G.eval()


def load_generator(run_dir: Path, step: int | None = None) -> tuple[nn.Module, Path]:
    """G with the weights of the run's checkpoint at `step` (default: newest valid), and its path."""
    cfg, path = _checkpoint(run_dir, step)
    return generator_at(cfg, path), path


def load_models(run_dir: Path, step: int | None = None) -> tuple[nn.Module, nn.Module, Path]:
    """G and D (eval mode) of the run's checkpoint at `step` (default: newest valid), and its path."""
    cfg, path = _checkpoint(run_dir, step)
    D = build_discriminator(cfg)
    D.load_state_dict(_weights(path, "D"))
    return generator_at(cfg, path), D.eval(), path


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
