"""CUDA-graph replay of the D and G steps (`perf.cuda_graphs=true`).

UNMEASURED: written without a GPU (docs/benchmarks.md); `benchmarks/gpu_check.sh` is the one
script that checks and times it on a GPU. What runs here on CPU is tested: the config checks,
the warm-up state restore, and the step bodies run eagerly (`capture=False`).

At the paper's batch of 32 an iteration is a few hundred small kernels, so the CPU's launch cost,
not the GPU, sets the pace (measured on an H200 with a plain einsum CapsuleGAN: an iteration took
10.5 ms eager and 3.0-3.4 ms captured). Each step is captured once and replayed:

- static input buffers (the real batch and two noise batches) that each step copies into;
- Adam switched to `capturable=True` (its step counter lives on the GPU);
- 3 warm-up D+G iterations on a side stream (lazy optimizer state, cuBLAS workspaces), after which
  every parameter, buffer and optimizer state is put back, so the run trains as the eager one;
- gradients allocated by the captured backward and overwritten by every replay;
- a step with a non-finite gradient norm skipped inside the graph, as in the eager loop: fused
  Adam reads a device-side `found_inf` computed from the norm (capsgan_dist/optim.py);
- the step's statistics left on the device in a static output, added to the log window's sums
  by the loop (step_stats.py) and read by the host once per window, not once per step.

Difference from the eager loop (steps.py): bf16 autocast runs with its weight-cast cache off (a
cache filled during capture would be stale on replay).
"""

from __future__ import annotations

import contextlib
import itertools
import math
from collections.abc import Iterator

import torch
from accelerate.utils import DistributedType
from torch import nn

from capsgan_dist import losses, optim
from capsgan_dist.config import Config
from capsgan_dist.dist import Dist, noise
from capsgan_dist.errors import ConfigError
from capsgan_dist.steps import D_NOISE, G_NOISE, GanSteps, d_logits, separate_batches

WARMUP_ITERS = 3


def check_supported(cfg: Config, dist: Dist) -> None:
    """Raise a ConfigError unless this run can replay CUDA graphs (1 CUDA process, no DeepSpeed/fp16)."""
    how = "set perf.cuda_graphs=false"
    if dist.device.type != "cuda":
        raise ConfigError(f"perf.cuda_graphs=true needs a CUDA GPU, but this run is on {dist.device.type}; {how}")
    if dist.world != 1:
        raise ConfigError(f"perf.cuda_graphs=true supports one process, this run has {dist.world}; {how} "
                          "for multi-GPU runs")
    if dist.acc_d.distributed_type == DistributedType.DEEPSPEED:
        raise ConfigError(f"perf.cuda_graphs=true does not work with DeepSpeed; {how}")
    if cfg.train.mixed_precision == "fp16":
        raise ConfigError("perf.cuda_graphs=true cannot capture fp16 loss scaling (it syncs with the CPU); "
                          "use train.mixed_precision=bf16 or no")


def make_capturable(opt: torch.optim.Optimizer) -> None:
    """Switch Adam-style optimizers to capturable=True and move their step counters to the params' device."""
    for group in opt.param_groups:
        if "capturable" not in group:
            raise ConfigError(f"perf.cuda_graphs=true needs an optimizer with a capturable mode, not "
                              f"{type(opt).__name__}")
        group["capturable"] = True
        for p in group["params"]:
            step = opt.state.get(p, {}).get("step")
            if torch.is_tensor(step) and step.device != p.device:
                opt.state[p]["step"] = step.to(p.device, torch.float32)


class TrainingState:
    """In-place snapshot of models' parameters and buffers and optimizers' state, to undo a warm-up."""

    def __init__(self, models: list[nn.Module], optimizers: list[torch.optim.Optimizer]):
        self.tensors = [(t, t.detach().clone()) for m in models for t in itertools.chain(m.parameters(), m.buffers())]
        self.optimizers = optimizers
        self.opt_state = [{id(p): {k: v.detach().clone() for k, v in st.items() if torch.is_tensor(v)}
                           for p, st in opt.state.items()} for opt in optimizers]

    @torch.no_grad()
    def restore(self) -> None:
        """Copy every value back in place (addresses stay, as captured graphs need); new state -> 0."""
        for t, saved in self.tensors:
            t.copy_(saved)
        for opt, before in zip(self.optimizers, self.opt_state):
            for p, st in opt.state.items():
                old = before.get(id(p), {})
                for k, v in st.items():
                    if torch.is_tensor(v) and k in old:
                        v.copy_(old[k])
                    elif torch.is_tensor(v):
                        v.zero_()  # state born in the warm-up: zero is Adam before its first step


