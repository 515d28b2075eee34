"""Every trial's FID at every evaluation, then one row per routing setting over its seeds.

    python scripts/results/sweep_fids.py SWEEP_DIR [--plot OUT.png] [--learned 600]

The summary gives the last FID of each seed, mean +- std, how many seeds learned (last FID below
--learned; the MNIST compares use 600, about half the FID of uniform noise) and the training
CPU-seconds per step (the runs' own cpu_s, evaluation excluded). --plot draws FID vs step per
routing setting: mean line, min-max band over seeds.
"""

import argparse
import csv
import statistics
from pathlib import Path

import yaml

from capsgan_dist.compare import cpu_curve, eval_curve, plot_curves

p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
p.add_argument("sweep", type=Path, help="sweep folder (holds results.csv)")
p.add_argument("--plot", type=Path, help="write FID-vs-step curves per routing setting to this PNG")
p.add_argument("--learned", type=float, default=600.0, help="a seed learned when its last FID is below this")
args = p.parse_args()

steps: set[int] = set()
table = []
with open(args.sweep / "results.csv") as f:
    for row in csv.DictReader(f):
        run = Path(row["run_dir"])
        cfg = yaml.safe_load((run / "config.yaml").read_text())
        fids = {step: ev["fid"] for step, ev in eval_curve(run).items() if "fid" in ev}
        cpu = cpu_curve(run)
        steps |= set(fids)
        kind = cfg["model"].get("routing", "dynamic")  # runs from before model.routing are dynamic
        m, o = cfg["model"], cfg["optim"]
        label = kind if kind == "attention" else f"{kind} x{m['routing_iters']}"  # attention has no iterations
        table.append((label, cfg["seed"], o["lr_d"], o["lr_g"], row["status"], fids,
                      cpu[max(cpu)] / max(cpu) if cpu else None))
steps_sorted = sorted(steps)
print("| routing | seed | lr_d | lr_g | status | " + " | ".join(f"FID@{s}" for s in steps_sorted) + " |")
print("|---|---:|---:|---:|---|" + "---:|" * len(steps_sorted))
for routing, seed, lr_d, lr_g, status, fids, _ in sorted(table, key=lambda t: t[:4]):
    cells = " | ".join(f"{fids[s]:.0f}" if s in fids else "" for s in steps_sorted)
    print(f"| {routing} | {seed} | {lr_d:.2e} | {lr_g:.2e} | {status} | {cells} |")

groups: dict[str, list] = {}
for t in sorted(table, key=lambda t: t[:2]):
    groups.setdefault(t[0], []).append(t)
print(f"\n| routing | last FID per seed | mean ± std | learned (last FID < {args.learned:g}) | mean of the last 3 "
      "evaluations | training CPU s/step |")
print("|---|---|---:|---:|---:|---:|")
variants = {}
for label, trials in groups.items():
    last = [t[5][max(t[5])] for t in trials if t[5]]
    last3 = [statistics.fmean([t[5][s] for s in sorted(t[5])[-3:]]) for t in trials if t[5]]
    cpu = [t[6] for t in trials if t[6] is not None]
    sd = statistics.stdev(last) if len(last) > 1 else 0.0
    print(f"| {label} | {', '.join(f'{x:.0f}' for x in last)} | {statistics.fmean(last):.0f} ± {sd:.0f} | "
          f"{sum(x < args.learned for x in last)}/{len(last)} | {statistics.fmean(last3):.0f} | "
          f"{statistics.fmean(cpu):.3f} |" if last and cpu else f"| {label} | no evaluations | | | | |")
    common = sorted(set.intersection(*(set(t[5]) for t in trials)))  # steps every seed reached
    variants[label] = {"groups": ["routing"], "rows": [
        {"step": s, "fid": statistics.fmean(t[5][s] for t in trials), "fid_seeds": [t[5][s] for t in trials]}
        for s in common]}
if args.plot:
    plot_curves({"variants": variants}, "routing", "fid", args.plot, f"{args.sweep.name}: FID vs step per routing")
    print(f"\nwrote {args.plot}")
