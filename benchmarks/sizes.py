"""Cost against the image size: each D step and G step at 28, 32, 64 and 128 px, time and peak memory per image.

    python benchmarks/sizes.py                       # 1 thread, batch 8, fp32, RGB, paper presets
    python benchmarks/sizes.py --sizes 28 64 --repeats 3 --no-write

For each size, benchmarks/step.py times the cases round-robin in one subprocess (so load from
other processes hits them alike) and measures each one's peak memory in its own: the capsule D
step (d), the conv D of the paper's reading (d_conv), Radford et al.'s DCGAN D (d_dcgan), and both
generators alone (gen_dcgan, gen_caps). The table gives ms and peak MB per image and the capsule
D's cost as a multiple of each conv D's at the same size, timed interleaved: the ratio that the
capsule D's strided conv1 (model.caps_max_grid) keeps bounded. Raw numbers go to
benchmarks/results/cpu_sizes.json; the table is appended to docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from datetime import datetime
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CASES = ("d", "d_conv", "d_dcgan", "gen_dcgan", "gen_caps")


def measure(size: int, args: argparse.Namespace, json_path: Path) -> dict:
    cmd = [sys.executable, str(REPO / "benchmarks" / "step.py"), "--threads", str(args.threads), "--batches",
           str(args.batch), "--dtypes", "fp32", "--cases", *CASES, "--repeats", str(args.repeats), "--no-write",
           "--json", str(json_path), "--set", f"data.image_size={size}", f"data.channels={args.channels}"]
    subprocess.run(cmd, check=True, cwd=REPO, timeout=3600)
    rows = json.loads(json_path.read_text())["rows"]
    out = {}
    for r in rows:
        if "wall_s" not in r:
            out[r["case"]] = {"error": r.get("error")}
            continue
        med = statistics.median(r["wall_s"])
        out[r["case"]] = {"ms_per_img": 1e3 * med / r["images"], "cpu_ms_per_img": 1e3 * statistics.median(r["cpu_s"])
                          / r["images"], "peak_mb_per_img": (r.get("peak_bytes") or 0) / r["images"] / 2**20}
    return out


def table(results: dict[int, dict]) -> str:
    lines = ["| size | case | ms/img | CPU ms/img | peak MB/img | capsule D / conv D | capsule D / dcgan D |",
             "|---:|---|---:|---:|---:|---:|---:|"]
    for size, cases in results.items():
        d = cases.get("d", {}).get("cpu_ms_per_img")
        for case in CASES:
            c = cases.get(case, {})
            if "error" in c:
                lines.append(f"| {size} | {case} | error: {c['error']} | | | | |")
                continue
            ratios = ""
            if case == "d":
                ratios = " | ".join(f"{d / cases[ref]['cpu_ms_per_img']:.2f}x" for ref in ("d_conv", "d_dcgan"))
            else:
                ratios = " | "
            lines.append(f"| {size} | {case} | {c['ms_per_img']:.2f} | {c['cpu_ms_per_img']:.2f} | "
                         f"{c['peak_mb_per_img']:.2f} | {ratios} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes", nargs="+", type=int, default=[28, 32, 64, 128])
    p.add_argument("--channels", type=int, default=3)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--json", default=str(REPO / "benchmarks" / "results" / "cpu_sizes.json"))
    p.add_argument("--out", default=str(REPO / "docs" / "benchmarks.md"))
    p.add_argument("--no-write", action="store_true", help="print only")
    args = p.parse_args(argv)
    started = datetime.now().strftime("%Y-%m-%d %H:%M")
    results = {}
    tmp = Path(args.json).with_suffix(".step.json")
    for size in args.sizes:
        results[size] = measure(size, args, tmp)
        print(f"{size} px: " + ", ".join(f"{k} {v.get('ms_per_img', float('nan')):.2f} ms/img"
                                         for k, v in results[size].items()), flush=True)
    tmp.unlink(missing_ok=True)
    text = table(results)
    print("\n" + text)
    recorded = {k: (os.path.relpath(v, REPO) if k in ("json", "out") else v) for k, v in vars(args).items()}
    Path(args.json).write_text(json.dumps({"args": recorded, "results": results}, indent=1))  # no machine paths
    if not args.no_write:
        cmd = "python benchmarks/sizes.py " + " ".join(argv if argv is not None else sys.argv[1:])
        with Path(args.out).open("a") as f:
            f.write(f"\n## {started}: cost against the image size (CPU)\n\n- Command: `{cmd.strip()}`\n\n{text}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
