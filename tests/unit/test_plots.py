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
