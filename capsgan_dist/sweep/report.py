"""A finished (or interrupted) sweep's outputs: results.csv / results.md sorted by the metric, best_config.yaml."""

from __future__ import annotations

import csv
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from capsgan_dist.config import replace, to_yaml
from capsgan_dist.sweep.config import SweepConfig
from capsgan_dist.sweep.trial import ATTEMPTS, RESTORED, SUMMARY, plain, run_folder, trial_config

SHOWN_METRICS = ("loss_d", "loss_g", "acc_d", "d_real", "d_fake")
UNFINISHED = ("PENDING", "RUNNING", "PAUSED")
INTERRUPTED_EXIT = 130  # like a shell after Ctrl-C: rerun the command to resume


@dataclass
class SweepSummary:
    """What the CLI prints and returns."""

    message: str
    exit_code: int


def _status(trial, step: int, steps: int) -> str:
    if trial.status == "ERROR":
        return "failed"
    if trial.status in UNFINISHED:
        return "unfinished"
    return "done" if step >= steps else "stopped early"


def _first_error_line(trial) -> str:
    path = Path(trial.path) / "error.txt"
    if not path.is_file():
        return ""
    lines = [ln.strip() for ln in path.read_text(errors="replace").splitlines() if ln.strip()]
    return lines[-1][:200] if lines else ""  # the exception line closes the traceback


def _world_size(run_dir: Path, summary: dict) -> int | None:
    """From the trial's summary, or for a trial stopped before it wrote one, from its environment.json."""
    if "world_size" in summary:
        return summary["world_size"]
    env = run_dir / "environment.json"  # written by train() when the run starts
    try:
        return json.loads(env.read_text()).get("world_size") if env.is_file() else None
    except json.JSONDecodeError:
        return None


def trial_rows(trials: list, sweep: SweepConfig, base: dict) -> list[dict[str, Any]]:
    """One row per trial: status, metric, searched values, a few training metrics, run folder."""
    rows = []
    for t in trials:
        last = t.last_result or {}
        run_dir = run_folder(Path(t.path), sweep.name, t.trial_id)
        attempts = (run_dir / ATTEMPTS).read_text().count("\n") if (run_dir / ATTEMPTS).is_file() else 0
        summary = json.loads((run_dir / SUMMARY).read_text()) if (run_dir / SUMMARY).is_file() else {}
        step = int(last.get("step", 0))
        steps = int(plain(t.config.get("train.steps", base["train"]["steps"])))  # train.steps may be searched
        row: dict[str, Any] = {"trial": t.trial_id, "status": _status(t, step, steps),
                               sweep.metric: last.get(sweep.metric), "step": step}
        row.update({k: plain(t.config.get(k)) for k in sweep.searched})
        row.update({k: last.get(k) for k in SHOWN_METRICS})
        if sweep.scheduler.name == "pbt":  # the last clone: "<donor trial>@<step>"
            clone = (run_dir / RESTORED).is_file() and json.loads((run_dir / RESTORED).read_text())
            row["cloned_from"] = f"{clone['trial_id']}@{clone['step']}" if clone else ""
        row.update({"world_size": _world_size(run_dir, summary), "attempts": attempts,
                    "run_dir": str(run_dir), "error": _first_error_line(t) if t.status == "ERROR" else ""})
        rows.append(row)
    sign = 1 if sweep.mode == "min" else -1

    def key(r: dict) -> tuple:
        v = r[sweep.metric]
        ok = r["status"] != "failed" and isinstance(v, (int, float)) and math.isfinite(v)
        return (r["status"] == "failed", not ok, sign * v if ok else 0.0)

    return sorted(rows, key=key)


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return "" if v is None else str(v)


def write_table(rows: list[dict[str, Any]], csv_path: Path, md_path: Path, sweep_dir: Path) -> None:
    """The same rows as CSV (full values) and Markdown (rounded, run folders relative to the sweep)."""
    if not rows:
        return
    cols = list(rows[0])
    with open(csv_path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["rank", *cols])
        w.writeheader()
        for i, r in enumerate(rows, 1):
            w.writerow({"rank": i, **r})
    md_cols = [c for c in cols if c != "error" or any(r["error"] for r in rows)]
    lines = ["| rank | " + " | ".join(md_cols) + " |", "|" + "---|" * (len(md_cols) + 1)]
    for i, r in enumerate(rows, 1):
        cells = [_fmt(r[c]) if c != "run_dir" else str(Path(r[c]).relative_to(sweep_dir)) for c in md_cols]
        lines.append(f"| {i} | " + " | ".join(c.replace("|", "/") for c in cells) + " |")
    md_path.write_text("\n".join(lines) + "\n")


def write_best_config(row: dict[str, Any], trial, sweep: SweepConfig, base: dict, path: Path) -> None:
    """The best trial's training config (its final params, e.g. PBT's last lrs) as a `capsgan train` YAML."""
    params = {k: plain(trial.config[k]) for k in sweep.searched if k in trial.config}
    cfg = trial_config(base, params)
    cfg = replace(cfg, name=f"{sweep.name}-best", train={"run_dir": None})
    header = (f"# Best trial {row['trial']} of sweep '{sweep.name}' ({row['status']}): "
              f"{sweep.metric}={_fmt(row[sweep.metric])} ({sweep.mode}) at step {row['step']}.\n"
              f"# Searched: {', '.join(f'{k}={_fmt(v)}' for k, v in params.items())}.\n"
              f"# train.steps is the sweep's trial length; raise it for a full run: capsgan train {path.name} "
              "train.steps=10000\n")
    path.write_text(header + to_yaml(cfg))


def write_outputs(trials: list, sweep: SweepConfig, base: dict, sweep_dir: Path) -> SweepSummary:
    """Write results.csv, results.md and best_config.yaml; say how the sweep went."""
    rows = trial_rows(trials, sweep, base)
    write_table(rows, sweep_dir / "results.csv", sweep_dir / "results.md", sweep_dir)
    counts = {s: sum(r["status"] == s for r in rows) for s in ("done", "stopped early", "failed", "unfinished")}
    tally = ", ".join(f"{n} {s}" for s, n in counts.items() if n)
    ranked = [r for r in rows if r["status"] not in ("failed",) and isinstance(r[sweep.metric], (int, float))]
    if counts["unfinished"]:
        return SweepSummary(f"sweep interrupted ({tally}); rerun the same command to resume. "
                            f"Partial table: {sweep_dir / 'results.md'}", INTERRUPTED_EXIT)
    if not ranked:
        return SweepSummary(f"sweep finished with no usable trial ({tally}); see {sweep_dir / 'results.md'}", 1)
    # Metrics at different steps do not compare well: the best config comes from the best trial that
    # ran all its steps (ASHA's survivors), and from the best of the rest only when none did.
    best = ([r for r in ranked if r["status"] == "done"] or ranked)[0]
    by_id = {t.trial_id: t for t in trials}
    write_best_config(best, by_id[best["trial"]], sweep, base, sweep_dir / "best_config.yaml")
    why = ""
    if best is not ranked[0]:  # Ray's "Current best trial" line ranks every trial by its last report
        why = (f" (the best trial that ran all its steps; Ray's 'Current best trial' is {ranked[0]['trial']}, "
               f"stopped early at step {ranked[0]['step']}: its {sweep.metric} is from fewer steps)")
    return SweepSummary(f"sweep finished ({tally}). Best: trial {best['trial']} {sweep.metric}="
                        f"{_fmt(best[sweep.metric])}{why}. Table: {sweep_dir / 'results.md'}; best config: "
                        f"{sweep_dir / 'best_config.yaml'}", 0)
