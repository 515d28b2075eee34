"""Worker for test_dist_reductions.py: each rank of a torchrun group of 2 reduces rank-dependent values.

Writes {"rank", "world", "mean", "sum", "max", "any_from_rank1", "stop_at"} to rank<r>.json in
$REDUCE_OUT: one file per rank, because two ranks printing to one pipe can interleave their lines.
"""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

from capsgan_dist.config import load_config
from capsgan_dist.dist import setup
from capsgan_dist.stop import StopFlag

cfg = load_config(os.environ["CAPSGAN_CONFIG"], [])
dist = setup(cfg)
r = dist.rank
values = {"a": 1.0 + r, "b": 10.0 * (r + 1)}
out = {"rank": r, "world": dist.world, "mean": dist.mean(values), "sum": dist.sum(values),
       "max": dist.max({"a": 5.0 - 3 * r, "b": 2.0 + r}), "any_from_rank1": dist.any(r == 1)}
with StopFlag() as stop:
    stop_at = None
    for done in range(1, 31):
        if r == 1 and done == 12:
            os.kill(os.getpid(), signal.SIGUSR1)  # only rank 1 is signalled, at step 12
        if stop.agreed(dist, done, every=5):
            stop_at = done
            break
out["stop_at"] = stop_at
(Path(os.environ["REDUCE_OUT"]) / f"rank{r}.json").write_text(json.dumps(out))
dist.shutdown()
