"""Process-group and Accelerator setup: the only module that knows how training is distributed.

G and D each get an Accelerator that shares one process state. That is Accelerate's documented
layout for several models under DeepSpeed, and with plain DDP it costs nothing: the loop always
calls `acc_g.backward(...)` / `acc_d.backward(...)` and never asks which backend is active.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass

import torch
import torch.distributed as torch_dist
from accelerate import Accelerator
from accelerate.utils import DistributedType

from capsgan_dist.config import Config
from capsgan_dist.errors import ConfigError
from capsgan_dist.threads import choose_threads


@dataclass
class Dist:
    """The two Accelerators (sharing one process group) and where this process sits in it."""

    acc_g: Accelerator
    acc_d: Accelerator
    threads_from: str = ""
    """Why torch has the intra-op threads it has (threads.py), for environment.json."""

    @property
    def rank(self) -> int:
        return self.acc_g.process_index

    @property
    def world(self) -> int:
        return self.acc_g.num_processes

    @property
    def is_main(self) -> bool:
        return self.acc_g.is_main_process

    @property
    def device(self) -> torch.device:
        return self.acc_g.device

    @property
    def deepspeed(self) -> bool:
        """True when DeepSpeed engines own the optimizers (their step is not a torch optimizer's)."""
        return self.acc_d.distributed_type == DistributedType.DEEPSPEED

    def barrier(self) -> None:
        self.acc_g.wait_for_everyone()

    def mean(self, values: dict[str, float]) -> dict[str, float]:
        """Mean of each scalar over all ranks (every rank gets the same result)."""
        return self._reduce(values, "mean")

    def sum(self, values: dict[str, float]) -> dict[str, float]:
        """Sum of each scalar over all ranks."""
        return self._reduce(values, "sum")

    def max(self, values: dict[str, float]) -> dict[str, float]:
        """Maximum of each scalar over all ranks."""
        return self._reduce(values, "max")

    def _reduce(self, values: dict[str, float], op: str) -> dict[str, float]:
        keys = sorted(values)
        if not values or self.world == 1:  # nothing to agree on: no trip through the device
            return {k: float(values[k]) for k in keys}
        t = torch.tensor([float(values[k]) for k in keys], dtype=torch.float64, device=self.device)
        if op == "max":  # Accelerate's reduce knows sum and mean only
            t = self.acc_g.gather(t[None]).amax(dim=0)  # (world, n) -> (n,)
        else:
            t = self.acc_g.reduce(t, reduction=op)
        return dict(zip(keys, t.tolist()))

    def any(self, flag: bool) -> bool:
        """True on every rank if `flag` is true on any rank."""
        return self.sum({"f": float(flag)})["f"] > 0

    def gather(self, t: torch.Tensor) -> torch.Tensor:
        """Concatenate a tensor from all ranks along dim 0 (rank order)."""
        return self.acc_g.gather(t.contiguous())

    def shutdown(self) -> None:
        """Destroy the process group so no rank aborts at interpreter exit."""
        self.barrier()
        self.acc_g.end_training()
        if torch_dist.is_available() and torch_dist.is_initialized():
            torch_dist.destroy_process_group()


def _deepspeed_requested() -> bool:
    return os.environ.get("ACCELERATE_USE_DEEPSPEED", "false").lower() == "true"


def setup(cfg: Config) -> Dist:
    """Create the Accelerators for G and D from the launch environment and the config."""
    threads, threads_from = choose_threads(cfg.perf.cpu_threads)
    torch.set_num_threads(threads)
    mp = cfg.train.mixed_precision
    if mp == "fp16" and not torch.cuda.is_available():  # Accelerate would silently train in fp32
        raise ConfigError("train.mixed_precision=fp16 needs a GPU (fp16 autocast with loss scaling); "
                          "on CPU use train.mixed_precision=bf16 or no")
    cpu = not torch.cuda.is_available()
    if cpu:
        # Accelerate imports DeepSpeed whenever it is installed, and DeepSpeed's accelerator
        # auto-detection then logs "Setting accelerator to CPU" in every process. Naming the
        # accelerator it would pick anyway keeps a run's output ours.
        os.environ.setdefault("DS_ACCELERATOR", "cpu")
    if _deepspeed_requested():
        from capsgan_dist.deepspeed_setup import deepspeed_accelerators

        acc_g, acc_d = deepspeed_accelerators(cfg)
    else:
        acc_g = Accelerator(mixed_precision=mp, cpu=cpu)
        acc_d = Accelerator(mixed_precision=mp, cpu=cpu)  # shares acc_g's process state
    return Dist(acc_g, acc_d, threads_from)


def seed_for(*parts: int) -> int:
    """A 63-bit seed derived from integers (seed, step, rank, ...), stable across runs."""
    h = hashlib.blake2b(",".join(map(str, parts)).encode(), digest_size=8).digest()
    return int.from_bytes(h, "little") & ((1 << 63) - 1)


def noise(n: int, dim: int, device: torch.device, *key: int) -> torch.Tensor:
    """N(0, 1) latents that depend only on `key` (e.g. seed, step, rank): resumes redraw them exactly.

    Drawn on `device` by a generator of that device, so a GPU run copies nothing from the host.
    The values depend on the device kind (CPU and CUDA generators differ), never on its state.
    """
    g = torch.Generator(device=device).manual_seed(seed_for(*key))
    return torch.randn(n, dim, generator=g, device=device)


def scaled_lr(lr: float, rule: str, world: int) -> float:
    """Learning rate after the optional world-size scaling rule (none | linear | sqrt)."""
    return {"none": lr, "linear": lr * world, "sqrt": lr * world**0.5}[rule]
