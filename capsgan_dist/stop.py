"""Preemption signals: SIGTERM / SIGINT / SIGUSR1 set a flag; the loop finishes its step, checkpoints, stops.

A signal may reach only some ranks (a node whose task was not signalled), and all ranks must leave
the loop at the same step or the others hang in their next collective. Agreeing takes a
collective (a host wait for the GPU too), so with several processes the ranks compare flags
every `train.stop_check_every` steps, not every step; one process reads its own flag every step.
"""

from __future__ import annotations

import signal

from capsgan_dist.dist import Dist

SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1)


class StopFlag:
    """Set by SIGTERM / SIGINT / SIGUSR1 while the `with` block runs; the old handlers come back after."""

    def __init__(self) -> None:
        self.raised: int | None = None
        self._old = {}

    def __enter__(self) -> StopFlag:
        for s in SIGNALS:
            try:
                self._old[s] = signal.signal(s, self._handle)
            except ValueError:  # not the main thread (e.g. inside some Ray workers)
                pass
        return self

    def _handle(self, signum, _frame) -> None:
        self.raised = signum

    def __exit__(self, *exc) -> None:
        for s, old in self._old.items():
            signal.signal(s, old)

    def agreed(self, dist: Dist, done: int, every: int) -> bool:
        """True on every rank, at the same step, once any rank was signalled (checked after `done` steps)."""
        if dist.world == 1:
            return self.raised is not None
        if done % every:
            return False
        return dist.any(self.raised is not None)
