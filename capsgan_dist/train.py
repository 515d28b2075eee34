"""The training run: `train(cfg) -> summary`, used by the CLI, the launch scripts and Ray Tune.

Reads top to bottom: set-up, data, models, resume, the loop (D step / G step), outputs.
Everything that differs between one process, N GPUs, N nodes or DeepSpeed lives in `dist.py`.
"""

from __future__ import annotations

import functools
import json
import math
import sys
import time
from collections.abc import Callable
from datetime import datetime
from pathlib import Path

import torch
from accelerate.utils import broadcast_object_list

from capsgan_dist import checkpoint, optim, plots, provenance
from capsgan_dist import probe as debug_probe
from capsgan_dist.config import Config, TrainConfig, model_hash, to_dict, to_yaml
from capsgan_dist.data import load_images, load_splits
from capsgan_dist.dist import Dist, noise, scaled_lr, setup
from capsgan_dist.errors import CheckpointError, NonFiniteError, UserError
from capsgan_dist.loader import DeviceBatches
from capsgan_dist.metrics.evaluate import LoopEval
from capsgan_dist.models import build_discriminator, build_generator
from capsgan_dist.progress import Progress
from capsgan_dist.step_stats import StepStats, WindowStats
from capsgan_dist.steps import EagerSteps, iteration
from capsgan_dist.stop import StopFlag
from capsgan_dist.tracking import gpu_memory, make_tracker, rank_metrics_recorder

PREEMPTED_EXIT_CODE = 75  # EX_TEMPFAIL: "stopped on a signal, checkpoint saved, resume me"

# Salts that keep the noise streams of different purposes apart (those of the updates: steps.py).
_FIXED_NOISE, _RANK_GRID_NOISE = 3, 4


def _run_dir(cfg: Config, dist: Dist) -> Path:
    """The run folder, chosen on the main process and shared with every rank."""
    if cfg.train.run_dir:
        path = [str(cfg.train.run_dir)]
    else:
        stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
        path = [str(Path(cfg.train.out_dir) / f"{cfg.name}-{stamp}")] if dist.is_main else [None]
        if dist.world > 1:
            broadcast_object_list(path)
    run_dir = Path(path[0])
    if dist.is_main:
        try:
            (run_dir / "samples").mkdir(parents=True, exist_ok=True)
            (run_dir / "checkpoints").mkdir(exist_ok=True)
        except OSError as e:
            raise UserError(f"cannot create run folder {run_dir}: {e.strerror}; set train.out_dir "
                            "(or train.run_dir) to a writable folder") from None
    dist.barrier()
    return run_dir


def _d_updates_before(step: int, schedule: str) -> int:
    """How many D updates (= real batches used) happen in steps [0, step)."""
    return step if schedule == "both" else (step + 1) // 2


def _truncate_metrics(path: Path, step: int) -> None:
    """Drop rows logged after `step` (from a run interrupted after its last checkpoint)."""
    if path.is_file():
        rows = [r for r in plots.read_metrics(path) if r.get("step", 0) <= step]
        checkpoint.write_text_atomic(path, "".join(json.dumps(r) + "\n" for r in rows))


def train(cfg: Config, require_checkpoint: bool = False,
          on_log: Callable[[int, dict[str, float]], None] | None = None) -> dict:
    """Train G and D as configured; returns a summary (run folder, last metrics, wall time)."""
    debug_probe.check_supported(cfg)  # before any work: the probe cannot record captured steps
    dist = setup(cfg)
    try:
        return _train(cfg, dist, require_checkpoint, on_log)
    finally:
        dist.shutdown()


