"""Trackers: where the main process sends metrics and images. Other ranks get a NullTracker.

`metrics.jsonl` is always written (flushed per row); W&B is optional and imported lazily.
A tracker failing mid-run (e.g. W&B unreachable) never stops training: it warns once and the
local files stay complete.
"""

from __future__ import annotations

import atexit
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from capsgan_dist.errors import warn


class NullTracker:
    """Does nothing: what ranks other than the main one use, so the loop never asks its rank."""

    def log(self, step: int, scalars: dict[str, float]) -> None:
        pass

    def log_image(self, step: int, key: str, grid: torch.Tensor, caption: str = "") -> None:
        pass

    def finish(self) -> None:
        pass

    def closing_note(self) -> str | None:
        """What the run's closing line should say about this tracker (e.g. how to upload it), if anything."""
        return None


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
        mode, why = resolve_mode(t.mode, os.environ.get("WANDB_MODE"), _has_wandb_key)
        if why:
            warn(why)
        self._wandb = wandb
        # W&B's banner, run links and history sparklines would drown the run's own output (30+
        # lines for a 20-step run): silent unless tracking.wandb_console; closing_note says the rest.
        settings = None if t.wandb_console else wandb.Settings(silent=True)
        self.run = wandb.init(project=t.project, entity=t.entity, group=t.group, tags=list(t.tags),
                              notes=t.notes, name=run_dir.name, dir=str(run_dir), mode=mode,
                              config=run_config, id=resume_id, resume="allow" if resume_id else None,
                              settings=settings)
        (run_dir / "wandb_id.txt").write_text(self.run.id)
        self.mode, self.run_folder = mode, Path(self.run.dir).parent  # wandb/offline-run-<time>-<id>
        self._broken = self._finished = False
        # A process that ends without finish() (a sweep trial stopped by its scheduler, whose W&B service
        # may be gone first): tear W&B down quietly. Registered after W&B's own exit hook, so it runs
        # first, and W&B's hook, which would print "ConnectionResetError: Connection lost", is dropped.
        atexit.register(self._quiet_teardown)

    def _safely(self, fn, *args, force: bool = False, **kwargs) -> None:
        if self._broken and not force:
            return
        try:
            fn(*args, **kwargs)
        except Exception as e:  # W&B outages must not stop training
            self._broken = True
            warn(f"W&B logging failed ({type(e).__name__}: {e}); continuing with local "
                 "metrics only")

    def log(self, step: int, scalars: dict[str, float]) -> None:
        self._safely(self.run.log, dict(scalars), step=step)

    def log_image(self, step: int, key: str, grid: torch.Tensor, caption: str = "") -> None:
        img = grid.permute(1, 2, 0).cpu().numpy()
        self._safely(lambda: self.run.log({key: self._wandb.Image(img, caption=caption)}, step=step))

    def finish(self) -> None:
        self._safely(self.run.finish, force=True)  # even after a failed log: flush what was logged
        # Stop W&B's service now: left to interpreter exit, its atexit hook finds the service gone
        # in short-lived processes (sweep trials) and prints "ConnectionResetError: Connection lost".
        self._safely(self._wandb.teardown, force=True)
        self._finished = True

    def _quiet_teardown(self) -> None:
        if self._finished:
            return
        try:
            self._wandb.teardown()
        except Exception:  # the service died with the process group: nothing left to flush
            pass

    def closing_note(self) -> str | None:
        if self.mode == "offline":
            return f"W&B offline run: upload with `wandb sync {self.run_folder}`"
        return f"W&B: {self.run.url}" if self.mode == "online" and self.run.url else None


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

    def closing_note(self) -> str | None:
        notes = [n for t in self.trackers if (n := t.closing_note())]
        return "; ".join(notes) or None


def resolve_mode(config_mode: str, env_mode: str | None, has_key: Callable[[], bool]) -> tuple[str, str | None]:
    """The W&B mode to use (WANDB_MODE beats tracking.mode) and, if we fell back to offline, why."""
    mode = env_mode or config_mode
    if mode == "dryrun":  # W&B's old spelling of offline
        mode = "offline"
    if mode == "online" and not has_key():
        source = "WANDB_MODE=online" if env_mode else "tracking.mode=online"
        return "offline", (f"{source} but no W&B API key is set (WANDB_API_KEY, `wandb login` or a "
                           "netrc entry); logging offline instead (upload later with `wandb sync`)")
    return mode, None


def _has_wandb_key() -> bool:
    """True if W&B would find credentials: the environment, or a netrc entry for the W&B host."""
    if os.environ.get("WANDB_API_KEY") or os.environ.get("WANDB_IDENTITY_TOKEN_FILE"):
        return True
    host = os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai")
    try:
        from wandb.sdk.lib.wbauth import read_netrc_auth  # where wandb 0.31 reads ~/.netrc / $NETRC

        return bool(read_netrc_auth(host=host))
    except ImportError:  # an older or newer wandb: read the netrc file ourselves
        netrc = Path(os.environ.get("NETRC") or Path.home() / ".netrc").expanduser()
        return netrc.is_file() and host.split("//")[-1] in netrc.read_text()
    except Exception:  # a malformed key in the netrc file: W&B would not log in with it either
        return False


def gpu_memory(dist: Any) -> dict[str, float]:
    """Peak allocated and peak reserved GPU memory since the process started, in GiB, the max over
    ranks ({} without a GPU). Host values only: no read from the device.

    Collective when there are several ranks: every rank must call it (they all have a GPU or none does).
    """
    if dist.device.type != "cuda":
        return {}
    gib = 2**30
    return dist.max({"gpu_mem_alloc_gb": torch.cuda.max_memory_allocated(dist.device) / gib,
                     "gpu_mem_reserved_gb": torch.cuda.max_memory_reserved(dist.device) / gib})


DEBUG_RANK_METRICS_ENV = "CAPSGAN_DEBUG_RANK_METRICS"


def rank_metrics_recorder(run_dir: Path, rank: int) -> Callable[[int, dict[str, float]], None] | None:
    """Debug hook: with CAPSGAN_DEBUG_RANK_METRICS=1, a function writing this rank's pre-reduction values.

    Each call appends `{"step": ..., **values}` to `<run_dir>/debug/rank_metrics_<rank>.jsonl`, so a
    test can check that the logged scalars are the reduction of what each rank computed. Off (None)
    by default; it runs only at logging steps.
    """
    if os.environ.get(DEBUG_RANK_METRICS_ENV) != "1":
        return None
    path = run_dir / "debug" / f"rank_metrics_{rank}.jsonl"
    path.parent.mkdir(parents=True, exist_ok=True)

    def record(step: int, values: dict[str, float]) -> None:
        with open(path, "a") as f:
            f.write(json.dumps({"step": step, **values}) + "\n")

    return record


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
            warn(f"W&B could not start ({type(e).__name__}: {e}); logging locally only")
    return Trackers(*trackers)
