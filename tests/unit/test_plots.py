"""curves.png: every panel labels both axes and draws the metrics it names."""

from __future__ import annotations

import json
from pathlib import Path

from PIL import Image

from capsgan_dist.plots import CURVE_PANELS, curves_figure, plot_curves

ROWS = [{"step": s, "loss_d": 0.7 - s / 100, "acc_d": 0.5 + s / 100, "loss_g": 0.8, "d_real": 0.6, "d_fake": 0.4,
         "acc_lab": 0.3 + s / 100, "eval/test_acc": 0.2 + s / 100}  # the last two: semi-supervised runs
        for s in (10, 20, 30)]


def test_every_curves_panel_has_a_y_label_and_its_lines():
    import matplotlib.pyplot as plt

    fig = curves_figure(ROWS)
    try:
        assert len(fig.axes) == len(CURVE_PANELS)
        for ax, (title, keys, ylabel) in zip(fig.axes, CURVE_PANELS):
            assert ax.get_title() == title and ax.get_xlabel() == "step"
            assert ax.get_ylabel() == ylabel and ylabel.strip()
            assert [line.get_label() for line in ax.get_lines()] == keys
    finally:
        plt.close(fig)


def test_plot_curves_writes_a_png(tmp_path: Path):
    metrics = tmp_path / "metrics.jsonl"
    metrics.write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    plot_curves(metrics, tmp_path / "out" / "curves.png")
    with Image.open(tmp_path / "out" / "curves.png") as im:
        assert im.format == "PNG" and im.size == (1500, 400)


def test_sample_files_share_the_checkpoints_step_format_and_read_older_runs(tmp_path):
    from capsgan_dist.plots import by_step, sample_file, step_name

    assert sample_file(tmp_path, 20).name == f"{step_name(20)}.png" == "step_0000020.png"
    assert sample_file(tmp_path, 20, "ranks").name == "ranks_0000020.png"
    (tmp_path / "samples").mkdir()
    (tmp_path / "samples" / "step_000500.png").write_bytes(b"")  # written before 7 digits
    assert sample_file(tmp_path, 500).name == "step_000500.png"
    mixed = [tmp_path / "step_0001000.png", tmp_path / "step_000500.png", tmp_path / "step_0000020.png"]
    assert [p.name for p in by_step(mixed)] == ["step_0000020.png", "step_000500.png", "step_0001000.png"]


def _figure(color: str, transparent: bool = False):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(2, 1))
    ax.plot([0, 1], [0, 1], color=color)
    if transparent:
        fig.patch.set_alpha(0.0)
    return fig


def test_save_figure_keeps_matplotlibs_pixels_without_the_alpha_channel(tmp_path: Path):
    """Grey figures become greyscale PNGs, colour ones RGB, transparent ones keep alpha; the pixels match
    what matplotlib itself writes."""
    import matplotlib.pyplot as plt
    import numpy as np

    from capsgan_dist.plots import save_figure

    for color, transparent, mode in [("black", False, "L"), ("tab:red", False, "RGB"), ("black", True, "RGBA")]:
        fig = _figure(color, transparent)
        try:
            fig.savefig(tmp_path / "ref.png", dpi=50)
            save_figure(fig, tmp_path / "sub" / "out.png", dpi=50)
        finally:
            plt.close(fig)
        with Image.open(tmp_path / "ref.png") as ref, Image.open(tmp_path / "sub" / "out.png") as out:
            assert out.mode == mode, (color, transparent)
            assert np.array_equal(np.asarray(ref.convert("RGBA")), np.asarray(out.convert("RGBA")))
