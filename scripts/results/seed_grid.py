"""Every seed's fixed-noise samples at one step, both models, for docs/results.md.

    python scripts/results/seed_grid.py runs/compare_mnist 2000 docs/img/compare_mnist_seeds_2000.png
"""

import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

out, step, png = Path(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
name = f"step_{step:06d}.png"
seeds = sorted({p.name for p in out.glob("capsgan/seed*") if (p / "samples" / name).is_file()})
fig, axes = plt.subplots(2, len(seeds), figsize=(3.4 * len(seeds), 7), squeeze=False)
for row, model in enumerate(("capsgan", "dcgan")):
    for col, seed in enumerate(seeds):
        ax = axes[row][col]
        ax.imshow(plt.imread(out / model / seed / "samples" / name), cmap="gray")
        ax.set_title(f"{model}, {seed}, step {step}")
        ax.axis("off")
fig.tight_layout()
fig.savefig(png, dpi=90)
