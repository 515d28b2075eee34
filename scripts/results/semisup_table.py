"""The semi-supervised table: final test error (%) per group and model, mean +- std over seeds.

    python scripts/results/semisup_table.py runs/semisup                     # after scripts/results/semisup.sh
    python scripts/results/semisup_table.py runs/semisup --record docs/data/semisup_runs.jsonl
    python scripts/results/semisup_table.py runs/semisup --plot docs/img/semisup_error.png

Reads each finished run's last `eval/test_error` row at its final step (metrics.jsonl) and each
CapsNet classifier's held-out accuracy (its .json). With --record, every finished run also becomes
one line of the record file (test error, steps, training CPU s, commit), which is committed: the
experiment is too long to run in one go on a CPU, and the run folders do not outlive the machine.
The table is made from the record and the local runs together (a local run replaces its record
line); scripts/results/semisup.sh skips runs already recorded. Writes OUT/table.md and prints it;
--plot PNG also draws each run's test error over its steps.
"""

import argparse
import functools
import json
import os
import statistics
from pathlib import Path

import yaml

from capsgan_dist import provenance
from capsgan_dist.compare import cpu_curve, eval_curve
from capsgan_dist.plots import save_figure

MODELS = {"capsule_ssl": "capsule D, semi-supervised", "conv_ssl": "conv D, semi-supervised",
          "capsule_sup": "capsule D, labeled images only", "conv_sup": "conv D, labeled images only",
          "capsnet": "CapsNet classifier, labeled images only"}


def run_record(run: Path) -> dict | None:
    """The record of a finished GAN run (None if it has not reached its last step)."""
    steps = yaml.safe_load((run / "config.yaml").read_text())["train"]["steps"]
    error = eval_curve(run).get(steps, {}).get("test_error")
    if error is None:
        return None
    cpu = cpu_curve(run)
    env = json.loads((run / "environment.json").read_text()) if (run / "environment.json").is_file() else {}
    return {"test_error": round(100 * error, 4), "steps": steps,
            "cpu_s": round(cpu[max(cpu)], 1) if cpu else None, "commit": _short(env.get("git_commit"))}


def local_records(out: Path) -> dict[str, dict]:
    """Every finished run under OUT, keyed GROUP/MODEL/seedN."""
    found = {}
    for group in sorted(p for p in out.iterdir() if p.is_dir()):
        for model in MODELS:
            if model == "capsnet":  # classifier files: seedN.json beside seedN.safetensors
                for p in sorted((group / "capsnet").glob("seed*.json")):
                    meta = json.loads(p.read_text())
                    found[f"{group.name}/capsnet/{p.stem}"] = {
                        "test_error": round(100 * (1 - meta["accuracy"]), 4), "steps": meta["steps"],
                        "cpu_s": meta.get("cpu_seconds"),  # older classifier files name neither: merge()
                        "commit": _short(meta.get("git_commit"))}  # gives the recording commit
                continue
            for run in sorted((group / model).glob("seed*")):
                rec = run_record(run) if (run / "config.yaml").is_file() else None
                if rec:
                    found[f"{group.name}/{model}/{run.name}"] = rec
    return found


def read_record(path: Path) -> dict[str, dict]:
    if not path.is_file():
        return {}
    return {r.pop("key"): r for r in map(json.loads, filter(str.strip, path.read_text().splitlines()))}


def merge(record: dict[str, dict], local: dict[str, dict]) -> dict[str, dict]:
    """The record updated with the local runs: a local run replaces its line's values, except that
    what it does not know (an older CapsNet file's commit) stays as first recorded, or is the commit
    now checked out."""
    runs = dict(record)
    for key, rec in local.items():
        runs[key] = {**record.get(key, {}), **{f: v for f, v in rec.items() if v is not None}}
        if "commit" not in runs[key]:
            runs[key]["commit"] = _head()
    return runs


@functools.cache
def _head() -> str | None:
    return _short(provenance.git_commit())


