"""`capsgan report` pieces on hand-made run folders: loading, config diff, HTML, the W&B Report object."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from PIL import Image

from capsgan_dist.errors import UserError
from capsgan_dist.report import build_wandb_report, config_diff, load_run, render_html


def _fake_run(root: Path, name: str, lr: float, steps: int, wandb_id: str | None) -> Path:
    run = root / name
    (run / "samples").mkdir(parents=True)
    (run / "config.yaml").write_text(yaml.safe_dump({"seed": 0, "optim": {"lr_d": lr}}))
    (run / "environment.json").write_text(json.dumps({"world_size": 2}))
    rows = [{"step": s, "loss_d": 1.0 / s, "loss_g": 0.5, "img_s": 100.0} for s in range(10, steps + 1, 10)]
    rows.append({"step": steps, "fid": 12.5})  # a quality metric logged on its own row
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows) + '{"step": 9')  # torn line
    for s in range(100, steps + 1, 100):
        Image.new("RGB", (32, 32), (s % 255, 0, 0)).save(run / "samples" / f"step_{s:06d}.png")
        Image.new("RGB", (32, 64), (0, s % 255, 0)).save(run / "samples" / f"ranks_{s:06d}.png")
    if wandb_id:
        (run / "wandb_id.txt").write_text(wandb_id + "\n")
    return run


def test_load_run_reads_metrics_grids_and_final_values(tmp_path: Path) -> None:
    run = load_run(_fake_run(tmp_path, "a", 2e-4, 1000, "abc123"))
    assert len(run.metrics) == 101  # the torn last line is skipped
    assert [s for s, _ in run.fixed_grids] == list(range(100, 1001, 100))
    assert [s for s, _ in run.rank_grids] == list(range(100, 1001, 100))
    assert run.final() == {"step": 1000, "loss_d": 1e-3, "loss_g": 0.5, "img_s": 100.0, "fid": 12.5}
    assert run.wandb_id == "abc123"


def test_config_diff_lists_only_differing_keys(tmp_path: Path) -> None:
    runs = [load_run(_fake_run(tmp_path, n, lr, 100, None)) for n, lr in (("a", 2e-4), ("b", 1e-4))]
    assert config_diff(runs) == [("optim.lr_d", [2e-4, 1e-4])]


def test_html_shows_at_most_six_grids_per_kind_and_all_final_metrics(tmp_path: Path) -> None:
    run = load_run(_fake_run(tmp_path, "a", 2e-4, 1000, None))
    text = render_html([run], title="T <&>")
    assert "<title>T &lt;&amp;&gt;</title>" in text
    assert text.count("<img ") == 1 + 6 + 6  # curves + 6 of the 10 grids of each kind, evenly spaced
    assert "step 100</figcaption>" in text and "step 1000</figcaption>" in text  # first and last kept
    assert "<th>fid</th>" in text and "12.5" in text


def test_missing_run_folder_is_a_user_error(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="not a run folder"):
        load_run(tmp_path / "nothing")


def test_wandb_report_object_has_curves_media_and_config_comparison(tmp_path: Path) -> None:
    """The report `--wandb` would save, checked without network (only `.save()` needs it)."""
    import wandb_workspaces.reports.v2 as wr

    runs = [load_run(_fake_run(tmp_path, n, 2e-4, 100, i)) for n, i in (("a", "id1"), ("b", "id2"))]
    report = build_wandb_report(runs, entity="team", project="proj", title="Sweep 3")
    assert (report.entity, report.project, report.title) == ("team", "proj", "Sweep 3")
    assert [type(b) for b in report.blocks] == [wr.P, wr.PanelGrid]
    grid = report.blocks[1]
    (runset,) = grid.runsets
    assert (runset.entity, runset.project) == ("team", "proj")
    assert "id1" in runset.filters and "id2" in runset.filters
    lines = {tuple(p.y) for p in grid.panels if isinstance(p, wr.LinePlot)}
    assert {("loss_d", "loss_g"), ("acc_d",), ("d_real", "d_fake"), ("gnorm_d", "gnorm_g"), ("img_s",)} <= lines
    media = {k for p in grid.panels if isinstance(p, wr.MediaBrowser) for k in p.media_keys}
    assert media == {"samples/fixed", "samples/ranks"}
    assert any(isinstance(p, wr.RunComparer) for p in grid.panels)


def test_wandb_report_needs_wandb_runs(tmp_path: Path) -> None:
    run = load_run(_fake_run(tmp_path, "local_only", 2e-4, 100, None))
    with pytest.raises(UserError, match="tracking.backend=wandb"):
        build_wandb_report([run], entity="team", project="proj")


def _eval_json(run: Path, steps: list[int]) -> None:
    rows = [{"step": s, "checkpoint": f"step_{s:07d}", "fid": 100.0 / s, "kid": 0.01, "is": 2.0 + s / 1000,
             "precision": 0.5, "recall": 0.25} for s in steps]
    (run / "eval.json").write_text(json.dumps({"run": str(run), "checkpoints": rows}))


def test_eval_json_scores_reach_the_final_table_and_a_table_per_checkpoint(tmp_path: Path) -> None:
    path = _fake_run(tmp_path, "a", 2e-4, 1000, None)
    one = render_html([load_run(path)])
    assert "no eval.json" in one
    _eval_json(path, [500, 1000])
    run = load_run(path)
    assert [e["step"] for e in run.evals] == [500, 1000]
    assert run.final()["eval/fid"] == 0.1 and run.final()["eval/is"] == 3.0
    text = render_html([run])
    assert "<h2>Sample quality (capsgan eval)</h2>" in text and "<th>precision</th>" in text
    assert '<td class="num">500</td>' in text and "0.2</td>" in text  # the step-500 row's FID
    assert text.count("<img ") == 1 + 6 + 6 + 1  # the quality curve, since there are two checkpoints
    _eval_json(path, [1000])
    assert render_html([load_run(path)]).count("<img ") == 1 + 6 + 6  # one checkpoint: its table alone


def test_report_goes_into_the_run_folder_or_the_folder_holding_the_runs(tmp_path: Path, monkeypatch) -> None:
    from capsgan_dist.report import write_html

    a, b = _fake_run(tmp_path / "runs", "a", 2e-4, 100, None), _fake_run(tmp_path / "runs", "b", 1e-4, 100, None)
    monkeypatch.chdir(tmp_path)
    assert write_html([a]) == a.resolve() / "report.html" and (a / "report.html").is_file()
    assert write_html([a, b]) == (tmp_path / "runs").resolve() / "report.html"
    assert write_html([a, b], tmp_path / "x.html") == tmp_path / "x.html"
    assert not (tmp_path / "report.html").exists()  # never the current folder by default
