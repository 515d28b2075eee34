"""`capsgan report`: one self-contained HTML page comparing runs, and optionally a W&B Report.

The HTML holds everything inline (PNG images as base64 `data:` URIs, CSS in a <style> tag, no
scripts), so it opens from disk with no server and no network. The W&B Report is built by
`build_wandb_report` (no network) and only `save_wandb_report` talks to the W&B server.
"""

from __future__ import annotations

import base64
import html
import io
import json
import os
import subprocess
import sys
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import yaml

from capsgan_dist.errors import UserError
from capsgan_dist.plots import read_metrics

# (title, metric keys) of the curve panels; keys a run never logged are left out.
CURVE_PANELS = [
    ("D loss", ["loss_d"]), ("G loss", ["loss_g"]), ("D accuracy", ["acc_d"]),
    ("D(x) and D(G(z))", ["d_real", "d_fake"]), ("Gradient norms", ["gnorm_d", "gnorm_g"]),
    ("Throughput (img/s, all ranks)", ["img_s"]),
]
# Metrics shown first in the final table; any other scalar a run logged (e.g. quality metrics) follows.
TABLE_FIRST = ["loss_d", "loss_g", "acc_d", "d_real", "d_fake", "gnorm_d", "gnorm_g", "img_s"]
MAX_GRIDS = 6  # sample grids per run and kind, evenly spaced over the run


@dataclass
class Run:
    """What the report needs from one run folder."""

    path: Path
    config: dict
    environment: dict
    metrics: list[dict]
    fixed_grids: list[tuple[int, Path]] = field(default_factory=list)
    rank_grids: list[tuple[int, Path]] = field(default_factory=list)
    wandb_id: str | None = None
    evals: list[dict] = field(default_factory=list)
    """`capsgan eval`'s scores (eval.json), one dict per checkpoint in step order: step, fid, kid, ..."""

    @property
    def name(self) -> str:
        return self.path.name

    def final(self) -> dict[str, float]:
        """The last value of every scalar the run logged (quality metrics may come at other steps)."""
        out: dict[str, float] = {}
        for row in self.metrics:
            out.update({k: v for k, v in row.items() if isinstance(v, (int, float))})
        if self.evals:  # the newest checkpoint's `capsgan eval` scores, beside any the loop logged
            out.update({f"eval/{k}": v for k, v in self.evals[-1].items() if k != "step" and isinstance(v, float)})
        return out


def _grids(folder: Path, prefix: str) -> list[tuple[int, Path]]:
    found = []
    for p in folder.glob(f"{prefix}_*.png"):
        try:
            found.append((int(p.stem.rsplit("_", 1)[1]), p))
        except ValueError:
            continue
    return sorted(found)


def _evals(path: Path) -> list[dict]:
    """The per-checkpoint scores of a run's eval.json (empty without one, or with an unreadable one)."""
    try:
        rows = json.loads(path.read_text())["checkpoints"] if path.is_file() else []
    except (ValueError, KeyError, TypeError):
        return []
    scores = [{k: v for k, v in r.items() if k == "step" or isinstance(v, float)} for r in rows if "step" in r]
    return sorted(scores, key=lambda r: r["step"])


def evals_png(runs: list[Run]) -> bytes | None:
    """Each `capsgan eval` metric against the checkpoint step, every run overlaid; None unless a run has 2+ points."""
    if not any(len(r.evals) > 1 for r in runs):
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = [k for k in ("fid", "kid", "is", "precision", "recall") if any(k in e for r in runs for e in r.evals)]
    fig, axes = plt.subplots(1, len(keys), figsize=(4 * len(keys), 3.2), squeeze=False)
    for ax, k in zip(axes[0], keys):
        for i, r in enumerate(runs):
            pts = [(e["step"], e[k]) for e in r.evals if k in e]
            if pts:
                ax.plot(*zip(*pts), "o-", color=f"C{i % 10}", label=r.name)
        ax.set_title(k)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
        ax.legend(loc="best", fontsize=7)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=80)
    plt.close(fig)
    return buf.getvalue()


