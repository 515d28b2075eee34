"""Trackers: where the main process sends metrics and images. Other ranks get a NullTracker.

`metrics.jsonl` is always written (flushed per row); W&B is optional and imported lazily.
A tracker failing mid-run (e.g. W&B unreachable) never stops training: it warns once and the
local files stay complete.
"""

from __future__ import annotations

import json
import os
import warnings
from pathlib import Path
from typing import Any

import torch


class NullTracker:
    """Does nothing: what ranks other than the main one use, so the loop never asks its rank."""

    def log(self, step: int, scalars: dict[str, float]) -> None:
        pass

    def log_image(self, step: int, key: str, grid: torch.Tensor, caption: str = "") -> None:
        pass

    def finish(self) -> None:
        pass


class LocalTracker(NullTracker):
    """Appends one JSON object per logged step to metrics.jsonl, flushed and fsynced as it goes."""

    def __init__(self, run_dir: Path):
        self.path = run_dir / "metrics.jsonl"
        self._f = open(self.path, "a", buffering=1)

    def log(self, step: int, scalars: dict[str, float]) -> None:
        self._f.write(json.dumps({"step": step, **scalars}) + "\n")
        self._f.flush()
        os.fsync(self._f.fileno())

    def finish(self) -> None:
        self._f.close()


class WandbTracker(NullTracker):
    """One W&B run per job, offline unless mode=online and a key is configured."""

    def __init__(self, cfg: Any, run_dir: Path, run_config: dict, resume_id: str | None = None):
        import wandb

        t = cfg.tracking
        mode = os.environ.get("WANDB_MODE") or t.mode
        if mode == "online" and not _has_wandb_key():
            warnings.warn("tracking.mode=online but no W&B API key is set (WANDB_API_KEY or "
                          "`wandb login`); logging offline instead", stacklevel=2)
            mode = "offline"
        self._wandb = wandb
        self.run = wandb.init(project=t.project, entity=t.entity, group=t.group, tags=list(t.tags),
                              notes=t.notes, name=run_dir.name, dir=str(run_dir), mode=mode,
                              config=run_config, id=resume_id, resume="allow" if resume_id else None)
        (run_dir / "wandb_id.txt").write_text(self.run.id)
        self._broken = False

    def _safely(self, fn, *args, **kwargs) -> None:
        if self._broken:
            return
        try:
            fn(*args, **kwargs)
        except Exception as e:  # W&B outages must not stop training
            self._broken = True
            warnings.warn(f"W&B logging failed ({type(e).__name__}: {e}); continuing with local "
                          "metrics only", stacklevel=3)

    def log(self, step: int, scalars: dict[str, float]) -> None:
        self._safely(self.run.log, dict(scalars), step=step)

    def log_image(self, step: int, key: str, grid: torch.Tensor, caption: str = "") -> None:
        img = grid.permute(1, 2, 0).cpu().numpy()
        self._safely(lambda: self.run.log({key: self._wandb.Image(img, caption=caption)}, step=step))

    def finish(self) -> None:
        self._safely(self.run.finish)


class Trackers(NullTracker):
    """Fans each call out to several trackers."""

    def __init__(self, *trackers: NullTracker):
        self.trackers = trackers

    def log(self, step: int, scalars: dict[str, float]) -> None:
        for t in self.trackers:
            t.log(step, scalars)

    def log_image(self, step: int, key: str, grid: torch.Tensor, caption: str = "") -> None:
        for t in self.trackers:
            t.log_image(step, key, grid, caption)

    def finish(self) -> None:
        for t in self.trackers:
            t.finish()


def _has_wandb_key() -> bool:
    if os.environ.get("WANDB_API_KEY"):
        return True
    netrc = Path.home() / ".netrc"
    return netrc.is_file() and "api.wandb.ai" in netrc.read_text()


def make_tracker(cfg: Any, run_dir: Path, run_config: dict, is_main: bool) -> NullTracker:
    """The tracker for this process: local JSONL (+ W&B) on the main process, nothing elsewhere."""
    if not is_main:
        return NullTracker()
    trackers: list[NullTracker] = [LocalTracker(run_dir)]
    if cfg.tracking.backend == "wandb":
        id_file = run_dir / "wandb_id.txt"
        resume_id = id_file.read_text().strip() if id_file.is_file() else None
        try:
            trackers.append(WandbTracker(cfg, run_dir, run_config, resume_id))
        except Exception as e:
            warnings.warn(f"W&B could not start ({type(e).__name__}: {e}); logging locally only",
                          stacklevel=2)
    return Trackers(*trackers)
