"""Training progress on stderr: a tqdm bar on a terminal, a plain line every N seconds elsewhere.

A bar redraws itself with carriage returns; in a log file (a batch job, `2> log`) each redraw is
one more line, hundreds per run. When stderr is not a terminal we print a line every
`train.progress_every_s` seconds instead, and one at the end.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from typing import TextIO

from tqdm.auto import tqdm


class Progress:
    """`update()` / `set_postfix()` / `close()`, like a tqdm bar; silent when not `enabled`."""

    def __init__(self, total: int, initial: int, desc: str, enabled: bool, every_s: float,
                 stream: TextIO | None = None, clock: Callable[[], float] = time.monotonic, unit: str = "step"):
        self.stream = stream if stream is not None else sys.stderr
        self.total, self.n, self.desc, self.every_s, self.clock = total, initial, desc, every_s, clock
        self.unit = unit
        self.enabled = enabled
        self.postfix: dict[str, str] = {}
        self.bar = None
        if enabled and self.stream.isatty():
            self.bar = tqdm(total=total, initial=initial, dynamic_ncols=True, desc=desc, file=self.stream,
                            unit="it" if unit == "step" else unit)
        self.t0 = self.last = clock()
        self.n0 = self.printed = initial

    def update(self, n: int = 1) -> None:
        self.n += n
        if self.bar is not None:
            self.bar.update(n)
        elif self.enabled and self.n < self.total and self.clock() - self.last >= self.every_s:
            self._line()  # the last step's line waits for close(): the loop logs that step's stats after update()

    def set_postfix(self, values: dict[str, str]) -> None:
        self.postfix = dict(values)
        if self.bar is not None:
            self.bar.set_postfix(values)

    def close(self) -> None:
        """Close the bar, or print the last line if steps were made since the previous one."""
        if self.bar is not None:
            self.bar.close()
        elif self.enabled and self.n != self.printed:
            self._line()

    def _line(self) -> None:
        now = self.clock()
        rate = (self.n - self.n0) / max(now - self.t0, 1e-9)
        stats = " ".join(f"{k}={v}" for k, v in self.postfix.items())
        print(f"{self.desc}: {self.unit} {self.n}/{self.total} ({100 * self.n / max(self.total, 1):.0f}%), "
              f"{rate:.3g} {self.unit}s/s{', ' + stats if stats else ''}", file=self.stream, flush=True)
        self.last, self.printed = now, self.n