def _train(cfg: Config, dist: Dist, require_checkpoint: bool,
           on_log: Callable[[int, dict[str, float]], None] | None) -> dict:
    t = cfg.train
    if cfg.perf.cuda_graphs:  # refuse unsupported setups before any work
        from capsgan_dist.cuda_graphs import check_supported

        check_supported(cfg, dist)
    torch.manual_seed(cfg.seed)  # identical initial weights on every rank
    # Data: uint8 in memory; each rank gets distinct batches of t.batch_real (loader.py).
    # Before the run folder: a data error leaves no empty run behind. Semi-supervised runs
    # (data.labels_per_class > 0) split it, and the GAN's real images are the unlabeled split.
    splits = load_splits(cfg.data, cfg.seed) if cfg.data.labels_per_class else None
    images = splits.unlabeled_x if splits is not None else load_images(cfg.data)
    batches = DeviceBatches(images, t.batch_real, cfg.seed, dist.device, dist.rank, dist.world)
    run_dir = _run_dir(cfg, dist)
    mhash = model_hash(cfg)

    # Models and optimizers (fused Adam: it skips non-finite updates on the device, optim.py).
    G, D = build_generator(cfg), build_discriminator(cfg)
    betas = (cfg.optim.beta1, cfg.optim.beta2)
    lr_g = scaled_lr(cfg.optim.lr_g, cfg.optim.scale_lr, dist.world)
    lr_d = scaled_lr(cfg.optim.lr_d, cfg.optim.scale_lr, dist.world)
    opt_g = optim.build_adam(G.parameters(), lr_g, betas, fused=not dist.deepspeed)
    opt_d = optim.build_adam(D.parameters(), lr_d, betas, fused=not dist.deepspeed)
    if cfg.perf.compile:  # in place, so state_dict keys (and checkpoints) do not change
        G.compile()
        D.compile()
    G, opt_g = dist.acc_g.prepare(G, opt_g)
    D, opt_d = dist.acc_d.prepare(D, opt_d)
    D_plain = dist.acc_d.unwrap_model(D)  # used in the G step, where D is frozen and not synced
    probe = debug_probe.attach(run_dir, dist, dist.acc_g.unwrap_model(G), D_plain, opt_g, opt_d)

    # Resume.
    start = 0
    found = checkpoint.latest_valid(run_dir / "checkpoints") if (cfg.resume == "auto" or require_checkpoint) else None
    if found:
        start = checkpoint.load_checkpoint(dist, found[0], found[1], mhash)
        # The config's learning rates win over the saved ones (PBT clones, overrides, another world size).
        for opt, lr in ((opt_g, lr_g), (opt_d, lr_d)):
            for group in opt.param_groups:
                group["lr"] = lr
        if dist.is_main:
            print(f"capsgan: resuming {run_dir} from {found[0].name}", file=sys.stderr)
    elif require_checkpoint:
        raise CheckpointError(f"no checkpoint in {run_dir / 'checkpoints'} to resume from (the run stopped "
                              "before its first one); start a new run without --resume")
    if dist.is_main:
        for name in checkpoint.tidy(run_dir / "checkpoints", t.keep_checkpoints, found[0] if found else None,
                                    tuple(t.keep_steps)):
            print(f"capsgan: removed {name}, an unfinished checkpoint of a killed run", file=sys.stderr)
        checkpoint.write_text_atomic(run_dir / "config.yaml", to_yaml(cfg))
        _truncate_metrics(run_dir / "metrics.jsonl", start)
    environment = {"world_size": dist.world, **provenance.environment(), "cpu_threads_from": dist.threads_from}
    if dist.is_main:
        checkpoint.write_text_atomic(run_dir / "environment.json", json.dumps(environment, indent=1))  # for report
    run_config = {**to_dict(cfg), **environment}
    tracker = make_tracker(cfg, run_dir, run_config, dist.is_main)
    record_rank = rank_metrics_recorder(run_dir, dist.rank)  # None unless CAPSGAN_DEBUG_RANK_METRICS=1

    real_batches = batches.stream(_d_updates_before(start, t.schedule))
    fixed_z = noise(t.n_samples, cfg.model.latent_dim, dist.device, cfg.seed, _FIXED_NOISE)
    clip = cfg.optim.grad_clip or math.inf
    evaluate = LoopEval(cfg, dist)  # FID/KID/IS/PR every eval.every steps (off at 0)

    # The D and G updates (steps.py), or the same two captured once and replayed (cuda_graphs.py).
    steps = EagerSteps(cfg, dist, G, D, D_plain, opt_g, opt_d, real_batches, clip)
    if cfg.perf.cuda_graphs:
        from capsgan_dist.cuda_graphs import GraphedSteps

        steps = GraphedSteps(cfg, dist, G, D, opt_g, opt_d, real_batches, clip)
    if splits is not None:  # D also classifies: steps with labeled batches, and the test error (semisup.py)
        from capsgan_dist.semisup import SemiSupervised

        steps = SemiSupervised(cfg, dist, splits, G, D, D_plain, opt_g, opt_d, real_batches, clip)
        evaluate = steps.with_test_error(evaluate)
        if dist.is_main:
            print(f"capsgan: semi-supervised: {splits.info}", file=sys.stderr)

    # The loop. Step statistics stay on the device; the host reads them once per log window
    # (and before a checkpoint), which is also where runs of non-finite steps are caught.
    bar = Progress(t.steps, start, run_dir.name, dist.is_main and t.progress, t.progress_every_s)
    stats = StepStats(dist.device, t.max_nonfinite)
    last: dict[str, float] = {}
    skipped, step = 0, start
    # Training CPU seconds summed over ranks (evaluation, grids and checkpoints left out), carried
    # across resumes in the checkpoint manifest: what a step costs, whatever else shares the machine.
    cpu_total = float(found[1].get("cpu_s", 0.0)) if found else 0.0
    cpu_pending = 0.0  # this rank's, since the last reduction
    preempted = False
    t_window = time.perf_counter()
    t_start = time.perf_counter()
    with StopFlag() as stop:
        for step in range(start, t.steps):
            cpu0 = time.process_time()
            iteration(steps, stats, step, cfg)  # the D and/or G update of this step
            cpu_pending += time.process_time() - cpu0
            done = step + 1
            bar.update(1)

            # Before the log: on_log (a sweep's reporter) must see this step's FID, not the previous one.
            # Its time is left out of the window, so img_s stays a training throughput.
            t_eval = time.perf_counter()
            evaluate(G, done, tracker)
            t_window += time.perf_counter() - t_eval
            log_now = done % t.log_every == 0 or done == t.steps
            if log_now:
                window = stats.read()  # the one host read of the window
                skipped = _check_nonfinite(window, t, run_dir)
                last, cpu_window = _reduce_window(window, time.perf_counter() - t_window, cpu_pending, dist,
                                                  steps.window_extras(),
                                                  record_rank and functools.partial(record_rank, done))
                cpu_total += cpu_window
                cpu_pending, last["cpu_s"] = 0.0, cpu_total
                last["lr_d"], last["lr_g"] = opt_d.param_groups[0]["lr"], opt_g.param_groups[0]["lr"]
                last.update(gpu_memory(dist))
                tracker.log(done, last)
                if on_log:
                    on_log(done, last)
                bar.set_postfix({k: f"{last[k]:.3g}" for k in ("loss_d", "loss_g", "acc_d", "img_s") if k in last})
                stats.new_window()
                t_window = time.perf_counter()
            if done % t.sample_every == 0 or done == t.steps:
                _save_samples(G, dist, fixed_z, run_dir, done, tracker)
            if done % cfg.tracking.grid_every == 0 or done == t.steps:
                _log_rank_grid(G, dist, cfg, done, tracker, run_dir)
            stop_now = stop.agreed(dist, done, t.stop_check_every)  # a collective every stop_check_every steps
            if done % t.checkpoint_every == 0 or done == t.steps or stop_now or done in t.keep_steps:
                if not log_now:  # a run of non-finite steps stops the run before it saves
                    skipped = _check_nonfinite(stats.read(), t, run_dir)
                cpu_total += dist.sum({"cpu": cpu_pending})["cpu"]
                cpu_pending = 0.0
                checkpoint.save_checkpoint(dist, run_dir / "checkpoints", done, mhash, t.keep_checkpoints,
                                           tuple(t.keep_steps), {"cpu_s": cpu_total})
            if stop_now:
                preempted = step + 1 < t.steps
                break
    bar.close()
    tracker.finish()
    tracking_note = tracker.closing_note()
    probe.close()
    if dist.is_main:
        plots.plot_curves(run_dir / "metrics.jsonl", run_dir / "curves.png")
        plots.make_gif(plots.by_step((run_dir / "samples").glob("step_*.png")), run_dir / "samples.gif")
    return {"run_dir": str(run_dir), "step": step + 1 if t.steps > start else start,
            "preempted": preempted, "skipped_steps": skipped, "world_size": dist.world,
            "wall_s": time.perf_counter() - t_start, **last, "cpu_s": cpu_total, "tracking_note": tracking_note}


