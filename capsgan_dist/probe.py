"""A debug probe that records what each rank fed its models, for tests of the distributed semantics.

Off unless CAPSGAN_PROBE=1. When on, every rank writes `<run>/probe/rank<R>.pt` at the end of
training with, in order of occurrence:

- ("meta", {"rank": R, "world": W}) first;
- ("init", {"G": state_dict, "D": state_dict}) just before the first forward (after any resume);
- ("G_in", phase, z) for each generator forward in training mode (phase "d": the no-grad fakes of
  a D step, "g": a G step; eval-mode sampling is not recorded);
- ("D_in", phase, x) for each discriminator forward (phase "d": images that carry no gradient,
  i.e. a D step; "g": images that do, i.e. G(z) in a G step);
- ("grads", "G" | "D", {name: grad}) just before a plain torch optimizer steps (i.e. after the
  cross-rank gradient average; DeepSpeed's ZeRO optimizers are not torch optimizers, so not there);
- ("final", {"G": state_dict, "D": state_dict}) when training ends.

It uses forward pre-hooks and optimizer step hooks only, so the training loop is unchanged. Those
hooks copy tensors to the CPU, which a CUDA-graph capture forbids: the probe refuses
`perf.cuda_graphs=true` before any work.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from torch import nn

from capsgan_dist.errors import ConfigError

ENV = "CAPSGAN_PROBE"


def enabled() -> bool:
    return os.environ.get(ENV, "0") == "1"


def check_supported(cfg) -> None:
    """Raise a ConfigError for a run the probe cannot record (CUDA-graph steps), before any work."""
    if enabled() and cfg.perf.cuda_graphs:
        raise ConfigError(f"{ENV}=1 cannot record a perf.cuda_graphs=true run (its hooks copy tensors to the CPU, "
                          f"which graph capture forbids); unset {ENV} or set perf.cuda_graphs=false")


def _state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone().cpu() for k, v in model.state_dict().items()}


class Probe:
    """Records inputs, averaged gradients and parameters of G and D on this rank."""

    def __init__(self, path: Path, rank: int, world: int, G: nn.Module, D: nn.Module, opt_g, opt_d):
        self.path, self.G, self.D = path, G, D
        self.events: list[tuple] = [("meta", {"rank": rank, "world": world})]
        G.register_forward_pre_hook(self._g_in)
        D.register_forward_pre_hook(self._d_in)
        for name, model, opt in (("G", G, opt_g), ("D", D, opt_d)):
            inner = getattr(opt, "optimizer", opt)  # Accelerate wraps the torch optimizer
            if isinstance(inner, torch.optim.Optimizer):
                inner.register_step_pre_hook(self._grads_hook(name, model))

    def _snapshot_init(self) -> None:
        if len(self.events) == 1:
            self.events.append(("init", {"G": _state(self.G), "D": _state(self.D)}))

    def _g_in(self, module: nn.Module, args: tuple) -> None:
        if module.training:
            self._snapshot_init()
            self.events.append(("G_in", "g" if torch.is_grad_enabled() else "d", args[0].detach().clone().cpu()))

    def _d_in(self, module: nn.Module, args: tuple) -> None:
        self._snapshot_init()
        x = args[0]
        self.events.append(("D_in", "g" if x.requires_grad else "d", x.detach().clone().cpu()))

    def _grads_hook(self, name: str, model: nn.Module):
        def hook(_opt, _args, _kwargs) -> None:
            grads = {k: p.grad.detach().clone().cpu() for k, p in model.named_parameters() if p.grad is not None}
            self.events.append(("grads", name, grads))
        return hook

    def close(self) -> None:
        """Write the events and the final parameters of both models."""
        self.events.append(("final", {"G": _state(self.G), "D": _state(self.D)}))
        self.path.parent.mkdir(parents=True, exist_ok=True)
        torch.save(self.events, self.path)


class _NoProbe:
    def close(self) -> None:
        pass


def attach(run_dir: Path, dist, G: nn.Module, D: nn.Module, opt_g, opt_d) -> Probe | _NoProbe:
    """A Probe on the unwrapped G and D when CAPSGAN_PROBE=1, else an object that does nothing."""
    if not enabled():
        return _NoProbe()
    return Probe(Path(run_dir) / "probe" / f"rank{dist.rank}.pt", dist.rank, dist.world, G, D, opt_g, opt_d)
