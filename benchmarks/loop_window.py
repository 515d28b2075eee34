"""Time a real training run per log window: wall and CPU seconds per step, from `train()`'s own log hook.

    python benchmarks/loop_window.py configs/mnist_capsgan.yaml --steps 40 --threads 1
    PYTHONPATH=OTHER_CHECKOUT python benchmarks/loop_window.py ...   # the same run with another tree's code

Everything `train()` does between two log rows is timed (batch fetch, noise, D and G steps, the
per-step bookkeeping, the log row itself), set-up and the final samples/checkpoint are not.
Only public API that older checkouts have too (`load_config`, `train(cfg, on_log=...)`) is used,
so pointing PYTHONPATH at another checkout times that checkout's loop: run both in turn,
interleaved, on a shared machine. Prints one JSON line; the first window (warm-up) is dropped.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("config")
    p.add_argument("overrides", nargs="*", help="dotted overrides, e.g. train.batch_real=32")
    p.add_argument("--steps", type=int, default=40)
    p.add_argument("--log-every", type=int, default=10)
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    p.add_argument("--label", default="", help="copied into the output line")
    args = p.parse_args(argv)

    import torch

    from capsgan_dist.config import load_config
    from capsgan_dist.train import train

    if args.threads:
        torch.set_num_threads(args.threads)
    marks: list[tuple[int, float, float]] = []

    def on_log(step: int, _metrics: dict) -> None:
        marks.append((step, time.perf_counter(), time.process_time()))

    with tempfile.TemporaryDirectory() as tmp:
        cfg = load_config(args.config, [
            "data.name=synthetic", "data.synthetic_size=4096", f"train.steps={args.steps}",
            f"train.log_every={args.log_every}", f"train.run_dir={Path(tmp) / 'run'}", "train.progress=false",
            "tracking.backend=none", f"train.sample_every={10 * args.steps}",
            f"train.checkpoint_every={10 * args.steps}", f"tracking.grid_every={10 * args.steps}", *args.overrides])
        train(cfg, on_log=on_log)
    wall = [(b[1] - a[1]) / (b[0] - a[0]) for a, b in zip(marks, marks[1:])]
    cpu = [(b[2] - a[2]) / (b[0] - a[0]) for a, b in zip(marks, marks[1:])]
    images = cfg.train.batch_real + cfg.train.batch_fake  # per update (D: real + fake, G: latents)
    print(json.dumps({"label": args.label, "config": args.config, "overrides": args.overrides,
                      "threads": torch.get_num_threads(), "windows": len(wall),
                      "wall_ms_per_step": statistics.median(wall) * 1e3,
                      "cpu_ms_per_step": statistics.median(cpu) * 1e3,
                      "img_s": images / statistics.median(wall), "img_per_cpu_s": images / statistics.median(cpu)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
