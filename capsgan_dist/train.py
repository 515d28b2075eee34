"""The training run: `train(cfg) -> summary`, used by the CLI, the launch scripts and Ray Tune.

Reads top to bottom: set-up, data, models, resume, the loop (D step / G step), outputs.
Everything that differs between one process, N GPUs, N nodes or DeepSpeed lives in `dist.py`.
"""

from __future__ import annotations

import functools
import json
import math
import os
import signal
import sys
import time
from collections.abc import Callable, Iterator
from datetime import datetime
from pathlib import Path

import torch
from accelerate.utils import broadcast_object_list
from torch.utils.data import DataLoader

from capsgan_dist import checkpoint, losses, plots
from capsgan_dist import probe as debug_probe
from capsgan_dist.config import Config, model_hash, to_dict, to_yaml
from capsgan_dist.data import EpochShuffle, TensorImages, build_dataset, load_splits
from capsgan_dist.dist import Dist, noise, scaled_lr, setup
from capsgan_dist.errors import CheckpointError, NonFiniteError, UserError
from capsgan_dist.metrics.evaluate import LoopEval
from capsgan_dist.models import build_discriminator, build_generator
from capsgan_dist.progress import Progress
from capsgan_dist.tracking import gpu_memory, make_tracker, rank_metrics_recorder

PREEMPTED_EXIT_CODE = 75  # EX_TEMPFAIL: "stopped on a signal, checkpoint saved, resume me"
_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1)

# Salts that keep the noise streams of different purposes apart.
_D_NOISE, _G_NOISE, _FIXED_NOISE, _RANK_GRID_NOISE = 1, 2, 3, 4


class StopFlag:
    """Set by SIGTERM / SIGINT / SIGUSR1; the loop finishes its step, checkpoints and stops."""

    def __init__(self) -> None:
        self.raised: int | None = None
        self._old = {}

    def __enter__(self) -> StopFlag:
        for s in _SIGNALS:
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


def _real_batches(loader: DataLoader, dist: Dist, start_batch: int) -> Iterator[torch.Tensor]:
    """Endless real batches for this rank, starting at batch `start_batch` of the whole stream."""
    per_epoch = len(loader)
    if per_epoch == 0:
        raise UserError(f"the dataset has {len(loader.dataset)} images, fewer than one global batch "
                        f"({loader.total_batch_size}); use more data or a smaller train.batch_real")
    epoch, skip = divmod(start_batch, per_epoch)
    while True:
        it = dist.acc_g.skip_first_batches(loader, skip) if skip else loader
        it.set_epoch(epoch)  # the permutation depends only on (seed, epoch): exact resumes
        yield from it
        epoch, skip = epoch + 1, 0


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
    dist = setup(cfg)
    try:
        return _train(cfg, dist, require_checkpoint, on_log)
    finally:
        dist.shutdown()


