"""Sweep configuration: what `capsgan sweep SWEEP.yaml` searches, how it schedules, and where it runs.

Loaded like a training config (frozen dataclasses via OmegaConf, dotted overrides on top). The
search space names training-config keys in dotted form; each is checked against the base training
config before Ray starts, so a typo fails in a second, not after the cluster is up.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import yaml
from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from capsgan_dist.config import _read_yaml
from capsgan_dist.errors import ConfigError

DISTRIBUTIONS = ("choice", "grid", "uniform", "loguniform")
SCHEDULERS = ("asha", "pbt", "fifo")

# `metric: auto` ranks trials by FID when the trials evaluate (eval.classifier or eval.inception_weights set),
# else by this named training-health proxy (see docs/sweeps.md).
AUTO_METRIC = "auto"
FID_METRIC = "eval/fid"
PROXY_METRIC = "proxy_d_gap"
TEST_ERROR_METRIC = "eval/test_error"  # semi-supervised runs: D's error on the test split


def _default_space() -> dict[str, Any]:
    return {
        "model.routing_iters": {"choice": [1, 2, 3, 4, 5]},
        "optim.lr_d": {"loguniform": [1.0e-5, 1.0e-3]},
        "optim.lr_g": {"loguniform": [1.0e-5, 1.0e-3]},
    }


@dataclass(frozen=True)
class SchedulerConfig:
    name: str = "asha"
    """asha (early-stops weak trials) | pbt (Population Based Training over the two lrs) | fifo (none)."""
    grace_period: int = 100
    """ASHA: training steps every trial runs before it may be stopped."""
    reduction_factor: int = 2
    """ASHA: keep the top 1/reduction_factor of trials at each rung."""
    perturbation_interval: int = 200
    """PBT: training steps between exploit/explore decisions (a multiple of train.checkpoint_every)."""
    quantile_fraction: float = 0.25
    """PBT: the bottom fraction clones a trial of the top fraction."""
    resample_probability: float = 0.25
    """PBT: chance that a perturbed lr is redrawn from its range instead of scaled by 0.8 or 1.2."""
    synch: bool = False
    """PBT: clone only once every trial has reached the perturbation step (Tune's synchronous PBT).
    Slower (trials that arrive first pause), but with few trials, or trials that start at different
    times, the asynchronous default may find no other trial to compare with and clone nothing."""
    mutations: list[str] = field(default_factory=lambda: ["optim.lr_d", "optim.lr_g"])
    """PBT: space keys that are perturbed (must be continuous ranges in `space`)."""

    def __post_init__(self) -> None:
        if self.name not in SCHEDULERS:
            raise ConfigError(f"scheduler.name={self.name!r} is not allowed; choose one of {', '.join(SCHEDULERS)}")
        for name in ("grace_period", "perturbation_interval"):
            if getattr(self, name) < 1:
                raise ConfigError(f"scheduler.{name}={getattr(self, name)} must be >= 1 (training steps)")
        if self.reduction_factor < 2:
            raise ConfigError(f"scheduler.reduction_factor={self.reduction_factor} must be >= 2")
        if not 0.0 < self.quantile_fraction <= 0.5:
            raise ConfigError(f"scheduler.quantile_fraction={self.quantile_fraction} must be in (0, 0.5]")
        if not 0.0 <= self.resample_probability <= 1.0:
            raise ConfigError(f"scheduler.resample_probability={self.resample_probability} must be in [0, 1]")


@dataclass(frozen=True)
class SweepConfig:
    name: str = "sweep"
    """Sweep name: the folder `<out_dir>/<name>` and the W&B group of every trial."""
    base: str = "configs/mnist_capsgan.yaml"
    """Training config every trial starts from (a path, relative to the current folder)."""
    overrides: list[str] = field(default_factory=list)
    """Dotted training overrides applied to `base` for every trial, e.g. `train.steps=400`."""
    out_dir: str = "sweeps"
    """Parent folder of sweep folders (on a cluster: a filesystem every node sees)."""
    space: dict[str, Any] = field(default_factory=_default_space)
    """Searched training keys -> {choice: [...]} | {grid: [...]} | {uniform: [lo, hi]} | {loguniform: [lo, hi]};
    set a key to null to drop it from the default space."""
    trials: int = 8
    """Samples drawn from the space (each `grid` key multiplies this)."""
    metric: str = AUTO_METRIC
    """Reported key to optimise. auto: `eval/fid` (lower is better) when the trials' training config sets
    eval.classifier (or eval.inception_weights), else the proxy `proxy_d_gap`; or any logged key by name."""
    mode: str = "min"
    """min | max: whether lower or higher `metric` is better (auto: min)."""
    scheduler: SchedulerConfig = field(default_factory=SchedulerConfig)
    cpus_per_trial: float = 1.0
    """CPUs reserved per trial (per worker when workers_per_trial > 1)."""
    gpus_per_trial: float = 0.0
    """GPUs reserved per trial (per worker when workers_per_trial > 1); fractions share a GPU."""
    workers_per_trial: int = 1
    """Data-parallel workers per trial; > 1 runs each trial as a Ray Train TorchTrainer (gloo on CPU)."""
    max_concurrent: int = 0
    """Trials running at once; 0 lets the free resources decide."""
    max_failures: int = 1
    """Retries of a crashing trial (from its newest checkpoint) before it is reported as failed."""
    resume_errored: bool = False
    """On resume, also retry trials that had failed for good (e.g. after fixing the cause)."""
    trial_output: bool = False
    """Show each trial's own output on the console (Ray's log_to_driver). Off: the console holds Tune's
    progress and the sweep's summary; trials' output stays in Ray's worker logs (sweeps/<name>/ray/),
    including the exit noise of trial processes that Ray ends with SIGTERM."""
    num_cpus: Optional[int] = None
    """CPUs of the embedded Ray instance (default: all); ignored with --address."""
    search_seed: int = 0
    """Seed of the random search, so a rerun draws the same trials."""

    def __post_init__(self) -> None:
        if not self.name or "/" in self.name:
            raise ConfigError(f"sweep name={self.name!r} must be a non-empty folder name without '/'")
        if self.mode not in ("min", "max"):
            raise ConfigError(f"mode={self.mode!r} is not allowed; choose min or max")
        for name in ("trials", "workers_per_trial"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name}={getattr(self, name)} must be >= 1")
        if self.cpus_per_trial <= 0 or self.gpus_per_trial < 0:
            raise ConfigError("cpus_per_trial must be > 0 and gpus_per_trial >= 0")
        if self.max_failures < 0 or self.max_concurrent < 0:
            raise ConfigError("max_failures and max_concurrent must be >= 0")
        if self.num_cpus is not None and self.num_cpus < 1:
            raise ConfigError(f"num_cpus={self.num_cpus} must be >= 1 (or null for all CPUs)")
        for key, spec in self.space.items():
            if spec is not None:
                _check_spec(key, spec)
        if self.scheduler.name == "pbt":
            for key in self.scheduler.mutations:
                spec = self.space.get(key)
                if not spec or next(iter(spec)) not in ("uniform", "loguniform"):
                    raise ConfigError(f"scheduler.mutations lists {key!r}, which needs a uniform or loguniform "
                                      "range in `space` for PBT to perturb")
            if self.workers_per_trial > 1:
                raise ConfigError("scheduler.name=pbt needs workers_per_trial=1: PBT clones trials through Tune "
                                  "checkpoints, which multi-worker trials do not report; use asha")

    @property
    def searched(self) -> dict[str, dict]:
        """The active search space (keys set to null removed)."""
        return {k: v for k, v in self.space.items() if v is not None}


def _check_spec(key: str, spec: Any) -> None:
    where = f"space.{key}"
    if not isinstance(spec, dict) or len(spec) != 1 or next(iter(spec)) not in DISTRIBUTIONS:
        raise ConfigError(f"{where} must be one of {{choice: [...]}}, {{grid: [...]}}, {{uniform: [lo, hi]}}, "
                          f"{{loguniform: [lo, hi]}}; got {spec!r}")
    kind, values = next(iter(spec.items()))
    if not isinstance(values, list) or not values:
        raise ConfigError(f"{where}.{kind} must be a non-empty list, got {values!r}")
    if kind in ("uniform", "loguniform"):
        if len(values) != 2 or not all(isinstance(v, (int, float)) for v in values) or not values[0] < values[1]:
            raise ConfigError(f"{where}.{kind} must be [low, high] numbers with low < high, got {values!r}")
        if kind == "loguniform" and values[0] <= 0:
            raise ConfigError(f"{where}.loguniform needs low > 0, got {values!r}")


def _space_edits(layer: dict, overrides: list[str]) -> tuple[dict, list[str], dict]:
    """Pull `space` out of a YAML layer and `space.KEY.DIST=VALUES` out of overrides.

    Space entries replace the entry of the same key (merging {choice: ..} into {loguniform: ..}
    would make nonsense), so they are applied by hand instead of by OmegaConf's merge.
    """
    edits = layer.pop("space", None) or {}
    if not isinstance(edits, dict):
        raise ConfigError(f"`space` must map training keys to distributions, got {edits!r}")
    edits = dict(edits)
    rest = []
    for ov in overrides:
        key, _, raw = ov.partition("=")
        if not key.startswith("space."):
            rest.append(ov)
            continue
        key, value = key[len("space."):], yaml.safe_load(raw)
        head, _, last = key.rpartition(".")
        if last in DISTRIBUTIONS:
            edits[head] = {last: value}
        elif value is None:
            edits[key] = None
        else:
            raise ConfigError(f"override '{ov}': use space.KEY.DIST=VALUES (DIST: {', '.join(DISTRIBUTIONS)}), "
                              "e.g. space.model.routing_iters.choice=[1,3,5], or space.KEY=null to drop KEY")
    return layer, rest, edits


def load_sweep_config(path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> SweepConfig:
    """Build a validated SweepConfig from its YAML file and dotted overrides."""
    for ov in overrides:
        if "=" not in ov:
            raise ConfigError(f"override '{ov}' must look like key=value, e.g. trials=4")
    data, rest, space_edits = _space_edits(_read_yaml(Path(path)), list(overrides))
    base = OmegaConf.structured(SweepConfig)
    layers = [(OmegaConf.create(data), str(path))] + [(OmegaConf.from_dotlist([ov]), f"override '{ov}'") for ov in rest]
    for layer, where in layers:
        try:
            base = OmegaConf.merge(base, layer)
        except OmegaConfBaseException as e:
            key = getattr(e, "full_key", None) or ""
            known = ", ".join(f.name for f in dataclasses.fields(SweepConfig))
            raise ConfigError(f"bad sweep key '{key}' in {where}: {str(e).splitlines()[0]} (sweep keys: {known}; "
                              "training overrides go in `overrides:`)") from None
    space = {**_default_space(), **space_edits}
    try:
        return dataclasses.replace(OmegaConf.to_object(base), space=space)
    except OmegaConfBaseException as e:
        raise ConfigError(f"invalid sweep config {path}: {str(e).splitlines()[0]}") from None


def resolve_metric(sweep: SweepConfig, base: dict) -> SweepConfig:
    """The sweep with `metric: auto` made concrete for the trials' resolved training config `base`.

    FID is the metric the sweep is for; the proxy is only a fallback for set-ups without a classifier,
    and a sweep that asks for FID but cannot compute it fails here, before Ray starts.
    """
    ev = base["eval"]
    network = "classifier" if ev["classifier"] else "inception_weights" if ev["inception_weights"] else None
    metric = sweep.metric
    if metric == AUTO_METRIC:
        if sweep.mode != "min":
            raise ConfigError("metric=auto ranks by FID or proxy_d_gap, both lower-is-better: drop mode=max "
                              "or name the metric")
        metric = FID_METRIC if network else PROXY_METRIC
    if metric in (TEST_ERROR_METRIC, "eval/test_acc"):  # scored by D itself: no classifier needed
        if not base["data"]["labels_per_class"] or not ev["every"]:
            raise ConfigError(f"metric {metric} needs semi-supervised trials that evaluate: add "
                              "data.labels_per_class=N and eval.every=N to the sweep's overrides")
    elif metric.startswith("eval/"):
        if not network or not ev["every"]:
            raise ConfigError(f"metric {metric} needs the trials to evaluate: add eval.classifier=FILE (from "
                              "`capsgan classifier train`) and eval.every=N to the sweep's overrides")
        if not Path(ev[network]).is_file():
            fix = ("train one with `capsgan classifier train --data DIR --arch lenet --out PATH`"
                   if network == "classifier" else "give the FID Inception-v3 .pth you have")
            raise ConfigError(f"eval.{network} {ev[network]} not found: {fix}, or set eval.{network}=null to "
                              f"rank by {PROXY_METRIC}")
    return dataclasses.replace(sweep, metric=metric)


def sweep_to_dict(sweep: SweepConfig) -> dict:
    """The sweep config as plain nested dicts (YAML-safe)."""
    return dataclasses.asdict(sweep)


def spec_values_to_check(spec: dict) -> list[Any]:
    """Values worth validating against the training config: every choice, or both range ends."""
    kind, values = next(iter(spec.items()))
    if kind in ("uniform", "loguniform"):
        lo, hi = values
        return [lo, hi]
    return list(values)
