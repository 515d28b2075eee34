"""Every image size x discriminator x generator builds and trains 5 steps (debug-sized models, in one process)."""

from __future__ import annotations

import math

import pytest
from conftest import DEBUG_CONFIG

from capsgan_dist.config import load_config
from capsgan_dist.train import train

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("size", [28, 32, 64, 128])
def test_every_d_and_g_trains_five_steps(tmp_path, size, channels):
    for d in ("capsule", "dcgan", "conv"):
        for g in ("dcgan", "capsule"):
            cfg = load_config(DEBUG_CONFIG, [
                f"data.image_size={size}", f"data.channels={channels}", "data.synthetic_size=64",
                f"model.discriminator={d}", f"model.generator={g}", "model.g_top_caps=4", "model.g_top_dim=8",
                "model.g_primary_channels=4", "model.g_primary_dim=4", "model.d_base_width=8",
                "train.steps=5", "train.log_every=5", "train.sample_every=5", "tracking.grid_every=5",
                "train.checkpoint_every=5", "train.progress=false", "tracking.backend=none",
                f"train.run_dir={tmp_path / f'{d}-{g}'}"])
            summary = train(cfg)
            assert summary["step"] == 5, (d, g)
            assert math.isfinite(summary["loss_d"]) and math.isfinite(summary["loss_g"]), (d, g)
