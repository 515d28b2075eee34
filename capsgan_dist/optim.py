"""Adam as the training loop uses it: fused, non-finite updates skipped on the device, and state
that loads into a run of any mode (eager or CUDA graphs, CPU or GPU) whichever mode wrote it.

- Fused Adam (one kernel over all parameters) is the only torch Adam that takes a `found_inf`
  tensor and skips the whole update (weights, both moments and the step count) when it is
  non-zero, on the device: the same mechanism a GradScaler uses. The loop sets it from the
  gradient norm, so a NaN/inf step is skipped with no host read between backward and step, in
  the eager loop and inside a captured CUDA graph alike. It differs from the default (foreach)
  Adam by float rounding only.
- `Optimizer.load_state_dict` replaces the param groups, implementation flags included, with the
  saved ones: a checkpoint of a CUDA-graph run would bring `capturable=True` into a run without
  graphs (or on CPU), where Adam's step then fails. A load hook puts this run's flags back.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch

IMPLEMENTATION_FLAGS = ("capturable", "fused", "foreach")


def build_adam(params: Iterable[torch.nn.Parameter], lr: float, betas: tuple[float, float],
               fused: bool) -> torch.optim.Adam:
    """Adam with the loop's implementation (fused unless DeepSpeed owns the step), loadable from any mode."""
    opt = torch.optim.Adam(params, lr, betas=betas, fused=fused or None)
    keep_implementation_on_load(opt)
    return opt


def keep_implementation_on_load(opt: torch.optim.Optimizer) -> None:
    """After every load_state_dict, give `opt` back the implementation flags it has now."""
    mine = [{k: group[k] for k in IMPLEMENTATION_FLAGS if k in group} for group in opt.param_groups]

    def restore(o: torch.optim.Optimizer) -> None:
        for group, flags in zip(o.param_groups, mine):
            group.update(flags)
            # Adam keeps `step` on the parameter's device when capturable or fused, else on the CPU
            # (torch's "special device hosting for step"); float32 either way, so values are exact.
            on_device = bool(group.get("capturable") or group.get("fused"))
            for p in group["params"]:
                step = o.state.get(p, {}).get("step")
                if torch.is_tensor(step):
                    o.state[p]["step"] = step.to(p.device if on_device else "cpu", torch.float32)

    opt.register_load_state_dict_post_hook(restore)


def _torch_optimizer(opt) -> torch.optim.Optimizer | None:
    inner = getattr(opt, "optimizer", opt)  # Accelerate wraps the torch optimizer
    return inner if isinstance(inner, torch.optim.Optimizer) else None


def skips_on_device(opt) -> bool:
    """True if `opt` can skip a non-finite update on the device (a fused torch optimizer)."""
    inner = _torch_optimizer(opt)
    return inner is not None and getattr(inner, "_step_supports_amp_scaling", False) and all(
        g.get("fused") for g in inner.param_groups)


def step_if_finite(opt, norm: torch.Tensor | float | None, acc=None) -> None:
    """`opt.step()` unless the gradient norm is non-finite; no host read where the optimizer allows it.

    - an fp16 GradScaler (on `acc`) skips inf/nan steps itself and must see them to lower its scale;
    - fused Adam: `found_inf = !isfinite(norm)` on the device, and the kernel skips the update;
    - otherwise (DeepSpeed, other optimizers) the norm is read on the host, as before.
    """
    if getattr(acc, "scaler", None) is not None:
        opt.step()
        return
    if skips_on_device(opt) and torch.is_tensor(norm):
        inner = _torch_optimizer(opt)
        inner.found_inf = torch.isfinite(norm).logical_not().float()  # () on the norm's device
        try:
            opt.step()
        finally:
            del inner.found_inf  # a later step (or a GradScaler) must not see a stale flag
        return
    if math.isfinite(float(norm) if norm is not None else math.nan):
        opt.step()


def grad_norm(model: torch.nn.Module, clip: float, acc=None) -> torch.Tensor | float | None:
    """Total gradient 2-norm, clipping to `clip` first unless it is inf; no host read.

    Through the Accelerator (`acc`) when given: it unscales fp16 gradients and, under DeepSpeed,
    returns the norm the engine computed.
    """
    if acc is not None:
        return acc.clip_grad_norm_(model.parameters(), clip)
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    if math.isinf(clip):
        return torch.nn.utils.get_total_norm(grads)
    return torch.nn.utils.clip_grad_norm_([p for p in model.parameters() if p.grad is not None], clip)