def _train(cfg: Config, dist: Dist, require_checkpoint: bool,
           on_log: Callable[[int, dict[str, float]], None] | None) -> dict:
    t = cfg.train
    torch.manual_seed(cfg.seed)  # identical initial weights on every rank
    # Data before the run folder: a data error leaves no empty run behind. Semi-supervised runs
    # (data.labels_per_class > 0) split it, and the GAN's real images are the unlabeled split.
    splits = load_splits(cfg.data, cfg.seed) if cfg.data.labels_per_class else None
    dataset = TensorImages(splits.unlabeled_x) if splits is not None else build_dataset(cfg.data)
    run_dir = _run_dir(cfg, dist)
    mhash = model_hash(cfg)

    # Data: each rank gets distinct batches of t.batch_real (Accelerate shards the batches).
    loader = DataLoader(dataset, batch_size=t.batch_real, sampler=EpochShuffle(len(dataset), cfg.seed),
                        drop_last=True, num_workers=cfg.data.num_workers)

    # Models and optimizers.
    G, D = build_generator(cfg), build_discriminator(cfg)
    betas = (cfg.optim.beta1, cfg.optim.beta2)
    lr_g = scaled_lr(cfg.optim.lr_g, cfg.optim.scale_lr, dist.world)
    lr_d = scaled_lr(cfg.optim.lr_d, cfg.optim.scale_lr, dist.world)
    opt_g = torch.optim.Adam(G.parameters(), lr_g, betas=betas)
    opt_d = torch.optim.Adam(D.parameters(), lr_d, betas=betas)
    if cfg.perf.compile:  # in place, so state_dict keys (and checkpoints) do not change
        G.compile()
        D.compile()
    G, opt_g, loader = dist.acc_g.prepare(G, opt_g, loader)
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
    environment = {"world_size": dist.world, **_environment()}
    if dist.is_main:
        checkpoint.write_text_atomic(run_dir / "environment.json", json.dumps(environment, indent=1))  # for report
    run_config = {**to_dict(cfg), **environment}
    tracker = make_tracker(cfg, run_dir, run_config, dist.is_main)
    record_rank = rank_metrics_recorder(run_dir, dist.rank)  # None unless CAPSGAN_DEBUG_RANK_METRICS=1

    real_batches = _real_batches(loader, dist, _d_updates_before(start, t.schedule))
    fixed_z = noise(t.n_samples, cfg.model.latent_dim, dist.device, cfg.seed, _FIXED_NOISE)
    clip = cfg.optim.grad_clip or math.inf
    evaluate = LoopEval(cfg, dist)  # FID/KID/IS/PR every eval.every steps (off at 0)

    def d_step(step: int) -> dict[str, float]:
        real = next(real_batches)
        z = noise(t.batch_fake, cfg.model.latent_dim, dist.device, cfg.seed, step, dist.rank, _D_NOISE)
        with torch.no_grad():
            fake = G(z)
        logits = D(torch.cat([real, fake.to(real.dtype)]))  # one forward for real and fake
        lr_, lf = logits[: len(real)], logits[len(real):]
        loss = losses.d_loss(lr_, lf, cfg.loss)
        dist.acc_d.backward(loss)
        gnorm = _step(dist.acc_d, D, opt_d, clip)
        return {"loss_d": loss.item(), "acc_d": losses.d_accuracy(lr_, lf).item(),
                "d_real": torch.sigmoid(lr_.float()).mean().item(),
                "d_fake": torch.sigmoid(lf.float()).mean().item(), "gnorm_d": gnorm,
                "images": float(len(real) + len(fake))}

    def g_step(step: int) -> dict[str, float]:
        D.requires_grad_(False)  # frozen: no D grads, and DeepSpeed needs it (ENV-NOTES)
        z = noise(t.batch_real + t.batch_fake, cfg.model.latent_dim, dist.device, cfg.seed, step,
                  dist.rank, _G_NOISE)
        logits = D_plain(G(z))
        loss = losses.g_loss(logits, cfg.loss)
        dist.acc_g.backward(loss)
        gnorm = _step(dist.acc_g, G, opt_g, clip)
        D.requires_grad_(True)
        return {"loss_g": loss.item(), "gnorm_g": gnorm, "images": float(len(z))}

    if cfg.perf.cuda_graphs:  # the same two steps, captured once and replayed (cuda_graphs.py)
        from capsgan_dist.cuda_graphs import GraphedSteps

        graphed = GraphedSteps(cfg, dist, G, D, opt_g, opt_d, real_batches, clip)
        d_step, g_step = graphed.d_step, graphed.g_step
    if splits is not None:  # D also classifies: steps with labeled batches, and the test error (semisup.py)
        from capsgan_dist.semisup import SemiSupervised

        semi = SemiSupervised(cfg, dist, splits, G, D, D_plain, opt_g, opt_d, real_batches, clip, _step)
        d_step, g_step, evaluate = semi.d_step, semi.g_step, semi.with_test_error(evaluate)
        if dist.is_main:
            print(f"capsgan: semi-supervised: {splits.info}", file=sys.stderr)

    # The loop.
    bar = Progress(t.steps, start, run_dir.name, dist.is_main and t.progress, t.progress_every_s)
    window: dict[str, list[float]] = {}
    last: dict[str, float] = {}
    nonfinite_run, skipped, step = 0, 0, start
    # Training CPU seconds summed over ranks (evaluation, grids and checkpoints left out), carried
    # across resumes in the checkpoint manifest: what a step costs, whatever else shares the machine.
    cpu_total = float(found[1].get("cpu_s", 0.0)) if found else 0.0
    cpu_pending = 0.0  # this rank's, since the last reduction
    preempted = False
    t_window = time.perf_counter()
    t_start = time.perf_counter()
    with StopFlag() as stop:
        for step in range(start, t.steps):
            stats: dict[str, float] = {}
            cpu0 = time.process_time()
            if t.schedule == "both" or step % 2 == 0:
                stats.update(d_step(step))
            if t.schedule == "both" or step % 2 == 1:
                g = g_step(step)
                stats["images"] = stats.get("images", 0.0) + g.pop("images")
                stats.update(g)
            cpu_pending += time.process_time() - cpu0
            bad = any(not math.isfinite(v) for k, v in stats.items() if k.startswith("gnorm"))
            nonfinite_run = nonfinite_run + 1 if bad else 0
            skipped += bad
            if nonfinite_run >= t.max_nonfinite:
                good = checkpoint.list_checkpoints(run_dir / "checkpoints")
                raise NonFiniteError(
                    f"{nonfinite_run} non-finite steps in a row (steps {step + 2 - nonfinite_run}-{step + 1}, "
                    f"train.max_nonfinite={t.max_nonfinite}); last good checkpoint: "
                    f"{good[-1] if good else 'none'}; lower optim.lr_d/optim.lr_g or use fp32, then resume")
            for k, v in stats.items():
                window.setdefault(k, []).append(v)
            done = step + 1
            bar.update(1)

            # Before the log: on_log (a sweep's reporter) must see this step's FID, not the previous one.
            # Its time is left out of the window, so img_s stays a training throughput.
            t_eval = time.perf_counter()
            evaluate(G, done, tracker)
            t_window += time.perf_counter() - t_eval
            if done % t.log_every == 0 or done == t.steps:
                last = _reduce_window(window, time.perf_counter() - t_window, dist, skipped,
                                      record_rank and functools.partial(record_rank, done))
                cpu_total += dist.sum({"cpu": cpu_pending})["cpu"]
                cpu_pending, last["cpu_s"] = 0.0, cpu_total
                last["lr_d"], last["lr_g"] = opt_d.param_groups[0]["lr"], opt_g.param_groups[0]["lr"]
                last.update(gpu_memory(dist))
                tracker.log(done, last)
                if on_log:
                    on_log(done, last)
                bar.set_postfix({k: f"{last[k]:.3g}" for k in ("loss_d", "loss_g", "acc_d", "img_s") if k in last})
                window, t_window = {}, time.perf_counter()
            if done % t.sample_every == 0 or done == t.steps:
                _save_samples(G, dist, fixed_z, run_dir, done, tracker)
            if done % cfg.tracking.grid_every == 0 or done == t.steps:
                _log_rank_grid(G, dist, cfg, done, tracker, run_dir)
            stop_now = dist.any(stop.raised is not None)
            if done % t.checkpoint_every == 0 or done == t.steps or stop_now or done in t.keep_steps:
                cpu_total += dist.sum({"cpu": cpu_pending})["cpu"]
                cpu_pending = 0.0
                checkpoint.save_checkpoint(dist, run_dir / "checkpoints", done, mhash, t.keep_checkpoints,
                                           tuple(t.keep_steps), {"cpu_s": cpu_total})
            if stop_now:
                preempted = step + 1 < t.steps
                break
    bar.close()
    tracker.finish()
    probe.close()
    if dist.is_main:
        plots.plot_curves(run_dir / "metrics.jsonl", run_dir / "curves.png")
        plots.make_gif(sorted((run_dir / "samples").glob("step_*.png")), run_dir / "samples.gif")
    return {"run_dir": str(run_dir), "step": step + 1 if t.steps > start else start,
            "preempted": preempted, "skipped_steps": skipped, "world_size": dist.world,
            "wall_s": time.perf_counter() - t_start, **last, "cpu_s": cpu_total}


