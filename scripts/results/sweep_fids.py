"""Every trial's FID at every evaluation, as a Markdown table: python scripts/results/sweep_fids.py SWEEP_DIR."""

import csv
import json
import sys
from pathlib import Path

import yaml

sweep = Path(sys.argv[1])
steps: set[int] = set()
table = []
with open(sweep / "results.csv") as f:
    for row in csv.DictReader(f):
        run = Path(row["run_dir"])
        cfg = yaml.safe_load((run / "config.yaml").read_text())
        evals = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if "eval/fid" in line]
        fids = {e["step"]: e["eval/fid"] for e in evals}
        steps |= set(fids)
        kind = cfg["model"].get("routing", "dynamic")  # runs from before model.routing are dynamic
        m, o = cfg["model"], cfg["optim"]
        table.append((f"{kind} x{m['routing_iters']}", cfg["seed"], o["lr_d"], o["lr_g"], row["status"], fids))
steps_sorted = sorted(steps)
print("| routing (kind x iterations) | seed | lr_d | lr_g | status | "
      + " | ".join(f"FID@{s}" for s in steps_sorted) + " |")
print("|---|---:|---:|---:|---|" + "---:|" * len(steps_sorted))
for routing, seed, lr_d, lr_g, status, fids in sorted(table, key=lambda t: t[:4]):
    cells = " | ".join(f"{fids[s]:.0f}" if s in fids else "" for s in steps_sorted)
    print(f"| {routing} | {seed} | {lr_d:.2e} | {lr_g:.2e} | {status} | {cells} |")
