"""Pictures of a run: sample grids, loss/accuracy curves (paper Figs. 8-9) and the training GIF (Fig. 11)."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from torchvision.utils import make_grid, save_image


def step_name(step: int) -> str:
    """A step's checkpoint folder name, step_0000020; its sample grid is samples/step_0000020.png."""
    return f"step_{step:07d}"


def sample_file(run_dir: Path, step: int, kind: str = "step") -> Path:
    """samples/<kind>_0000020.png of a run; a run written before names had 7 digits may hold <kind>_000020.png."""
    path = run_dir / "samples" / f"{kind}_{step:07d}.png"
    legacy = run_dir / "samples" / f"{kind}_{step:06d}.png"
    return legacy if not path.is_file() and legacy.is_file() else path


def by_step(paths) -> list[Path]:
    """Sample files in step order, whatever the width of their step numbers."""
    return sorted(paths, key=lambda p: int(p.stem.rsplit("_", 1)[1]))


def save_grid(images: torch.Tensor, path: Path, nrow: int = 8) -> None:
    """Save images in [-1, 1] as one PNG grid."""
    path.parent.mkdir(parents=True, exist_ok=True)
    save_image(images.float().cpu(), path, nrow=nrow, normalize=True, value_range=(-1, 1))


def grid_tensor(images: torch.Tensor, nrow: int = 8) -> torch.Tensor:
    """A (3, H, W) uint8 grid of images in [-1, 1] (for trackers)."""
    g = make_grid(images.float().cpu(), nrow=nrow, normalize=True, value_range=(-1, 1))
    return (g * 255).round().to(torch.uint8)


def read_metrics(path: Path) -> list[dict]:
    """Rows of a metrics.jsonl file; a torn last line (crash mid-write) is ignored."""
    rows = []
    if path.is_file():
        for line in path.read_text().splitlines():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                continue
    return rows


# (title, metrics.jsonl keys, y-axis label) of each curves.png panel (the paper's Figures 8-9).
CURVE_PANELS = [
    # acc_lab / eval/test_acc: semi-supervised runs' accuracy on labeled batches and on the test split.
    ("Discriminator", ["loss_d", "acc_d", "acc_lab", "eval/test_acc"], "loss (loss.gan) / accuracy"),
    ("Generator", ["loss_g"], "loss (loss.generator)"),
    ("D outputs", ["d_real", "d_fake"], "mean D probability of 'real'"),
]


def curves_figure(rows: list[dict]):
    """The curves as a matplotlib Figure: one panel per CURVE_PANELS entry, over training steps."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(CURVE_PANELS), figsize=(15, 4))
    for ax, (title, keys, ylabel) in zip(axes, CURVE_PANELS):
        for k in keys:
            pts = [(r["step"], r[k]) for r in rows if k in r]
            if pts:
                ax.plot(*zip(*pts), label=k)
        ax.set_title(title)
        ax.set_xlabel("step")
        ax.set_ylabel(ylabel)
        if ax.lines:  # a supervised-only baseline logs no G loss
            ax.legend(loc="best")
        ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig


def plot_curves(metrics_path: Path, out: Path) -> None:
    """D loss and accuracy, G loss and D(x)/D(G(z)) over steps, one PNG."""
    import matplotlib.pyplot as plt

    fig = curves_figure(read_metrics(metrics_path))
    save_figure(fig, out, dpi=100)
    plt.close(fig)


def save_figure(fig, out: Path, dpi: int = 100) -> None:
    """Save a matplotlib figure as a PNG without its alpha channel, greyscale when every pixel is grey.

    Matplotlib writes RGBA; the figures here are opaque, so dropping alpha (and two of three equal
    channels for the grey grids of MNIST runs) keeps the same pixels in a quarter to a half of the bytes.
    """
    import io

    import numpy as np
    from PIL import Image

    buf = io.BytesIO()
    fig.savefig(buf, dpi=dpi, format="png")
    rgba = np.asarray(Image.open(buf).convert("RGBA"))
    if (rgba[..., 3] != 255).any():  # a transparent figure keeps its alpha
        img = Image.fromarray(rgba)
    elif (rgba[..., 0] == rgba[..., 1]).all() and (rgba[..., 1] == rgba[..., 2]).all():
        img = Image.fromarray(np.ascontiguousarray(rgba[..., 0]))
    else:
        img = Image.fromarray(np.ascontiguousarray(rgba[..., :3]))
    out.parent.mkdir(parents=True, exist_ok=True)
    img.save(out, optimize=True)


def make_gif(frames: list[Path], out: Path, ms_per_frame: int = 300) -> None:
    """Animated GIF of the fixed-noise sample grids in step order."""
    from PIL import Image

    if not frames:
        return
    images = [Image.open(p).convert("P") for p in frames]
    images[0].save(out, save_all=True, append_images=images[1:], duration=ms_per_frame, loop=0)
