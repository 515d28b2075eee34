"""One Ray Tune trial: build its training config, prepare its run folder, run `train()` and report.

The trial's run folder (`<trial dir>/<sweep>-<trial id>`) is an ordinary `capsgan train` run folder: config.yaml,
metrics.jsonl, checkpoints/. Its checkpoints are the source of truth for resuming: a retried or
resumed trial continues from its newest valid checkpoint. Every new checkpoint is also reported to
Tune as a copy, so Population Based Training can clone it into another trial (exploit), which then
continues from those weights with its own, perturbed learning rates.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from capsgan_dist import checkpoint
from capsgan_dist.config import Config
from capsgan_dist.errors import ConfigError

ORIGIN = "origin.json"  # inside a reported Tune checkpoint: which trial and step it came from
RESTORED = "restored_from.json"  # in a run folder: the foreign checkpoint it was last cloned from
ATTEMPTS = "attempts.jsonl"  # in a run folder: one line per start of this trial (retries, resumes)
SUMMARY = "summary.json"  # in a run folder: what train() returned


def run_folder(trial_dir: Path, sweep_name: str, trial_id: str) -> Path:
    """A trial's run folder: inside its Tune trial folder, named (like its W&B run) after sweep and trial."""
    return trial_dir / f"{sweep_name}-{trial_id}"


def proxy_d_gap(metrics: dict[str, float]) -> float | None:
    """|mean D(x) - mean D(G(z))| over the last log window: how easily D tells real from fake.

    A stand-in until the classifier FID exists. Lower means D separates the two less, which is
    where a GAN near equilibrium sits; but a D that learned nothing also scores ~0, and the value
    depends on D's own strength, so it is a training-health proxy, not a sample-quality measure.
    """
    if "d_real" not in metrics or "d_fake" not in metrics:
        return None
    return abs(metrics["d_real"] - metrics["d_fake"])


def plain(value: Any) -> Any:
    """A numpy scalar from Tune's samplers as a plain Python value (YAML- and OmegaConf-safe)."""
    return value.item() if hasattr(value, "item") else value


def trial_config(base: dict, params: dict[str, Any], **fixed: Any) -> Config:
    """The base training config with the trial's sampled `params` and `fixed` dotted keys set."""
    merged = OmegaConf.merge(OmegaConf.structured(Config), OmegaConf.create(base))
    for key, value in {**params, **fixed}.items():
        nested: Any = plain(value)
        for part in reversed(key.split(".")):
            nested = {part: nested}
        try:
            merged = OmegaConf.merge(merged, OmegaConf.create(nested))
        except OmegaConfBaseException as e:
            raise ConfigError(f"cannot set {key}={value!r} in the training config: {str(e).splitlines()[0]}") from None
    try:
        return OmegaConf.to_object(merged)
    except OmegaConfBaseException as e:
        raise ConfigError(f"invalid trial config: {str(e).splitlines()[0]}") from None


def prepare_run_dir(run_dir: Path, restore: Path | None, trial_id: str) -> dict:
    """Put the right checkpoint in place before training; returns the attempt record.

    A Tune checkpoint from another trial (PBT exploit) replaces this run's checkpoints, unless it
    was already copied in (a retry right after the exploit). A checkpoint of this trial itself is
    only copied when the run folder has none of its own.
    """
    ckpt_root = run_dir / "checkpoints"
    ckpt_root.mkdir(parents=True, exist_ok=True)
    record: dict[str, Any] = {"time": time.time(), "pid": os.getpid(), "cloned_from": None}
    if restore is not None:
        origin = json.loads((restore / ORIGIN).read_text())
        src = restore / f"step_{origin['step']:07d}"
        already = (run_dir / RESTORED).is_file() and json.loads((run_dir / RESTORED).read_text()) == origin
        foreign = origin["trial_id"] != trial_id
        if (foreign and not already) or checkpoint.latest_valid(ckpt_root) is None:
            for old in checkpoint.list_checkpoints(ckpt_root):
                shutil.rmtree(old)
            shutil.copytree(src, ckpt_root / src.name)
            if foreign:
                (run_dir / RESTORED).write_text(json.dumps(origin))
                record["cloned_from"] = origin
    found = checkpoint.latest_valid(ckpt_root)
    record["resume_step"] = int(found[1]["step"]) if found else 0
    with open(run_dir / ATTEMPTS, "a") as f:
        f.write(json.dumps(record) + "\n")
    return record


