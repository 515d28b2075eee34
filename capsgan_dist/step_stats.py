"""Step statistics kept on the device and read to the host once per log window.

Reading a loss with `.item()` makes the CPU wait until the GPU has run every kernel queued so far,
so the next step's kernels cannot be queued ahead; at the paper's batch of 32 such waits, not the
arithmetic, set the step time. Here each step only adds its statistics into one small float64
tensor on the device (a handful of tiny kernels, no wait); `read()` copies it in one transfer.

Non-finite steps (a non-finite gradient norm: the optimizer skipped the update on the device,
capsgan_dist/optim.py) are counted there too: the current run of them in a row, the total, and the
step at which a run first reached `limit`, so the loop can stop later and still name the steps.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

D_KEYS = ("loss_d", "acc_d", "d_real", "d_fake", "gnorm_d")  # a D step's statistics, in this order
G_KEYS = ("loss_g", "gnorm_g")  # a G step's; the gradient norm comes last in both
_D, _G = slice(0, 5), slice(5, 7)
_RUN, _SKIPPED, _HIT = 7, 8, 9


@dataclass(frozen=True)
class WindowStats:
    """What one read returns: per-key means over the window, and the non-finite bookkeeping."""

    means: dict[str, float]
    """Mean of each statistic over the window's steps that produced it (D keys over D steps, ...)."""
    images: float
    """Images through the models in the window (real + fake of D steps, latents of G steps)."""
    skipped: int
    """Non-finite steps since the process started (each one skipped)."""
    nonfinite_hit: int | None
    """Step (1-based) at which a run of non-finite steps first reached the limit, else None."""


class StepStats:
    """Accumulates the D/G step statistics of a log window on the device."""

    def __init__(self, device: torch.device, limit: int):
        self.limit = limit
        # [sums of D_KEYS (5), sums of G_KEYS (2), current run, skipped, hit step or -1]
        self._acc = torch.zeros(10, dtype=torch.float64, device=device)
        self._acc[_HIT] = -1
        self._counts = {"d": 0, "g": 0}  # host-side: known without asking the device
        self._images = 0.0

    def record(self, step: int, d: torch.Tensor | None, g: torch.Tensor | None, images: float) -> None:
        """Add one step's statistics: `d` (5,) as D_KEYS, `g` (2,) as G_KEYS, either may be None."""
        ok = None
        for name, part, values in (("d", _D, d), ("g", _G, g)):
            if values is None:
                continue
            self._acc[part].add_(values)  # float32 values summed in float64, as Python floats were
            self._counts[name] += 1
            finite = torch.isfinite(values[-1])  # the gradient norm
            ok = finite if ok is None else ok & finite
        self._images += images
        if ok is None:
            return
        bad = ok.logical_not()
        run, skipped, hit = self._acc[_RUN], self._acc[_SKIPPED], self._acc[_HIT]  # views
        run.add_(1).mul_(bad)  # +1 on a non-finite step, back to 0 on a finite one
        skipped.add_(bad)
        hit.copy_(torch.where((run == self.limit) & (hit < 0), float(step + 1), hit))

    def read(self) -> WindowStats:
        """The window so far and the non-finite counters: one device-to-host copy."""
        values = self._acc.tolist()
        means: dict[str, float] = {}
        for name, keys, part in (("d", D_KEYS, _D), ("g", G_KEYS, _G)):
            if self._counts[name]:
                means.update({k: s / self._counts[name] for k, s in zip(keys, values[part])})
        hit = int(values[_HIT])
        return WindowStats(means, self._images, int(values[_SKIPPED]), hit if hit >= 0 else None)

    def new_window(self) -> None:
        """Start the next log window (the non-finite counters carry over)."""
        self._acc[:_RUN] = 0
        self._counts = {"d": 0, "g": 0}
        self._images = 0.0
