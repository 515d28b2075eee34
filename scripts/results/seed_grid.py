"""Every seed's fixed-noise samples at one step, one row per model (default: capsgan, dcgan), for docs/results.md.

    python scripts/results/seed_grid.py runs/compare_mnist 2000 docs/img/compare_mnist_seeds_2000.png
    python scripts/results/seed_grid.py runs/semisup/mnist_100 10000 docs/img/semisup_mnist_100_samples.png \
        capsule_ssl conv_ssl
"""

import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from capsgan_dist.plots import sample_file, save_figure  # noqa: E402

out, step, png = Path(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
models = sys.argv[4:] or ["capsgan", "dcgan"]
seeds = sorted(set.intersection(*({p.name for p in out.glob(f"{m}/seed*") if sample_file(p, step).is_file()}
                                  for m in models)))
if not seeds:
    sys.exit(f"no seed of {', '.join(models)} under {out} has samples/{sample_file(out, step).name}")
fig, axes = plt.subplots(len(models), len(seeds), figsize=(3.4 * len(seeds), 3.5 * len(models)), squeeze=False)
for row, model in enumerate(models):
    for col, seed in enumerate(seeds):
        ax = axes[row][col]
        ax.imshow(plt.imread(sample_file(out / model / seed, step)), cmap="gray")
        ax.set_title(f"{model}, {seed}, step {step}")
        ax.axis("off")
fig.tight_layout()
save_figure(fig, Path(png), dpi=90)