def load_run(path: Path) -> Run:
    """Read a run folder written by `capsgan train`."""
    path = Path(path)
    if not (path / "metrics.jsonl").is_file():
        raise UserError(f"{path} is not a run folder (no metrics.jsonl); pass folders written by capsgan train")
    config = yaml.safe_load((path / "config.yaml").read_text()) if (path / "config.yaml").is_file() else {}
    env_file = path / "environment.json"
    environment = json.loads(env_file.read_text()) if env_file.is_file() else {}
    id_file = path / "wandb_id.txt"
    return Run(evals=_evals(path / "eval.json"), path=path, config=config or {}, environment=environment,
               metrics=read_metrics(path / "metrics.jsonl"),
               fixed_grids=_grids(path / "samples", "step"), rank_grids=_grids(path / "samples", "ranks"),
               wandb_id=id_file.read_text().strip() if id_file.is_file() else None)


def _flatten(d: dict, prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def config_diff(runs: list[Run]) -> list[tuple[str, list[Any]]]:
    """(dotted key, value per run) for every config or environment key whose values differ."""
    flat = [_flatten({**r.config, "env": r.environment}) for r in runs]
    keys = sorted(set().union(*flat))
    missing = object()
    rows = []
    for k in keys:
        values = [f.get(k, missing) for f in flat]
        if any(v != values[0] for v in values[1:]):
            rows.append((k, [None if v is missing else v for v in values]))
    return rows


def _png_uri(data: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(data).decode("ascii")


def curves_png(runs: list[Run]) -> bytes:
    """One PNG with a panel per metric group, every run overlaid."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [(t, ks) for t, ks in CURVE_PANELS if any(k in row for r in runs for row in r.metrics for k in ks)]
    cols = 3
    nrows = max(1, -(-len(panels) // cols))
    fig, axes = plt.subplots(nrows, cols, figsize=(5 * cols, 3.4 * nrows), squeeze=False)
    styles = ["-", "--", ":", "-."]
    for ax, (title, keys) in zip(axes.flat, panels):
        for i, run in enumerate(runs):
            for j, k in enumerate(keys):
                pts = [(row["step"], row[k]) for row in run.metrics if k in row and "step" in row]
                if pts:
                    label = run.name if len(keys) == 1 else f"{run.name}: {k}"
                    ax.plot(*zip(*pts), styles[j % len(styles)], color=f"C{i % 10}", label=label)
        ax.set_title(title)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
        ax.legend(loc="best", fontsize=7)
    for ax in list(axes.flat)[len(panels):]:
        ax.axis("off")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=80)
    plt.close(fig)
    return buf.getvalue()


def _spaced(items: list, n: int) -> list:
    """Up to n items evenly spaced, always keeping the first and the last."""
    if len(items) <= n:
        return items
    idx = sorted({round(i * (len(items) - 1) / (n - 1)) for i in range(n)})
    return [items[i] for i in idx]


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return "—" if v is None else str(v)


def _esc(v: Any) -> str:
    return html.escape(_fmt(v))


_CSS = """
body { font-family: sans-serif; margin: 24px; color: #222; max-width: 1400px; }
h1 { font-size: 22px; } h2 { font-size: 18px; margin-top: 28px; border-bottom: 1px solid #ccc; }
table { border-collapse: collapse; font-size: 13px; } td, th { border: 1px solid #ccc; padding: 3px 8px; }
th { background: #f3f3f3; text-align: left; } td.num { text-align: right; font-family: monospace; }
.grids { display: flex; flex-wrap: wrap; gap: 10px; align-items: flex-start; }
figure { margin: 0; } figcaption { font-size: 12px; color: #555; text-align: center; }
img.grid { image-rendering: pixelated; border: 1px solid #ddd; }
img.curves { max-width: 100%; height: auto; }
.muted { color: #777; font-size: 13px; }
"""


def _grid_row(grids: list[tuple[int, Path]], width: int) -> str:
    figs = [f'<figure><img class="grid" width="{width}" alt="step {s}" src="{_png_uri(p.read_bytes())}">'
            f"<figcaption>step {s}</figcaption></figure>" for s, p in _spaced(grids, MAX_GRIDS)]
    return f'<div class="grids">{"".join(figs)}</div>' if figs else '<p class="muted">none saved</p>'


def render_html(runs: list[Run], title: str = "CapsuleGAN runs") -> str:
    """The whole report as one HTML string with every image inline."""
    parts = [f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
             f"<style>{_CSS}</style></head><body>",
             f"<h1>{html.escape(title)}</h1>",
             f'<p class="muted">{len(runs)} run(s), written {datetime.now():%Y-%m-%d %H:%M} by capsgan report</p>']

    # Final metrics.
    finals = [r.final() for r in runs]
    keys = [k for k in TABLE_FIRST if any(k in f for f in finals)]
    keys += sorted({k for f in finals for k in f} - set(keys) - {"step"})
    head = "".join(f"<th>{html.escape(k)}</th>" for k in ["run", "steps", "world size", *keys])
    rows = []
    for r, f in zip(runs, finals):
        cells = [f"<td>{html.escape(r.name)}</td>", f'<td class="num">{_esc(f.get("step"))}</td>',
                 f'<td class="num">{_esc(r.environment.get("world_size"))}</td>']
        cells += [f'<td class="num">{_esc(f.get(k))}</td>' for k in keys]
        rows.append(f"<tr>{''.join(cells)}</tr>")
    parts.append(f"<h2>Final metrics</h2><table><tr>{head}</tr>{''.join(rows)}</table>")

    # Curves.
    parts.append(f'<h2>Curves</h2><img class="curves" alt="training curves" src="{_png_uri(curves_png(runs))}">')

    # Sample quality of the checkpoints `capsgan eval` scored: a table per run, a curve when there are several.
    parts.append("<h2>Sample quality (capsgan eval)</h2>")
    if not any(r.evals for r in runs):
        parts.append('<p class="muted">no eval.json: run <code>capsgan eval --run RUN_DIR [--all]</code></p>')
    for r in runs:
        if r.evals:
            cols = ["step", *sorted({k for e in r.evals for k in e} - {"step"})]
            head = "".join(f"<th>{html.escape(c)}</th>" for c in cols)
            body = "".join("<tr>" + "".join(f'<td class="num">{_esc(e.get(c))}</td>' for c in cols) + "</tr>"
                           for e in r.evals)
            parts.append(f"<h3>{html.escape(r.name)}</h3><table><tr>{head}</tr>{body}</table>")
    quality = evals_png(runs)
    if quality:
        parts.append(f'<img class="curves" alt="sample quality by checkpoint" src="{_png_uri(quality)}">')

    # Sample grids over time.
    parts.append("<h2>Samples over time</h2>")
    for r in runs:
        parts.append(f"<h3>{html.escape(r.name)}: fixed noise</h3>{_grid_row(r.fixed_grids, 200)}")
        parts.append(f"<h3>{html.escape(r.name)}: one row per rank</h3>{_grid_row(r.rank_grids, 240)}")

    # Config diff.
    parts.append("<h2>Config differences</h2>")
    if len(runs) < 2:
        parts.append('<p class="muted">one run: nothing to compare</p>')
    else:
        diff = config_diff(runs)
        head = "".join(f"<th>{html.escape(r.name)}</th>" for r in runs)
        body = "".join(f"<tr><td>{html.escape(k)}</td>{''.join(f'<td>{_esc(v)}</td>' for v in vs)}</tr>"
                       for k, vs in diff)
        parts.append(f"<table><tr><th>key</th>{head}</tr>{body}</table>" if diff
                     else '<p class="muted">identical configs</p>')
    for r in runs:
        parts.append(f"<details><summary>{html.escape(r.name)}: full config</summary><pre>"
                     f"{html.escape(yaml.safe_dump(r.config, sort_keys=False))}</pre></details>")
    parts.append("</body></html>")
    return "\n".join(parts)


def default_out(run_dirs: list[Path]) -> Path:
    """Where a report goes without --out: one run's own folder, or the folder that holds all the runs."""
    dirs = [Path(d).resolve() for d in run_dirs]
    return (dirs[0] if len(dirs) == 1 else Path(os.path.commonpath(dirs))) / "report.html"


def write_html(run_dirs: list[Path], out: Path | None = None, title: str = "CapsuleGAN runs") -> Path:
    """Load the runs and write the HTML report to `out` (default: `default_out`)."""
    if not run_dirs:
        raise UserError("capsgan report needs at least one RUN_DIR")
    runs = [load_run(Path(d)) for d in run_dirs]
    out = Path(out) if out else default_out(run_dirs)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(render_html(runs, title), encoding="utf-8")
    return out


# ---- W&B Report (wandb-workspaces) ----

WANDB_LINE_PANELS = [("Losses", ["loss_d", "loss_g"]), ("D accuracy", ["acc_d"]),
                     ("D(x) and D(G(z))", ["d_real", "d_fake"]), ("Gradient norms", ["gnorm_d", "gnorm_g"]),
                     ("Throughput (img/s, all ranks)", ["img_s"]), ("Learning rates", ["lr_d", "lr_g"])]


def build_wandb_report(runs: list[Run], entity: str, project: str, title: str = "CapsuleGAN runs") -> Any:
    """The W&B Report for these runs (curves, sample media, config comparison); saves nothing."""
    import wandb_workspaces.reports.v2 as wr
    from wandb_workspaces import expr

    missing = [str(r.path) for r in runs if not r.wandb_id]
    if missing:
        raise UserError(f"no W&B run for {', '.join(missing)} (no wandb_id.txt): train with "
                        "tracking.backend=wandb to get one")
    ids = [r.wandb_id for r in runs]
    runset = wr.Runset(entity=entity, project=project, name="capsgan runs",
                       filters=expr.And(expr.Metric("ID").isin(ids)))
    panels = [wr.LinePlot(title=t, x="Step", y=list(ys)) for t, ys in WANDB_LINE_PANELS]
    panels += [wr.MediaBrowser(title="Fixed-noise samples", media_keys=["samples/fixed"], num_columns=1),
               wr.MediaBrowser(title="Samples, one row per rank", media_keys=["samples/ranks"], num_columns=1),
               wr.RunComparer(diff_only="split")]
    names = ", ".join(r.name for r in runs)
    return wr.Report(project=project, entity=entity, title=title,
                     description=f"{len(runs)} CapsuleGAN run(s): {names}",
                     blocks=[wr.P(f"Runs: {names}. Curves are reduced over all ranks (mean of losses, "
                                  "sum of img/s); the per-rank grid has one row per rank."),
                             wr.PanelGrid(runsets=[runset], panels=panels)])


def sync_offline_runs(runs: list[Run], entity: str, project: str) -> None:
    """Upload the runs' offline W&B data with `wandb sync` (it skips what it synced before). Needs network."""
    dirs = [str(d) for r in runs for d in sorted((r.path / "wandb").glob("offline-run-*"))]
    if dirs:
        subprocess.run([sys.executable, "-m", "wandb", "sync", "--entity", entity, "--project", project, *dirs],
                       check=True, timeout=1800)


def save_wandb_report(run_dirs: list[Path], title: str, entity: str | None, project: str | None) -> str:
    """Sync offline runs, then build and save the W&B Report; returns its URL. Needs network."""
    from capsgan_dist.tracking import _has_wandb_key

    if not _has_wandb_key():
        raise UserError("--wandb needs a W&B API key: set WANDB_API_KEY or run `wandb login` "
                        "(the HTML report was written without it)")
    runs = [load_run(Path(d)) for d in run_dirs]
    tracking = runs[0].config.get("tracking", {})
    project = project or tracking.get("project") or "capsgan-dist"
    entity = entity or tracking.get("entity") or os.environ.get("WANDB_ENTITY")
    if not entity:
        import wandb

        entity = wandb.Api().default_entity
    sync_offline_runs(runs, entity, project)
    report = build_wandb_report(runs, entity, project, title)
    report.save()
    return report.url