def _short(commit: str | None) -> str | None:
    return commit[:7] if commit else None


def write_record(path: Path, runs: dict[str, dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text("".join(json.dumps({"key": k, **runs[k]}) + "\n" for k in sorted(runs)))
    os.replace(tmp, path)  # two lanes may finish together: never leave half a file


def _seeds(runs: dict[str, dict], group: str, model: str) -> dict[str, dict]:
    """{"seedN": record} of one group's model."""
    return {k.split("/")[2]: r for k, r in runs.items() if k.startswith(f"{group}/{model}/")}


def table(runs: dict[str, dict]) -> str:
    lines = ["| data, labels | model | test error % (mean ± std) | seeds | trained |", "|---|---|---|---|---|"]
    groups = sorted({k.split("/")[0] for k in runs})
    for group in groups:
        for model, title in MODELS.items():
            mine = _seeds(runs, group, model)
            if not mine:
                continue
            errs = [r["test_error"] for r in mine.values()]
            std = f"{statistics.stdev(errs):.2f}" if len(errs) > 1 else "n/a"
            seeds = ", ".join(f"{s.removeprefix('seed')}: {r['test_error']:.2f}" for s, r in sorted(mine.items()))
            steps = ", ".join(sorted({f"{r['steps']} steps" for r in mine.values()}))
            lines.append(f"| {group} | {title} | {statistics.mean(errs):.2f} ± {std} | {seeds} | {steps} |")
    return "\n".join(lines) + "\n"


def plot(out: Path, runs: dict[str, dict], path: Path) -> None:
    """Test error over training steps, one panel per group: each D model's finished seeds from the local
    run folders (thin) and their mean (thick); each CapsNet classifier's final error, mean over seeds
    (dashed: it trains in fewer, larger steps of its own)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups = sorted({k.split("/")[0] for k in runs})
    fig, axes = plt.subplots(1, len(groups), figsize=(5 * len(groups), 4), squeeze=False)
    for ax, group in zip(axes[0], groups):
        for i, (model, title) in enumerate(MODELS.items()):
            color = f"C{i}"
            if model == "capsnet":
                errs = [r["test_error"] for r in _seeds(runs, group, model).values()]
                if errs:
                    ax.axhline(statistics.mean(errs), color=color, ls="--", label=f"{title} (n={len(errs)})")
                continue
            curves = []
            for run in sorted((out / group / model).glob("seed*")):
                if f"{group}/{model}/{run.name}" not in runs:  # unfinished
                    continue
                errs = {s: 100 * v["test_error"] for s, v in eval_curve(run).items() if "test_error" in v}
                if errs:
                    curves.append(errs)
                    ax.plot(*zip(*sorted(errs.items())), color=color, lw=0.6, alpha=0.5)
            common = sorted(set.intersection(*(set(c) for c in curves))) if curves else []
            if common:
                ax.plot(common, [statistics.mean(c[s] for c in curves) for s in common], color=color, lw=2,
                        label=f"{title} (n={len(curves)})")
        ax.set_title(group)
        ax.set_xlabel("training step")
        ax.set_ylabel("test error %")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="best")
    fig.tight_layout()
    save_figure(fig, path, dpi=100)
    plt.close(fig)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("out", type=Path, help="the experiment's folder (scripts/results/semisup.sh OUT)")
    p.add_argument("--record", type=Path, help="committed JSONL of finished runs: read, updated, rewritten")
    p.add_argument("--plot", type=Path, help="also draw test error over steps to this PNG (run folders only)")
    args = p.parse_args()
    runs = local_records(args.out) if args.out.is_dir() else {}
    if args.record:
        runs = merge(read_record(args.record), runs)
        write_record(args.record, runs)
    text = table(runs)
    if args.out.is_dir():
        (args.out / "table.md").write_text(text)
    print(text, end="")
    if args.plot:
        plot(args.out, runs, args.plot)


if __name__ == "__main__":
    main()
