"""Where a long `capsgan compare` stands: every run's evaluations so far, from its metrics.jsonl.

    python scripts/results/paper_status.py runs/paper_mnist [runs/paper_fashion ...]
    python scripts/results/paper_status.py runs/paper_mnist/capsgan/seed0     # one run folder

Prints one Markdown table per compare folder: model, seed, steps done, training CPU-seconds, and
FID / IS at every evaluation made so far. Reads files only; safe beside the running compare.
"""

from __future__ import annotations

import sys
from pathlib import Path

from capsgan_dist import plots


def run_status(run: Path) -> tuple[int, float, list[tuple[int, float, float]]]:
    """(last logged step, its CPU-seconds, [(step, FID, IS) of each evaluation])."""
    rows = plots.read_metrics(run / "metrics.jsonl")
    logged = [r for r in rows if "cpu_s" in r]
    evals = [(int(r["step"]), r["eval/fid"], r.get("eval/is", float("nan"))) for r in rows if "eval/fid" in r]
    return (int(logged[-1]["step"]) if logged else 0), (logged[-1]["cpu_s"] if logged else 0.0), evals


def main(folders: list[str]) -> None:
    for folder in map(Path, folders):
        print(f"\n### {folder}\n\n| model | seed | step | CPU s | FID at step (IS) |\n|---|---:|---:|---:|---|")
        runs = sorted(folder.glob("*/seed*")) or ([folder] if (folder / "metrics.jsonl").is_file() else [])
        if not runs:
            print(f"(no runs: {folder} holds neither MODEL/seedN folders nor a metrics.jsonl)")
        for run in runs:
            step, cpu, evals = run_status(run)
            cells = ", ".join(f"{s}: {f:.0f} ({i:.2f})" for s, f, i in evals) or "-"
            print(f"| {run.parent.name} | {run.name[4:]} | {step} | {cpu:.0f} | {cells} |")


if __name__ == "__main__":
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    main(sys.argv[1:])