class GraphedSteps(GanSteps):
    """`d_step(step)` and `g_step(step)` as train.py's, each one replay of a captured CUDA graph."""

    def __init__(self, cfg: Config, dist: Dist, G: nn.Module, D: nn.Module, opt_g: torch.optim.Optimizer,
                 opt_d: torch.optim.Optimizer, real_batches: Iterator[torch.Tensor], clip: float,
                 capture: bool = True):
        if capture:
            check_supported(cfg, dist)
        t, dev = cfg.train, dist.device
        self.cfg, self.dist, self.real_batches, self.clip = cfg, dist, real_batches, clip
        # Our own autocast below replaces Accelerate's forward wrapper (it caches weight casts).
        self.G = dist.acc_g.unwrap_model(G, keep_fp32_wrapper=False)
        self.D = dist.acc_d.unwrap_model(D, keep_fp32_wrapper=False)
        self.opt_g, self.opt_d = getattr(opt_g, "optimizer", opt_g), getattr(opt_d, "optimizer", opt_d)
        for opt in (self.opt_g, self.opt_d):
            if not optim.skips_on_device(opt):  # the non-finite guard inside the graph needs it
                raise ConfigError(f"perf.cuda_graphs=true needs fused Adam (capsgan_dist.optim.build_adam), "
                                  f"not {type(opt).__name__} with fused={opt.param_groups[0].get('fused')}")
        s, c = cfg.data.image_size, cfg.data.channels
        self.real = torch.zeros(t.batch_real, c, s, s, device=dev)  # static inputs
        self.z_d = torch.zeros(t.batch_fake, cfg.model.latent_dim, device=dev)
        self.z_g = torch.zeros(t.batch_real + t.batch_fake, cfg.model.latent_dim, device=dev)
        self.bf16 = t.mixed_precision == "bf16"
        self.separate = separate_batches(cfg, self.D)
        self.graph_d = self.graph_g = None
        if capture:
            self._capture()

    def _autocast(self):
        if not self.bf16:
            return contextlib.nullcontext()
        return torch.autocast(self.dist.device.type, dtype=torch.bfloat16, cache_enabled=False)

    def _grad_norm(self, model: nn.Module) -> torch.Tensor:
        """Clip (or only measure) the gradient norm without a host sync."""
        params = [p for p in model.parameters() if p.grad is not None]
        if math.isinf(self.clip):
            return torch.nn.utils.get_total_norm([p.grad for p in params])
        return torch.nn.utils.clip_grad_norm_(params, self.clip)

    def _d_body(self) -> torch.Tensor:
        """train.py's D step without host syncs; returns [loss, acc, d_real, d_fake, gnorm]."""
        with torch.no_grad(), self._autocast():
            fake = self.G(self.z_d)
        with self._autocast():
            lr_, lf = d_logits(self.D, self.real, fake, self.separate)
        lr_, lf = lr_.float(), lf.float()
        loss = losses.d_loss(lr_, lf, self.cfg.loss)
        loss.backward()
        gnorm = self._grad_norm(self.D)
        optim.step_if_finite(self.opt_d, gnorm)  # skipped on the device (captured) when gnorm is not finite
        return torch.stack([loss.detach(), losses.d_accuracy(lr_, lf), torch.sigmoid(lr_).mean().detach(),
                            torch.sigmoid(lf).mean().detach(), gnorm.float()])

    def _g_body(self) -> torch.Tensor:
        """train.py's G step (D frozen) without host syncs; returns [loss, gnorm]."""
        self.D.requires_grad_(False)
        try:
            with self._autocast():
                logits = self.D(self.G(self.z_g))
            loss = losses.g_loss(logits.float(), self.cfg.loss)
            loss.backward()
            gnorm = self._grad_norm(self.G)
            optim.step_if_finite(self.opt_g, gnorm)
        finally:
            self.D.requires_grad_(True)
        return torch.stack([loss.detach(), gnorm.float()])

    def _capture(self) -> None:
        opts = (self.opt_g, self.opt_d)
        for opt in opts:
            make_capturable(opt)
        self.z_d.normal_()
        self.z_g.normal_()
        before = TrainingState([self.G, self.D], list(opts))
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(WARMUP_ITERS):
                for opt in opts:
                    opt.zero_grad(set_to_none=True)
                self._d_body()
                self._g_body()
        torch.cuda.current_stream().wait_stream(side)
        torch.cuda.synchronize()
        before.restore()  # the warm-up must not count as training
        for opt in opts:
            opt.zero_grad(set_to_none=True)  # the captured backward allocates (and then owns) the grads
        self.graph_d, self.graph_g = torch.cuda.CUDAGraph(), torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph_d):
            self.out_d = self._d_body()
        with torch.cuda.graph(self.graph_g):
            self.out_g = self._g_body()

    def d_step(self, step: int) -> torch.Tensor:
        """Copy this step's real batch and noise into the static inputs, replay the D graph.

        Returns the graph's static output (step_stats.D_KEYS, on the device): the next replay
        overwrites it, so use it (the loop adds it to its window sums) before the next D step.
        """
        t, rank = self.cfg.train, self.dist.rank
        self.real.copy_(next(self.real_batches), non_blocking=True)
        self.z_d.copy_(noise(t.batch_fake, self.cfg.model.latent_dim, self.dist.device, self.cfg.seed, step,
                             rank, D_NOISE))
        return self._run(self.graph_d, self._d_body, self.opt_d)

    def g_step(self, step: int) -> torch.Tensor:
        """Copy this step's noise into the static input, replay the G graph; step_stats.G_KEYS on the device."""
        t = self.cfg.train
        self.z_g.copy_(noise(t.batch_real + t.batch_fake, self.cfg.model.latent_dim, self.dist.device,
                             self.cfg.seed, step, self.dist.rank, G_NOISE))
        return self._run(self.graph_g, self._g_body, self.opt_g)

    def _run(self, graph, body, opt: torch.optim.Optimizer) -> torch.Tensor:
        """Replay `graph`; without one (capture=False, the CPU tests) run `body` eagerly instead."""
        if graph is None:
            opt.zero_grad(set_to_none=True)
            return body()
        graph.replay()
        return self.out_d if graph is self.graph_d else self.out_g
