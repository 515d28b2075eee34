"""Pool repeated runs of benchmarks/step.py (their --json files) into one table of medians.

    python benchmarks/summarize.py benchmarks/results/cpu_f_*.json

Samples of the same case and settings from every file are pooled; the table gives the median
over all of them, and each speed-up is a ratio of pooled medians taken in the same runs.
"""

from __future__ import annotations

import argparse
import json
import statistics
from collections import defaultdict
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("files", nargs="+")
    args = p.parse_args(argv)
    pooled: dict[tuple, dict] = defaultdict(lambda: {"wall_s": [], "cpu_s": [], "peak": [], "runs": 0})
    for f in args.files:
        for r in json.loads(Path(f).read_text())["rows"]:
            if "wall_s" not in r:
                continue
            key = (r["device"], r["threads"], r["batch"], r["dtype"], r["compile"], r["graphs"], r["case"])
            slot = pooled[key]
            slot["wall_s"] += r["wall_s"]
            slot["cpu_s"] += r["cpu_s"]
            slot["runs"] += 1
            slot["images"] = r["images"]
            if r.get("peak_bytes") is not None:
                slot["peak"].append(r["peak_bytes"] / r["images"] / 2**20)
    med = {k: (statistics.median(v["wall_s"]), statistics.median(v["cpu_s"])) for k, v in pooled.items()}
    print("| threads | batch | dtype | compile | case | runs x samples | img/s (median) | ms/step | CPU ms/step | "
          "vs d_ref (wall) | vs d_ref (CPU) | vs d_einsum (wall) | peak MB/img |")
    print("|" + "---|" * 13)
    for key in sorted(pooled, key=lambda k: (k[1], k[2], k[3], k[4], k[5], k[6])):
        dev, threads, batch, dtype, comp, graphs, case = key
        v, (w, c) = pooled[key], med[key]
        ref = med.get((*key[:6], "d_ref")) if case.startswith("d_") or case == "d" else None
        ein = med.get((*key[:6], "d_einsum")) if case.startswith("d_") or case == "d" else None
        cells = [str(threads), str(batch), dtype, "yes" if comp else "no", case,
                 f"{v['runs']} x {len(v['wall_s']) // max(1, v['runs'])}", f"{v['images'] / w:.1f}",
                 f"{w * 1e3:.0f}", f"{c * 1e3:.0f}",
                 f"{ref[0] / w:.2f}x" if ref else "", f"{ref[1] / c:.2f}x" if ref else "",
                 f"{ein[0] / w:.2f}x" if ein else "",
                 f"{statistics.median(v['peak']):.2f}" if v["peak"] else ""]
        print("| " + " | ".join(cells) + " |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
