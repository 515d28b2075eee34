"""The paper's experiment as numbers: CapsuleGAN vs the DCGAN baseline over several seeds.

`capsgan compare configs/compare_mnist.yaml` trains every (model, seed) pair from one base train
config (same generator, schedule, data and seeds; only the discriminator differs, and a model may
train longer with its own `train.steps=`), with the training-loop evaluation on, then writes under
`out_dir`: compare.json (every value), table.md (mean +- std over seeds; the comparison points;
GAM battles), fid.png and fid_cpu.png (FID vs step and vs training CPU-seconds), ablation.png
(routing iterations), routing.png (routing kinds), grid_step_XXXXXXX.png (fixed-noise samples side
by side, paper Fig. 10) and grid_points.png (every seed at every comparison point).
Finished runs are skipped, interrupted ones resumed from their newest checkpoint and GAM battles
already fought are read back, so the command can simply be rerun. `--only MODEL[,MODEL]` trains
just those models' runs and writes no report, so one compare can be split over several processes
(one per core); a last run without it writes the report.
"""

from __future__ import annotations

import json
import os
import statistics
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import yaml
from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from capsgan_dist import checkpoint, compare_points, plots
from capsgan_dist.config import ROUTINGS, Config, ModelConfig, load_config
from capsgan_dist.errors import ConfigError, UserError

TABLE_METRICS = ("fid", "kid", "is", "precision", "recall")
DEFAULT_MODELS = {"capsgan": ["model.discriminator=capsule"], "dcgan": ["model.discriminator=dcgan"]}


@dataclass(frozen=True)
class CompareConfig:
    name: str = "compare"
    """Name of the experiment (used in titles)."""
    base: str = "configs/mnist_capsgan.yaml"
    """Train config every run starts from (path relative to the current folder)."""
    overrides: list[str] = field(default_factory=list)
    """Dotted train-config overrides applied to every run (data, tracking, ...)."""
    models: dict[str, list[str]] = field(default_factory=dict)
    """Compared models: name -> overrides that make it (only the discriminator should differ).
    A file without `models` gets DEFAULT_MODELS (CapsuleGAN and the DCGAN baseline)."""
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])
    """Seeds; each model trains once per seed (weights, data order and noise follow the seed)."""
    steps: int = 10000
    """train.steps of every run."""
    eval_every: int = 1000
    """Steps between evaluations (eval.every); also the sample-grid interval."""
    eval_n: int = 10000
    """Generated images per evaluation (eval.n)."""
    classifier: str = "runs/classifiers/mnist-lenet.safetensors"
    """Classifier file for the metrics (from `capsgan classifier train`)."""
    inception_weights: str = ""
    """Instead of `classifier`: the FID Inception-v3 weights file (docs/metrics.md), the feature space of
    published FIDs; empty: the classifier's."""
    grid_steps: list[int] = field(default_factory=lambda: [1000, 10000, 30000])
    """Steps of the side-by-side sample grids (paper Fig. 10); steps beyond `steps` are left out."""
    routing_ablation: list[int] = field(default_factory=list)
    """Routing iterations to compare for `ablation_model` (e.g. [1, 2, 3, 5]); empty: no ablation."""
    routing_kinds: list[str] = field(default_factory=list)
    """Routing kinds (model.routing) to compare for `ablation_model`, e.g. [dynamic, em, attention]; empty:
    none. em needs 16-D capsules: put model.primary_dim=16 in `overrides` so every kind gets the same sizes."""
    ablation_model: str = "capsgan"
    """The model whose routing iterations (and routing kinds) the ablations vary."""
    out_dir: str = "runs/compare"
    """Folder of the runs and the report."""
    points: dict[str, list[int]] = field(default_factory=dict)
    """Comparison points: model -> steps set side by side (table, grids of every seed, GAM), e.g. the
    paper's capsgan [1000, 10000] vs dcgan [10000, 30000]. Their checkpoints are kept."""
    learned_fid: float = 600.0
    """A seed 'learned' when its last FID is below this (MNIST LeNet space: real ~2, noise ~1,200,
    all-black ~1,530)."""
    gam_models: list[str] = field(default_factory=list)
    """Two model names whose runs battle by the GAM (Im et al. 2016) at every pair of their comparison
    points and seeds; empty: no GAM."""
    gam_n: int = 2000
    """Generated images per side of a GAM battle (and at most this many real test images)."""
    gam_split: str = "test"
    """Data split of the real images both D's are judged on (data.split: an IDX folder's t10k files)."""
    gam_tolerance: float = 0.2
    """A battle counts only when |r_test - 1| <= this."""

    def __post_init__(self) -> None:
        if len(self.models) < 1 or not self.seeds:
            raise ConfigError("compare needs at least one model and one seed")
        if self.steps < 1 or self.eval_every < 1 or self.eval_n < 2:
            raise ConfigError("compare: steps and eval_every must be >= 1 and eval_n >= 2")
        if (self.routing_ablation or self.routing_kinds) and self.ablation_model not in self.models:
            raise ConfigError(f"compare: ablation_model={self.ablation_model!r} is not one of the models "
                              f"({', '.join(self.models)})")
        if any(r < 1 for r in self.routing_ablation):
            raise ConfigError("compare: routing_ablation entries must be >= 1")
        for name, steps in self.points.items():
            if name not in self.models:
                raise ConfigError(f"compare: points names {name!r}, not one of the models ({', '.join(self.models)})")
            if any(st < 1 or st % self.eval_every for st in steps):
                raise ConfigError(f"compare: points of {name} ({steps}) must be multiples of "
                                  f"eval_every={self.eval_every}")
        if self.gam_models and (len(self.gam_models) != 2 or any(m not in self.points for m in self.gam_models)):
            raise ConfigError(f"compare: gam_models must name two models that have points, got {self.gam_models}")
        if self.gam_n < 1 or self.gam_tolerance < 0:
            raise ConfigError("compare: gam_n must be >= 1 and gam_tolerance >= 0")
        for kind in self.routing_kinds:
            if kind not in ROUTINGS:
                raise ConfigError(f"compare: routing_kinds has {kind!r}; choose from {', '.join(ROUTINGS)}")


