"""The semi-supervised table: final test error (%) per group and model, mean +- std over seeds.

    python scripts/results/semisup_table.py runs/semisup      # after scripts/results/semisup.sh

Reads each run's last `eval/test_error` row at its final step (metrics.jsonl) and each CapsNet
classifier's held-out accuracy (its .json); writes OUT/table.md and prints it.
"""

import json
import statistics
import sys
from pathlib import Path

import yaml

MODELS = {"capsule_ssl": "capsule D, semi-supervised", "conv_ssl": "conv D, semi-supervised",
          "capsule_sup": "capsule D, labeled images only", "conv_sup": "conv D, labeled images only",
          "capsnet": "CapsNet classifier, labeled images only"}


def run_error(run: Path) -> tuple[float, int] | None:
    """(test error in %, step) of a finished run, None if it has not reached its last step."""
    steps = yaml.safe_load((run / "config.yaml").read_text())["train"]["steps"]
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    last = [r for r in rows if "eval/test_error" in r and r["step"] == steps]
    return (100 * last[-1]["eval/test_error"], steps) if last else None


def errors(group: Path, model: str) -> tuple[list[float], str]:
    """Each seed's test error (%) and a note on how long each trained."""
    if model == "capsnet":
        metas = [json.loads(p.read_text()) for p in sorted((group / "capsnet").glob("seed*.json"))]
        return [100 * (1 - m["accuracy"]) for m in metas], ", ".join(sorted({f"{m['steps']} steps" for m in metas}))
    found = [run_error(r) for r in sorted((group / model).glob("seed*")) if (r / "config.yaml").is_file()]
    done = [f for f in found if f]
    return [e for e, _ in done], ", ".join(sorted({f"{s} steps" for _, s in done}))


def main(out: Path) -> None:
    lines = ["| data, labels | model | test error % (mean ± std) | seeds | trained |", "|---|---|---|---|---|"]
    for group in sorted(p for p in out.iterdir() if p.is_dir()):
        for model, title in MODELS.items():
            errs, note = errors(group, model)
            if not errs:
                continue
            std = f"{statistics.stdev(errs):.2f}" if len(errs) > 1 else "n/a"
            lines.append(f"| {group.name} | {title} | {statistics.mean(errs):.2f} ± {std} | {len(errs)} | {note} |")
    text = "\n".join(lines) + "\n"
    (out / "table.md").write_text(text)
    print(text, end="")


if __name__ == "__main__":
    main(Path(sys.argv[1]))