def _check_nonfinite(window: WindowStats, t: TrainConfig, run_dir: Path) -> int:
    """Raise NonFiniteError if a run of t.max_nonfinite non-finite steps happened; else the skipped count.

    Skipped steps leave weights and optimizer state untouched (optim.py), so every checkpoint,
    including those written during the run, holds finite weights.
    """
    end = window.nonfinite_hit
    if end is not None:
        good = checkpoint.list_checkpoints(run_dir / "checkpoints")
        n = t.max_nonfinite
        raise NonFiniteError(
            f"{n} non-finite steps in a row (steps {end + 1 - n}-{end}, train.max_nonfinite={n}); last good "
            f"checkpoint: {good[-1] if good else 'none'}; lower optim.lr_d/optim.lr_g or use fp32, then resume")
    return window.skipped


def _reduce_window(window: WindowStats, elapsed: float, cpu_s: float, dist: Dist,
                   extras: dict[str, float | None] | None = None,
                   record: Callable[[dict[str, float]], None] | None = None) -> tuple[dict[str, float], float]:
    """Per-rank means over the log window (plus the steps' extras; None drops a key), averaged over
    ranks, with img/s summed over ranks; and this window's training CPU-seconds summed over ranks."""
    means = dict(window.means)
    for k, v in (extras or {}).items():
        if v is None:
            means.pop(k, None)
        else:
            means[k] = v
    img_s = window.images / max(elapsed, 1e-9)
    if record:  # debug hook: this rank's values before the reduction
        record({**means, "img_s": img_s})
    out = dist.mean(means)
    sums = dist.sum({"img_s": img_s, "cpu_s": cpu_s})  # one reduction for both
    out["img_s"] = sums["img_s"]
    out["skipped_steps"] = float(window.skipped)
    return out, sums["cpu_s"]