def load_compare_config(path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> CompareConfig:
    """CompareConfig from defaults, a YAML file and dotted overrides (e.g. seeds=[0,1] steps=500)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"compare config {path} does not exist; see configs/compare_mnist.yaml")
    try:
        data = yaml.safe_load(path.read_text()) or {}
        if not isinstance(data, dict):
            raise ConfigError(f"{path} must hold a mapping of compare settings")
        # Dicts merge key by key, so defaults would leak into a file's own `models`: fill them here.
        if "models" not in data and not any(o.startswith("models") for o in overrides):
            data["models"] = DEFAULT_MODELS
        merged = OmegaConf.merge(OmegaConf.structured(CompareConfig), OmegaConf.create(data),
                                 OmegaConf.from_dotlist(list(overrides)))
        return OmegaConf.to_object(merged)
    except (OmegaConfBaseException, yaml.YAMLError) as e:
        raise ConfigError(f"invalid compare config {path} (or overrides): {str(e).splitlines()[0]}") from None


@dataclass(frozen=True)
class Variant:
    """One trained configuration (a model, or a routing setting of the ablation) over all seeds."""

    name: str
    overrides: list[str]
    group: str  # "models", "ablation" (routing iterations) or "routing" (routing kinds)


def variants(cc: CompareConfig) -> list[Variant]:
    """The compared models, then the ablation's routing settings (reusing a model that matches)."""
    out = [Variant(name, list(ovs), "models") for name, ovs in cc.models.items()]
    base = _train_config(cc, cc.models.get(cc.ablation_model, []), cc.seeds[0], Path(".")).model
    model_ovs = list(cc.models.get(cc.ablation_model, []))
    for r in cc.routing_ablation:
        if r == base.routing_iters:  # the model run itself is this point of the ablation
            out.append(Variant(cc.ablation_model, model_ovs, "ablation"))
        else:
            out.append(Variant(f"{cc.ablation_model}_r{r}", [*model_ovs, f"model.routing_iters={r}"], "ablation"))
    for kind in cc.routing_kinds:
        if kind == base.routing:
            out.append(Variant(cc.ablation_model, model_ovs, "routing"))
        else:
            out.append(Variant(f"{cc.ablation_model}_{kind}", [*model_ovs, f"model.routing={kind}"], "routing"))
    return out


def _train_config(cc: CompareConfig, variant_overrides: list[str], seed: int, run_dir: Path,
                  keep_steps: list[int] | None = None) -> Config:
    # A model's own overrides come after `steps`, so `train.steps=30000` in one model's list wins.
    return load_config(cc.base, [
        *cc.overrides, f"train.steps={cc.steps}", *variant_overrides, f"seed={seed}",
        f"train.run_dir={run_dir}", "resume=auto", f"eval.every={cc.eval_every}", f"eval.n={cc.eval_n}",
        *(["eval.classifier=null", f"eval.inception_weights={cc.inception_weights}"] if cc.inception_weights
          else [f"eval.classifier={cc.classifier}"]), f"train.sample_every={cc.eval_every}",
        f"train.keep_steps=[{','.join(str(st) for st in keep_steps or [])}]",
    ])


def _run_dir(cc: CompareConfig, variant: str, seed: int) -> Path:
    return Path(cc.out_dir) / variant / f"seed{seed}"


def _variant_steps(cc: CompareConfig, v: Variant) -> int:
    return _train_config(cc, v.overrides, cc.seeds[0], Path(".")).train.steps


def _finished(run_dir: Path, steps: int) -> bool:
    found = checkpoint.latest_valid(run_dir / "checkpoints")
    return found is not None and int(found[1]["step"]) >= steps


def run_all(cc: CompareConfig, log=print, only: Sequence[str] = ()) -> bool:
    """Train every (variant, seed) not finished yet, one after another; False if stopped by a signal.
    `only` limits the training to the named variants (one compare split over several processes)."""
    from capsgan_dist.train import train

    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise UserError("capsgan compare runs its trainings one after another in one process; "
                        "launch it without torchrun/accelerate (each run's own config may still say "
                        "how to train)")
    all_variants = variants(cc)
    names = [v.name for v in all_variants]
    unknown = [n for n in only if n not in names]
    if unknown:
        raise UserError(f"compare --only {','.join(unknown)}: not a model of {cc.name} "
                        f"(its models and ablation runs: {', '.join(names)})")
    todo = {(v.name, s): v for s in cc.seeds for v in all_variants  # seed-major: early seeds complete first
            if not only or v.name in only}
    for i, ((name, seed), v) in enumerate(todo.items(), 1):
        run_dir = _run_dir(cc, name, seed)
        cfg = _train_config(cc, v.overrides, seed, run_dir, cc.points.get(name))
        if _finished(run_dir, cfg.train.steps):
            log(f"[{i}/{len(todo)}] {name} seed {seed}: finished earlier, skipped")
            continue
        log(f"[{i}/{len(todo)}] {name} seed {seed}: training {cfg.train.steps} steps -> {run_dir}")
        summary = train(cfg)
        if summary["preempted"]:
            log(f"[{i}/{len(todo)}] {name} seed {seed}: stopped on a signal at step {summary['step']} "
                "(checkpoint saved); rerun the same command to resume")
            return False
        (run_dir / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")
        log(f"[{i}/{len(todo)}] {name} seed {seed}: done in {summary['wall_s']:.0f}s")
    return True


def eval_curve(run_dir: Path) -> dict[int, dict[str, float]]:
    """{step: {metric: value}} from the eval/ rows of a run's metrics.jsonl."""
    curve: dict[int, dict[str, float]] = {}
    for row in plots.read_metrics(run_dir / "metrics.jsonl"):
        vals = {k[len("eval/"):]: v for k, v in row.items() if k.startswith("eval/")}
        if vals:
            curve.setdefault(int(row["step"]), {}).update(vals)
    return curve


def cpu_curve(run_dir: Path) -> dict[int, float]:
    """{step: training CPU-seconds so far} from the logged rows of a run's metrics.jsonl."""
    return {int(r["step"]): float(r["cpu_s"]) for r in plots.read_metrics(run_dir / "metrics.jsonl")
            if "cpu_s" in r}


def d_label(m: ModelConfig) -> str:
    """Which discriminator a row used, for the tables: the kind, and any ablation knob off its default."""
    if m.discriminator == "capsule":
        name = f"capsule ({m.routing})" if m.routing != "dynamic" else "capsule"
        return name + (f", d_init={m.d_init}" if m.d_init != ModelConfig().d_init else "")
    if m.discriminator == "dcgan":
        return "dcgan (Radford et al.)" + ("" if m.d_batchnorm else ", no batch norm")
    defaults = ModelConfig()  # the paper's reading: any conv-D knob off its default is named
    knobs = [f"{k}={str(getattr(m, k)).lower()}" for k in ("d_kernel", "d_bias", "d_init", "conv_batchnorm")
             if getattr(m, k) != getattr(defaults, k)]
    if list(m.d_widths) != list(defaults.d_widths):
        knobs.append("d_widths=" + "-".join(map(str, m.d_widths)))
    return "conv (paper's reading)" + "".join(f", {k}" for k in knobs)


def _mean_std(xs: list[float]) -> tuple[float, float]:
    return statistics.fmean(xs), (statistics.stdev(xs) if len(xs) > 1 else 0.0)


def aggregate(cc: CompareConfig) -> dict:
    """Per variant and step: each metric's mean and std over seeds, plus every seed's raw value."""
    out: dict = {"config": {k: getattr(cc, k) for k in CompareConfig.__dataclass_fields__}, "variants": {}}
    for v in variants(cc):
        if v.name in out["variants"]:
            out["variants"][v.name]["groups"].append(v.group)
            continue
        curves = {s: eval_curve(_run_dir(cc, v.name, s)) for s in cc.seeds}
        cpu = {s: cpu_curve(_run_dir(cc, v.name, s)) for s in cc.seeds}
        steps = sorted(set.intersection(*(set(c) for c in curves.values()))) if curves else []
        rows = []
        for step in steps:
            row: dict = {"step": step}
            for m in curves[cc.seeds[0]][step]:
                vals = [curves[s][step][m] for s in cc.seeds if m in curves[s][step]]
                row[m], row[m + "_sd"] = _mean_std(vals)
                row[m + "_seeds"] = vals
            cpus = [cpu[s][step] for s in cc.seeds if step in cpu[s]]
            if cpus:
                row["cpu_s"], row["cpu_s_sd"] = _mean_std(cpus)
                row["cpu_s_seeds"] = cpus
            rows.append(row)
        wall = []
        for s in cc.seeds:
            p = _run_dir(cc, v.name, s) / "summary.json"
            if p.is_file():
                wall.append(json.loads(p.read_text())["wall_s"])
        finals = [curves[s][max(curves[s])] for s in cc.seeds if curves[s]]
        last_fid = [f["fid"] for f in finals if "fid" in f]
        model = _train_config(cc, v.overrides, cc.seeds[0], Path(".")).model
        out["variants"][v.name] = {"groups": [v.group], "d": d_label(model), "rows": rows, "wall_s_seeds": wall,
                                   "learned": sum(f < cc.learned_fid for f in last_fid), "n_seeds": len(last_fid)}
    return out


def _fmt(row: dict, m: str) -> str:
    if m not in row:
        return "-"
    digits = 4 if m == "kid" else 3 if m in ("precision", "recall") else 2
    if len(row.get(m + "_seeds", ())) == 1:  # one seed: no spread to show
        return f"{row[m]:.{digits}f}"
    return f"{row[m]:.{digits}f} ± {row[m + '_sd']:.{digits}f}"


def table(agg: dict, group: str = "models") -> str:
    """Markdown table: every evaluated step of every variant in `group`, mean ± std over seeds."""
    lines = ["| model | D | step | " + " | ".join(TABLE_METRICS) + " |",
             "|---|---|---:|" + "---:|" * len(TABLE_METRICS)]
    for name, v in agg["variants"].items():
        if group in v["groups"]:
            for row in v["rows"]:
                lines.append(f"| {name} | {v.get('d', '-')} | {row['step']} | "
                             + " | ".join(_fmt(row, m) for m in TABLE_METRICS) + " |")
    return "\n".join(lines) + "\n"


def points_table(agg: dict, cc: CompareConfig) -> str:
    """Markdown: the comparison points side by side, mean ± std and every seed's FID, plus CPU time."""
    lines = ["| model | D | step | " + " | ".join(TABLE_METRICS) + " | FID per seed | CPU s (mean) | learned |",
             "|---|---|---:|" + "---:|" * len(TABLE_METRICS) + "---|---:|---:|"]
    for name, steps in cc.points.items():
        v = agg["variants"].get(name, {"rows": [], "learned": 0, "n_seeds": 0})
        by_step = {r["step"]: r for r in v["rows"]}
        for st in steps:
            r = by_step.get(st)
            if r is None:
                dashes = " | ".join("-" for _ in TABLE_METRICS)
                lines.append(f"| {name} | {v.get('d', '-')} | {st} | {dashes} | not reached | - | - |")
                continue
            seeds = ", ".join(f"{x:.0f}" for x in r.get("fid_seeds", []))
            cpu = f"{r['cpu_s']:.0f}" if "cpu_s" in r else "-"
            lines.append(f"| {name} | {v.get('d', '-')} | {st} | " + " | ".join(_fmt(r, m) for m in TABLE_METRICS)
                         + f" | {seeds} | {cpu} | {v['learned']}/{v['n_seeds']} |")
    return "\n".join(lines) + "\n"


def plot_curves(agg: dict, group: str, metric: str, out: Path, title: str, x: str = "step") -> None:
    """`metric` vs step (or vs `cpu_s`) for each variant of `group`: mean line, min-max band over seeds."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for name, v in agg["variants"].items():
        rows = [r for r in v["rows"] if metric in r and x in r]
        if group not in v["groups"] or not rows:
            continue
        steps = [r[x] for r in rows]
        line, = ax.plot(steps, [r[metric] for r in rows], marker="o", ms=3,
                        label=f"{name} (n={len(rows[0][metric + '_seeds'])} seeds)")
        ax.fill_between(steps, [min(r[metric + "_seeds"]) for r in rows], [max(r[metric + "_seeds"]) for r in rows],
                        color=line.get_color(), alpha=0.2)
    ax.set_xlabel("training step" if x == "step" else "training CPU-seconds (mean over seeds, evaluation excluded)")
    space = "Inception" if agg["config"].get("inception_weights") else "classifier"
    ax.set_ylabel(metric.upper() + f" ({space} features)" if metric in ("fid", "kid") else metric)
    if metric == "fid":
        ax.set_yscale("log")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    if ax.lines:  # rows without cpu_s (runs from before it was logged) draw nothing on the CPU-time plot
        ax.legend()
    fig.tight_layout()
    plots.save_figure(fig, out, dpi=110)
    plt.close(fig)


def sample_grids(cc: CompareConfig, out_dir: Path) -> list[Path]:
    """One PNG per grid step: the fixed-noise grids of the models that reach it, side by side (first seed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    seed, written = cc.seeds[0], []
    for step in cc.grid_steps:
        # Models may train for different lengths: a step only the longer runs reach shows those.
        found = {n: plots.sample_file(_run_dir(cc, n, seed), step) for n in cc.models}
        names = [n for n, p in found.items() if p.is_file()]
        pngs = [found[n] for n in names]
        if not names:
            continue
        fig, axes = plt.subplots(1, len(names), figsize=(4 * len(names), 4.3))
        for ax, name, png in zip(list(axes) if len(names) > 1 else [axes], names, pngs):
            ax.imshow(plt.imread(png), cmap="gray")
            ax.set_title(f"{name}, step {step}")
            ax.axis("off")
        fig.suptitle(f"{cc.name}: fixed noise, seed {seed}")
        fig.tight_layout()
        path = out_dir / f"grid_step_{step:07d}.png"
        plots.save_figure(fig, path, dpi=110)
        plt.close(fig)
        written.append(path)
    return written


def report(cc: CompareConfig) -> dict:
    """Aggregate finished runs and write compare.json, table.md and the plots."""
    out_dir = Path(cc.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    agg = aggregate(cc)
    n = len(cc.seeds)
    text = f"# {cc.name}: {', '.join(cc.models)}; {n} seed{'s' * (n != 1)}, {cc.steps} steps\n\n" + table(agg)
    text += "\nTraining wall time per run (s, evaluations included): " + ", ".join(
        f"{name} {statistics.fmean(v['wall_s_seeds']):.0f}" for name, v in agg["variants"].items()
        if v["wall_s_seeds"]) + "\n"
    if cc.points:
        text += (f"\n## Comparison points\n\n'learned': last FID below {cc.learned_fid:g}. CPU s: training "
                 "CPU-seconds to that step (summed over ranks, evaluation excluded).\n\n" + points_table(agg, cc))
    if cc.routing_ablation:
        text += f"\n## Routing iterations ({cc.ablation_model})\n\n" + table(agg, "ablation")
    if cc.routing_kinds:
        text += f"\n## Routing kinds ({cc.ablation_model})\n\n" + table(agg, "routing")
    agg["gam"] = compare_points.gam_battles(cc, _run_dir)
    if agg["gam"]:
        text += (f"\n## GAM battles ({cc.gam_models[0]} = M1, {cc.gam_models[1]} = M2; {cc.gam_n} samples a side, "
                 f"tolerance {cc.gam_tolerance:g})\n\n" + compare_points.gam_table(agg["gam"]))
    (out_dir / "table.md").write_text(text)
    plot_curves(agg, "models", "fid", out_dir / "fid.png", f"{cc.name}: FID vs step (mean, min-max over seeds)")
    plot_curves(agg, "models", "fid", out_dir / "fid_cpu.png", f"{cc.name}: FID vs training CPU time", x="cpu_s")
    if cc.routing_ablation:
        plot_curves(agg, "ablation", "fid", out_dir / "ablation.png", f"{cc.name}: routing iterations, FID vs step")
    if cc.routing_kinds:
        plot_curves(agg, "routing", "fid", out_dir / "routing.png", f"{cc.name}: routing kinds, FID vs step")
    agg["grids"] = [str(p) for p in sample_grids(cc, out_dir)]
    points_png = compare_points.points_grid(cc, _run_dir, out_dir / "grid_points.png") if cc.points else None
    if points_png:
        agg["grids"].append(str(points_png))
    pngs = ["fid.png", "fid_cpu.png", *["ablation.png"] * bool(cc.routing_ablation),
            *["routing.png"] * bool(cc.routing_kinds)]
    agg["written"] = ["table.md", "compare.json", *pngs, *(Path(g).name for g in agg["grids"])]
    (out_dir / "compare.json").write_text(json.dumps(agg, indent=1) + "\n")
    return agg


def compare(cc: CompareConfig, log=print, only: Sequence[str] = ()) -> dict | None:
    """Train what is missing, then write the report; returns the aggregate (None if stopped early).
    With `only`, train those variants' runs and write no report ({} when they all finished)."""
    longest = max(_variant_steps(cc, v) for v in variants(cc))
    skipped = [s for s in cc.grid_steps if s > longest or (s % cc.eval_every and s != longest)]
    if skipped:
        log(f"grid steps {skipped} are beyond {longest} steps or off the {cc.eval_every}-step sample "
            "interval: left out")
    for v in variants(cc):  # every variant's config is valid (e.g. em's capsule sizes) before any training
        _train_config(cc, v.overrides, cc.seeds[0], Path("."))
    if not run_all(cc, log, only):
        return None
    return {} if only else report(cc)


__all__ = ["CompareConfig", "load_compare_config", "compare", "report", "aggregate", "eval_curve", "table"]
