"""DeepSpeed ZeRO for both models through Accelerate's multi-model layout.

Chosen by the launcher (`accelerate launch --use_deepspeed ...` or a launch YAML with
`distributed_type: DEEPSPEED`), which sets ACCELERATE_USE_DEEPSPEED=true and the ZeRO stage
(ACCELERATE_DEEPSPEED_ZERO_STAGE, or a JSON in ACCELERATE_DEEPSPEED_CONFIG_FILE). The layout is
the one measured to be correct against a single-process reference (docs/distributed.md):

- one DeepSpeedPlugin per model, passed as a dict {"G": ..., "D": ...} to the first Accelerator;
- a second Accelerator without plugins, sharing the first one's process state;
- each Accelerator activates its own plugin before it prepares its model, so G and D get
  separate engines and `acc_g.backward` / `acc_d.backward` reach the right one;
- batch sizes and gradient clipping are written into both configs explicitly: D is prepared
  without a loader (Accelerate cannot infer its micro batch) and DeepSpeed would otherwise clip
  at its hidden default of 1.0 (0 in our config really means "no clipping").

The training loop needs no DeepSpeed branches: `accelerator.backward` runs the engine's backward
*and* step, the wrapped optimizer's step()/zero_grad() are no-ops and `clip_grad_norm_` returns
the norm DeepSpeed computed. The loop must freeze D during the G step (it does): otherwise ZeRO-2
fails on D's next backward and ZeRO-1 trains silently wrong (docs/distributed.md).
"""

from __future__ import annotations

import contextlib
import io
import logging
import warnings
from typing import Any

import torch
from accelerate import Accelerator
from accelerate.utils import DeepSpeedPlugin, InitProcessGroupKwargs

from capsgan_dist.config import Config
from capsgan_dist.errors import ConfigError

PLUGIN_KEYS = ("G", "D")


def _quiet_deepspeed() -> None:
    """On CPU, DeepSpeed's set-up speaks for every rank: torch's extension loader warns "No CUDA runtime
    is found" when DeepSpeed imports it (at engine set-up, after this), and its ZeRO gathers call a torch
    function that warns it is deprecated. None of it is news for a run; errors still show."""
    if not torch.cuda.is_available():
        logging.getLogger("torch.utils.cpp_extension").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", message=r"`torch.distributed.all_gather_into_tensor` is deprecated",
                            category=FutureWarning)


class PluginAccelerator(Accelerator):
    """An Accelerator that activates its own DeepSpeed plugin (by key) before preparing objects."""

    def __init__(self, plugin_key: str, batch_per_device: int, **kwargs: Any):
        super().__init__(**kwargs)
        self.plugin_key = plugin_key
        self.batch_per_device = batch_per_device

    def prepare(self, *args: Any, device_placement: list[bool] | None = None) -> Any:
        """Select this model's plugin, fix its batch sizes for the world size, then prepare."""
        self.state.select_deepspeed_plugin(self.plugin_key)
        ds = self.state.get_deepspeed_plugin(self.plugin_key).deepspeed_config
        ds["gradient_accumulation_steps"] = 1
        ds["train_micro_batch_size_per_gpu"] = self.batch_per_device
        ds["train_batch_size"] = self.batch_per_device * self.num_processes
        return super().prepare(*args, device_placement=device_placement)


def _plugin(cfg: Config) -> DeepSpeedPlugin:
    """A plugin from the launcher's settings, with gradient clipping taken from our config."""
    plugin = DeepSpeedPlugin()  # reads the ZeRO stage / JSON file the launcher put in the environment
    stage = plugin.deepspeed_config.get("zero_optimization", {}).get("stage")
    if stage not in (0, 1, 2):
        raise ConfigError(f"DeepSpeed ZeRO stage {stage!r} from the launch config is not supported; "
                          "use zero_stage 1 or 2 (launch/accelerate/deepspeed_zero1.yaml, deepspeed_zero2.yaml)")
    launcher_clip = plugin.deepspeed_config.get("gradient_clipping", "auto")
    if launcher_clip not in ("auto", None) and float(launcher_clip) != cfg.optim.grad_clip:
        raise ConfigError(f"the launch config sets DeepSpeed gradient_clipping={launcher_clip} but the run config "
                          f"has optim.grad_clip={cfg.optim.grad_clip}; remove it from the launch config (the run "
                          "config decides) or set optim.grad_clip to the same value")
    # Explicit, so DeepSpeed's hidden default (1.0) never applies; 0 disables clipping.
    plugin.deepspeed_config["gradient_clipping"] = float(cfg.optim.grad_clip)
    return plugin


def deepspeed_accelerators(cfg: Config) -> tuple[Accelerator, Accelerator]:
    """Two Accelerators sharing one process group, with one DeepSpeed engine each for G and D."""
    _quiet_deepspeed()
    t = cfg.train
    kwargs: dict[str, Any] = {"mixed_precision": t.mixed_precision}
    if not torch.cuda.is_available():
        # DeepSpeed ignores Accelerator(cpu=True); on CPUs the group must be gloo.
        kwargs["kwargs_handlers"] = [InitProcessGroupKwargs(backend="gloo")]
    plugins = {key: _plugin(cfg) for key in PLUGIN_KEYS}
    # The G step feeds G batch_real + batch_fake latents; the D step feeds D as many images.
    per_device = t.batch_real + t.batch_fake
    # DeepSpeed prints "deepspeed_shm_comm_op built successfully" per rank (a real first build's compiler
    # output still shows, once).
    with contextlib.redirect_stdout(io.StringIO()):
        acc_g = PluginAccelerator("G", per_device, deepspeed_plugins=plugins, **kwargs)
    acc_d = PluginAccelerator("D", per_device, **kwargs)  # no plugins: shares acc_g's state
    return acc_g, acc_d