def _sample(G: torch.nn.Module, dist: Dist, z: torch.Tensor) -> torch.Tensor:
    """G(z) in eval mode, without touching the DDP wrapper (safe on one rank alone)."""
    g = dist.acc_g.unwrap_model(G)
    was_training = g.training
    g.eval()
    with torch.no_grad():
        out = g(z)
    g.train(was_training)
    return out


def _save_samples(G, dist: Dist, fixed_z: torch.Tensor, run_dir: Path, step: int, tracker) -> None:
    """The fixed-noise grid (paper Figs. 10-11), on the main process."""
    if not dist.is_main:
        return
    images = _sample(G, dist, fixed_z)
    plots.save_grid(images, plots.sample_file(run_dir, step))
    tracker.log_image(step, "samples/fixed", plots.grid_tensor(images), f"fixed noise, step {step}")


def _log_rank_grid(G, dist: Dist, cfg: Config, step: int, tracker, run_dir: Path, per_rank: int = 8) -> None:
    """Each rank samples from its own noise; the main process logs one grid row per rank."""
    z = noise(per_rank, cfg.model.latent_dim, dist.device, cfg.seed, step, dist.rank, _RANK_GRID_NOISE)
    images = dist.gather(_sample(G, dist, z).float())  # (world * per_rank, C, H, W), rank order
    if dist.is_main:
        plots.save_grid(images, plots.sample_file(run_dir, step, "ranks"), nrow=per_rank)
        tracker.log_image(step, "samples/ranks", plots.grid_tensor(images, nrow=per_rank),
                          f"one row per rank ({dist.world} ranks), step {step}")
