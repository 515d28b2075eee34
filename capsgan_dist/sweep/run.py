"""`capsgan sweep`: a Ray Tune search over training configs, each trial one `train()` run.

Layout of a sweep folder `<out_dir>/<name>/`:
  sweep.yaml         the resolved sweep config and base training config (checked on resume)
  tune/              Ray Tune's experiment; tune/trial_<id>/<name>-<id>/ is each trial's run folder
  ray/               Ray's temp files for an embedded Ray (a link to a short /tmp path if needed)
  results.csv/.md    one row per trial, sorted by the metric
  best_config.yaml   the best trial's training config, ready for `capsgan train`
Rerunning the same command resumes an interrupted sweep (Tuner.restore).
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

import yaml

import capsgan_dist
from capsgan_dist.config import Config, load_config, replace, to_dict
from capsgan_dist.errors import ConfigError, UserError
from capsgan_dist.sweep.config import (
    SweepConfig,
    load_sweep_config,
    resolve_metric,
    spec_values_to_check,
    sweep_to_dict,
)
from capsgan_dist.sweep.report import write_outputs
from capsgan_dist.sweep.trial import run_trial, trial_config

# Overrides whose first part is a training-config key go to the trials, the rest to the sweep (whose
# own `name` wins).
TRAIN_SECTIONS = tuple(f.name for f in dataclasses.fields(Config) if f.name != "name")
# Passed to the workers of an existing cluster (an embedded Ray inherits the whole environment).
PASS_ENV = ("WANDB_MODE", "WANDB_DIR", "WANDB_API_KEY", "WANDB_SILENT", "OMP_NUM_THREADS")
# Sweep settings that must match when a sweep is resumed (others, like max_concurrent, may change).
FIXED_ON_RESUME = ("space", "trials", "metric", "mode", "scheduler", "workers_per_trial", "search_seed")
DRIVER_CPU = 0.01  # what the trial of a multi-worker sweep reserves for itself
EXPERIMENT = "tune"
MAX_RAY_TMP = 40  # Ray's unix sockets live under the temp dir; their paths must stay < 108 bytes


def split_overrides(overrides: list[str]) -> tuple[list[str], list[str]]:
    """(sweep overrides, training overrides), told apart by their first dotted part."""
    sweep, train = [], []
    for ov in overrides:
        (train if ov.split("=", 1)[0].split(".", 1)[0] in TRAIN_SECTIONS else sweep).append(ov)
    return sweep, train


def resolve_base(sweep: SweepConfig) -> dict:
    """The base training config as a dict, checked against every value the space can take."""
    cfg = load_config(sweep.base, sweep.overrides)
    # Trials run in other folders (and on other nodes): relative paths are made absolute here.
    root, clf, inception = (str(Path(p).resolve()) if p else p
                            for p in (cfg.data.root, cfg.eval.classifier, cfg.eval.inception_weights))
    cache_dir = str(Path(cfg.data.cache_dir).resolve())  # one prepared cache that every trial shares
    cfg = replace(cfg, data={"root": root, "cache_dir": cache_dir},
                  eval={"classifier": clf, "inception_weights": inception}, tracking={"group": sweep.name})
    base = to_dict(cfg)
    for key, spec in sweep.searched.items():
        for value in spec_values_to_check(spec):
            try:
                trial_config(base, {key: value})
            except ConfigError as e:
                raise ConfigError(f"space.{key}: value {value!r} does not fit the training config ({e})") from None
    s = sweep.scheduler
    if s.name == "pbt" and s.perturbation_interval % cfg.train.checkpoint_every:
        raise ConfigError(f"scheduler.perturbation_interval={s.perturbation_interval} must be a multiple of "
                          f"train.checkpoint_every={cfg.train.checkpoint_every}: PBT clones trials from checkpoints")
    return base


def _tune_space(sweep: SweepConfig) -> dict[str, Any]:
    from ray import tune

    make = {"choice": tune.choice, "grid": tune.grid_search,
            "uniform": lambda v: tune.uniform(*v), "loguniform": lambda v: tune.loguniform(*v)}
    return {key: make[kind](values) for key, spec in sweep.searched.items() for kind, values in spec.items()}


def _scheduler(sweep: SweepConfig, steps: int):
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler, PopulationBasedTraining

    s = sweep.scheduler
    if s.name == "asha":
        # max_t one past the end: at max_t ASHA stops the trial, before train() writes its final checkpoint.
        return ASHAScheduler(time_attr="step", max_t=steps + 1, grace_period=min(s.grace_period, steps),
                             reduction_factor=s.reduction_factor)
    if s.name == "pbt":
        ranges = {k: sweep.searched[k] for k in s.mutations}
        mutations = {k: (tune.loguniform if "loguniform" in r else tune.uniform)(*next(iter(r.values())))
                     for k, r in ranges.items()}
        return PopulationBasedTraining(time_attr="checkpoint_step", perturbation_interval=s.perturbation_interval,
                                       hyperparam_mutations=mutations, quantile_fraction=s.quantile_fraction,
                                       resample_probability=s.resample_probability, synch=s.synch,
                                       require_attrs=False)
    return FIFOScheduler()


def trial_dirname(trial) -> str:
    """Short trial folder names keep paths (and unix sockets below them) short."""
    return f"trial_{trial.trial_id}"


def _ray_temp_dir(sweep_dir: Path) -> Path:
    """`<sweep>/ray`, or a short /tmp folder linked from there when that path is too long for sockets."""
    want = sweep_dir / "ray"
    if len(str(want)) <= MAX_RAY_TMP:
        want.mkdir(parents=True, exist_ok=True)
        return want
    digest = hashlib.sha1(str(sweep_dir).encode()).hexdigest()[:8]
    short = Path(tempfile.gettempdir()) / f"capsgan-ray-{digest}"
    short.mkdir(parents=True, exist_ok=True)
    if not want.is_symlink() and not want.exists():
        want.symlink_to(short, target_is_directory=True)
    return short


def init_ray(sweep: SweepConfig, sweep_dir: Path, address: str | None) -> None:
    """Start an embedded Ray (dashboard off, files under the sweep folder) or join `address`."""
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    os.environ.setdefault("TUNE_DISABLE_STRICT_METRIC_CHECKING", "1")  # e.g. FID logged every N steps only
    os.environ.setdefault("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "1")  # _run_config names the loggers it wants
    try:
        import ray
        import ray.tune  # noqa: F401
    except ImportError:
        raise UserError("capsgan sweep needs Ray Tune: pip install -e '.[tune]'") from None

    if address:
        pkg_root = str(Path(capsgan_dist.__file__).resolve().parents[1])
        env = {k: os.environ[k] for k in PASS_ENV if k in os.environ}
        env["PYTHONPATH"] = os.pathsep.join(p for p in (pkg_root, os.environ.get("PYTHONPATH")) if p)
        try:
            ray.init(address=address, runtime_env={"env_vars": env}, log_to_driver=sweep.trial_output)
        except (ConnectionError, ValueError, RuntimeError) as e:
            raise UserError(f"--address {address}: cannot join a Ray cluster there ({str(e).splitlines()[0]}); "
                            "start one with `ray start --head`, or drop --address to run Ray here") from None
    else:
        os.environ.setdefault("RAY_AUTH_MODE", "disabled")
        # A trial process that Ray ends with SIGTERM can print a traceback from Ray's own handler
        # ("SystemExit: 1" when the signal lands in a finalizer): not on the console unless asked for.
        ray.init(num_cpus=sweep.num_cpus, include_dashboard=False, _temp_dir=str(_ray_temp_dir(sweep_dir)),
                 log_to_driver=sweep.trial_output)


def _check_resume(sweep_dir: Path, record: dict) -> None:
    """Refuse to resume a sweep folder with a different search (its trials would not match)."""
    path = sweep_dir / "sweep.yaml"
    if not path.is_file():
        return
    old = yaml.safe_load(path.read_text()) or {}
    diff = [k for k in FIXED_ON_RESUME if old.get("sweep", {}).get(k) != record["sweep"].get(k)]
    if old.get("base") != record["base"]:
        diff.append("the base training config")
    if diff:
        raise ConfigError(f"{sweep_dir} holds a sweep started with different settings ({', '.join(diff)}); "
                          "rerun it unchanged to resume, or pick a new `name=` for a new sweep")


def run_sweep(sweep: SweepConfig, address: str | None = None, require_resume: bool = False) -> int:
    """Run (or resume) the sweep, write its table and best config; returns the exit code."""
    from ray import tune

    base = resolve_base(sweep)
    sweep = resolve_metric(sweep, base)
    print(f"sweep metric: {sweep.metric} ({sweep.mode})", file=sys.stderr)
    sweep_dir = (Path(sweep.out_dir) / sweep.name).resolve()
    exp_dir = sweep_dir / EXPERIMENT
    record = {"sweep": sweep_to_dict(sweep), "base": base}
    restoring = (exp_dir / "tuner.pkl").is_file()
    if require_resume and not restoring:
        raise UserError(f"--resume: no sweep to resume in {sweep_dir}; drop --resume to start it")
    if restoring:
        _check_resume(sweep_dir, record)
    sweep_dir.mkdir(parents=True, exist_ok=True)
    (sweep_dir / "sweep.yaml").write_text(yaml.safe_dump(record, sort_keys=False))

    init_ray(sweep, sweep_dir, address)
    meta = {"name": sweep.name, "metric": sweep.metric, "exp_dir": str(exp_dir),
            "tune_checkpoints": sweep.scheduler.name == "pbt",  # only PBT needs them: resumes use the run folder
            "workers_per_trial": sweep.workers_per_trial, "cpus_per_trial": sweep.cpus_per_trial,
            "gpus_per_trial": sweep.gpus_per_trial}
    if sweep.workers_per_trial > 1:
        # The trial only drives a TorchTrainer whose workers reserve their own; Ray needs a nonzero request.
        resources = {"cpu": DRIVER_CPU}
    else:
        resources = {"cpu": sweep.cpus_per_trial, "gpu": sweep.gpus_per_trial}
    trainable = tune.with_resources(tune.with_parameters(run_trial, base=base, meta=meta), resources)

    if restoring and tune.Tuner.can_restore(str(exp_dir)):
        print(f"resuming sweep {sweep_dir}", file=sys.stderr)
        tuner = tune.Tuner.restore(str(exp_dir), trainable=trainable, resume_unfinished=True,
                                   resume_errored=sweep.resume_errored, restart_errored=False)
    else:
        tuner = tune.Tuner(trainable, param_space=_tune_space(sweep),
                           tune_config=_tune_config(sweep, base), run_config=_run_config(sweep, sweep_dir))
    tuner.fit()
    analysis = tune.ExperimentAnalysis(str(exp_dir))
    summary = write_outputs(analysis.trials, sweep, base, sweep_dir)
    print(summary.message)
    return summary.exit_code


def _concurrency(sweep: SweepConfig) -> int:
    """Trials at once: as configured, or for multi-worker trials as many as the CPUs hold."""
    if sweep.max_concurrent or sweep.workers_per_trial == 1:
        return sweep.max_concurrent
    import ray

    per_trial = sweep.workers_per_trial * sweep.cpus_per_trial + DRIVER_CPU
    return max(1, int(ray.cluster_resources().get("CPU", 1) // per_trial))


def _tune_config(sweep: SweepConfig, base: dict):
    from ray import tune
    from ray.tune.search import BasicVariantGenerator

    return tune.TuneConfig(metric=sweep.metric, mode=sweep.mode, num_samples=sweep.trials,
                           scheduler=_scheduler(sweep, base["train"]["steps"]),
                           search_alg=BasicVariantGenerator(random_state=sweep.search_seed),
                           max_concurrent_trials=_concurrency(sweep) or None,
                           trial_dirname_creator=trial_dirname, reuse_actors=False)


def _run_config(sweep: SweepConfig, sweep_dir: Path):
    from ray import tune

    # Only PBT trials report Tune checkpoints (copies of run checkpoints that others may clone). All
    # are kept: PBT's save of a function trainable registers its latest checkpoint a second time,
    # and pruning then deletes one folder twice, fails, and loses the checkpoint PBT clones from.
    # Tune's CSV and JSON result loggers, named so that it adds no TensorBoard logger of its own (and
    # prints no `tensorboard --logdir` hint for a TensorBoard that is not installed); see init_ray.
    from ray.tune.logger import CSVLoggerCallback, JsonLoggerCallback

    return tune.RunConfig(name=EXPERIMENT, storage_path=str(sweep_dir), verbose=1,
                          failure_config=tune.FailureConfig(max_failures=sweep.max_failures),
                          checkpoint_config=tune.CheckpointConfig(num_to_keep=None),
                          callbacks=[CSVLoggerCallback(), JsonLoggerCallback()])


def sweep_command(config: str, overrides: list[str], address: str | None, resume: bool) -> int:
    """`capsgan sweep CONFIG [overrides] [--address A] [--resume]`."""
    sweep_ovs, train_ovs = split_overrides(list(overrides))
    sweep = load_sweep_config(config, sweep_ovs)
    if train_ovs:
        sweep = dataclasses.replace(sweep, overrides=[*sweep.overrides, *train_ovs])
    return run_sweep(sweep, address=address, require_resume=resume)