class Reporter:
    """`on_log` for train(): adds the proxy metric, finds the sweep metric, reports.

    The sweep metric may come from the logged scalars, or from a row that something else in the
    loop wrote to the run's metrics.jsonl (e.g. `eval/fid` from the evaluation hook, every N steps);
    between two such rows its latest value is carried forward.
    `send(metrics, checkpoint_dir)` is tune.report or ray.train.report.

    With `checkpoints` on (PBT), only logs that can carry a new run checkpoint are reported, with a
    copy of it attached (the first log after it was written: train() logs a step before it saves
    it), plus the last log at the end. PBT clones a function trainable through the checkpoint of its
    latest report; were most reports checkpoint-less, a clone would usually find none.
    """

    def __init__(self, run_dir: Path, trial_id: str, metric: str, send, checkpoints: bool):
        self.run_dir, self.trial_id, self.metric = run_dir, trial_id, metric
        self.send, self.checkpoints = send, checkpoints
        self.last_metric: float | None = None
        self.unsent: dict | None = None  # PBT: the newest log not reported (no new checkpoint)
        self._offset = 0  # how far metrics.jsonl has been read
        found = checkpoint.latest_valid(run_dir / "checkpoints")
        self.reported_step = int(found[1]["step"]) if found else 0

    def _metric_from_file(self) -> float | None:
        """The newest value of the metric in rows appended to metrics.jsonl since the last call."""
        path = self.run_dir / "metrics.jsonl"
        if not path.is_file():
            return None
        with open(path, "rb") as f:
            f.seek(self._offset)
            chunk = f.read()
        complete = chunk[: chunk.rfind(b"\n") + 1]  # a torn last line is read next time
        self._offset += len(complete)
        value = None
        for line in complete.decode(errors="replace").splitlines():
            try:
                value = json.loads(line).get(self.metric, value)
            except json.JSONDecodeError:
                continue
        return value

    def __call__(self, step: int, metrics: dict[str, float]) -> None:
        out = {**metrics, "step": step}
        proxy = proxy_d_gap(metrics)
        if proxy is not None:
            out["proxy_d_gap"] = proxy
        value = out[self.metric] if self.metric in out else self._metric_from_file()
        if value is not None:
            self.last_metric = value
        if self.last_metric is not None:
            out[self.metric] = self.last_metric
        self._send(out)

    def _send(self, out: dict) -> None:
        if not self.checkpoints:
            self.send(out, None)
            return
        newest = checkpoint.list_checkpoints(self.run_dir / "checkpoints")
        step = int(newest[-1].name.split("_")[1]) if newest else 0
        if step <= self.reported_step:
            self.unsent = out
            return
        # PBT counts time in `checkpoint_step`, so it decides on reports that carry that checkpoint.
        with tempfile.TemporaryDirectory(prefix="capsgan-ckpt-") as tmp:
            shutil.copytree(newest[-1], Path(tmp) / newest[-1].name)
            (Path(tmp) / ORIGIN).write_text(json.dumps({"trial_id": self.trial_id, "step": step}))
            self.send({**out, "checkpoint_step": step}, tmp)  # Tune copies the folder before returning
        self.reported_step, self.unsent = step, None

    def finish(self, summary: dict) -> None:
        """Report the last log if it was held back, and write the summary.

        The final checkpoint is not reported: PBT must not clone at the very end (the clone would
        not train at all, yet show its new lrs next to the donor's metric).
        """
        if self.unsent is not None:
            self.send({**self.unsent, "checkpoint_step": self.reported_step}, None)
            self.unsent = None
        (self.run_dir / SUMMARY).write_text(json.dumps(summary, indent=1, default=str))


def _tune_send(metrics: dict, ckpt_dir: str | None) -> None:
    from ray import tune

    tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(ckpt_dir) if ckpt_dir else None)


def run_trial(params: dict[str, Any], base: dict, meta: dict) -> None:
    """The Tune function trainable: one trial of the sweep (retried and resumed by Tune)."""
    from ray import tune

    ctx = tune.get_context()
    trial_id = ctx.get_trial_id()
    # get_trial_dir() is a staging folder that Tune copies to storage; the run lives in storage itself.
    run_dir = run_folder(Path(meta["exp_dir"]) / Path(ctx.get_trial_dir()).name, meta["name"], trial_id)
    cfg = trial_config(base, params, **{"name": run_dir.name, "train.run_dir": str(run_dir), "resume": "auto",
                                        "train.progress": False})
    restore = tune.get_checkpoint()
    if restore is not None:
        with restore.as_directory() as d:
            prepare_run_dir(run_dir, Path(d), trial_id)
    else:
        prepare_run_dir(run_dir, None, trial_id)
    if meta["workers_per_trial"] > 1:
        _run_torch_trainer(cfg, run_dir, trial_id, meta)
        return
    from capsgan_dist.train import train

    reporter = Reporter(run_dir, trial_id, meta["metric"], _tune_send, checkpoints=meta["tune_checkpoints"])
    summary = train(cfg, on_log=reporter)
    reporter.finish(summary)


def _worker(loop_config: dict) -> None:
    """One Ray Train worker: the same train() loop; Ray has set RANK/WORLD_SIZE and the gloo/NCCL group."""
    import ray.train

    from capsgan_dist.train import train

    cfg = trial_config(loop_config["cfg"], {})
    run_dir = Path(cfg.train.run_dir)
    reporter = Reporter(run_dir, loop_config["trial_id"], loop_config["metric"],
                        lambda m, _c: ray.train.report(m), checkpoints=False)
    summary = train(cfg, on_log=reporter)  # every rank logs at the same steps: report is a barrier
    if ray.train.get_context().get_world_rank() == 0:
        reporter.finish(summary)


def _run_torch_trainer(cfg: Config, run_dir: Path, trial_id: str, meta: dict) -> None:
    """Run the trial as a TorchTrainer of `workers_per_trial` workers; rank 0's metrics reach Tune."""
    from ray.train import FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer
    from ray.tune.integration.ray_train import TuneReportCallback

    from capsgan_dist.config import to_dict

    gpus = meta["gpus_per_trial"]
    trainer = TorchTrainer(
        _worker,
        train_loop_config={"cfg": to_dict(cfg), "trial_id": trial_id, "metric": meta["metric"]},
        torch_config=TorchConfig(backend="nccl" if gpus > 0 else "gloo"),
        scaling_config=ScalingConfig(num_workers=meta["workers_per_trial"], use_gpu=gpus > 0,
                                     resources_per_worker={"CPU": meta["cpus_per_trial"], "GPU": gpus}),
        run_config=RunConfig(name="train", storage_path=str(run_dir.parent), callbacks=[TuneReportCallback()],
                             failure_config=FailureConfig(max_failures=0)),  # Tune does the retrying
    )
    trainer.fit()