def _step(acc, model: torch.nn.Module, opt: torch.optim.Optimizer, clip: float) -> float:
    """Clip (or just measure) the gradient norm, then step unless it is non-finite; returns the norm."""
    norm = acc.clip_grad_norm_(model.parameters(), clip)
    norm = float(norm) if norm is not None else float("nan")
    if math.isfinite(norm) or getattr(acc, "scaler", None) is not None:
        opt.step()  # an fp16 GradScaler skips inf/nan steps itself and must see them to lower its scale
    opt.zero_grad(set_to_none=True)
    return norm


def _reduce_window(window: dict[str, list[float]], elapsed: float, dist: Dist, skipped: int,
                   record: Callable[[dict[str, float]], None] | None = None) -> dict[str, float]:
    """Per-rank means over the log window, averaged over ranks; img/s summed over ranks."""
    images = sum(window.pop("images", [0.0]))
    means = {k: sum(v) / len(v) for k, v in window.items()}
    img_s = images / max(elapsed, 1e-9)
    if record:  # debug hook: this rank's values before the reduction
        record({**means, "img_s": img_s})
    out = dist.mean(means)
    out["img_s"] = dist.sum({"img_s": img_s})["img_s"]
    out["skipped_steps"] = float(skipped)
    return out


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
    plots.save_grid(images, run_dir / "samples" / f"step_{step:06d}.png")
    tracker.log_image(step, "samples/fixed", plots.grid_tensor(images), f"fixed noise, step {step}")


def _log_rank_grid(G, dist: Dist, cfg: Config, step: int, tracker, run_dir: Path, per_rank: int = 8) -> None:
    """Each rank samples from its own noise; the main process logs one grid row per rank."""
    z = noise(per_rank, cfg.model.latent_dim, dist.device, cfg.seed, step, dist.rank, _RANK_GRID_NOISE)
    images = dist.gather(_sample(G, dist, z).float())  # (world * per_rank, C, H, W), rank order
    if dist.is_main:
        plots.save_grid(images, run_dir / "samples" / f"ranks_{step:06d}.png", nrow=per_rank)
        tracker.log_image(step, "samples/ranks", plots.grid_tensor(images, nrow=per_rank),
                          f"one row per rank ({dist.world} ranks), step {step}")


def _environment() -> dict:
    """Git commit and hardware, for the run's tracked config."""
    import platform
    import subprocess

    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True,
                                cwd=Path(__file__).parent, timeout=5).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        commit = None
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    return {"git_commit": commit, "hostname": platform.node(), "gpu": gpu,
            "gpu_count": torch.cuda.device_count(), "cpu_count": os.cpu_count(),
            "torch": torch.__version__, "cpu_threads": torch.get_num_threads()}
