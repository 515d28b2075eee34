"""The comparison points of `capsgan compare`: sample grids of every seed and GAM battles.

Both read the checkpoints a compare keeps at its `points` (train.keep_steps). Battles already
fought are kept in `<out_dir>/gam.json` and read back, so rerunning a compare recomputes nothing.
"""

from __future__ import annotations

import json
from itertools import product
from pathlib import Path

import torch

from capsgan_dist import checkpoint, plots
from capsgan_dist.config import load_config
from capsgan_dist.metrics.evaluate import real_images
from capsgan_dist.metrics.gam import battle
from capsgan_dist.sample import load_models

GAM_FILE = "gam.json"


def points_grid(cc, run_dir, out: Path) -> Path | None:
    """One PNG: a row per seed, a column per (model, point step), from the fixed-noise grids."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cols = [(name, st) for name, steps in cc.points.items() for st in steps]
    pngs = {(s, n, st): plots.sample_file(run_dir(cc, n, s), st) for s in cc.seeds for n, st in cols}
    if not cols or not all(p.is_file() for p in pngs.values()):
        return None
    fig, axes = plt.subplots(len(cc.seeds), len(cols), figsize=(3 * len(cols), 3.2 * len(cc.seeds)), squeeze=False)
    for i, s in enumerate(cc.seeds):
        for j, (n, st) in enumerate(cols):
            ax = axes[i][j]
            ax.imshow(plt.imread(pngs[(s, n, st)]), cmap="gray")
            ax.set_title(f"{n} step {st}, seed {s}", fontsize=9)
            ax.axis("off")
    fig.suptitle(f"{cc.name}: fixed noise at the comparison points")
    fig.tight_layout()
    plots.save_figure(fig, out, dpi=100)
    plt.close(fig)
    return out


def _test_images(cc, n: int) -> torch.Tensor:
    """Up to `n` real images of the `gam_split` split, a seeded random subset, in [-1, 1]."""
    images = real_images(load_config(cc.base, [*cc.overrides, f"data.split={cc.gam_split}"]))
    idx = torch.randperm(len(images), generator=torch.Generator().manual_seed(0))[:n]
    return images[idx]


def _key(a: str, sa: int, step_a: int, b: str, sb: int, step_b: int) -> str:
    return f"{a}@{step_a}/seed{sa} vs {b}@{step_b}/seed{sb}"


def gam_battles(cc, run_dir, log=print) -> list[dict]:
    """GAM of every (seed, seed) pair of the two `gam_models` at every pair of their points."""
    if not cc.gam_models:
        return []
    out_dir = Path(cc.out_dir)
    path = out_dir / GAM_FILE
    done = {r["key"]: r for r in json.loads(path.read_text())} if path.is_file() else {}
    a, b = cc.gam_models
    todo = list(product(cc.seeds, cc.points[a], cc.seeds, cc.points[b]))
    test, results = None, []
    for i, (sa, step_a, sb, step_b) in enumerate(todo, 1):
        key = _key(a, sa, step_a, b, sb, step_b)
        if key in done:
            results.append(done[key])
            continue
        if test is None:
            test = _test_images(cc, cc.gam_n)
        torch.manual_seed(0)
        G1, D1, _ = load_models(run_dir(cc, a, sa), step_a)
        G2, D2, _ = load_models(run_dir(cc, b, sb), step_b)
        r = battle(G1, D1, G2, D2, test, cc.gam_n, seed=1000 * sa + sb, tolerance=cc.gam_tolerance)
        r.update(key=key, m1=a, m2=b, seed_m1=sa, seed_m2=sb, step_m1=step_a, step_m2=step_b)
        results.append(r)
        done[key] = r
        checkpoint.write_text_atomic(path, json.dumps(list(done.values()), indent=1) + "\n")
        log(f"GAM [{i}/{len(todo)}] {key}: winner {r['winner']} (r_test {r['r_test']}, r_samples {r['r_samples']})")
    return results


def gam_table(results: list[dict]) -> str:
    """Markdown: per point pair, the wins of each side over all seed pairs, then every battle."""
    if not results:
        return ""
    pairs: dict[tuple, dict[str, int]] = {}
    for r in results:
        tally = pairs.setdefault((r["m1"], r["step_m1"], r["m2"], r["step_m2"]), {})
        tally[r["winner"]] = tally.get(r["winner"], 0) + 1
    lines = ["| M1 | M2 | M1 wins | M2 wins | ties | invalid (r_test off 1) |", "|---|---|---:|---:|---:|---:|"]
    for (m1, s1, m2, s2), t in pairs.items():
        lines.append(f"| {m1} @ {s1} | {m2} @ {s2} | {t.get('m1', 0)} | {t.get('m2', 0)} | {t.get('tie', 0)} "
                     f"| {t.get('invalid', 0)} |")
    lines += ["", "| battle | err D1 test | err D2 test | r_test | err D1 on G2 | err D2 on G1 | r_samples | winner |",
              "|---|---:|---:|---:|---:|---:|---:|---|"]
    fmt = lambda x: "inf" if x is None else f"{x:.3f}"  # noqa: E731
    for r in results:
        e = r["errors"]
        lines.append(f"| {r['key']} | {e['test_d1']:.3f} | {e['test_d2']:.3f} | {fmt(r['r_test'])} | "
                     f"{e['d1_on_g2']:.3f} | {e['d2_on_g1']:.3f} | {fmt(r['r_samples'])} | {r['winner']} |")
    return "\n".join(lines) + "\n"
