"""Tracking end to end: one offline W&B run per 2-process job, read back with wandb's own CLI.

Also: a run with no W&B key and no mode set trains (offline), a W&B failure mid-run does not stop
training, and `capsgan report` writes a self-contained HTML page that headless Chromium renders.
"""

from __future__ import annotations

import functools
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import DEBUG_CONFIG, cli_env, run_capsgan
from PIL import Image, ImageStat

pytestmark = pytest.mark.slow

IMAGE_SIZE = 28  # configs/debug.yaml
PER_RANK = 8  # images per rank in the per-rank grid (train._log_rank_grid)
PAD = 2  # torchvision make_grid padding
MEAN_KEYS = ("loss_d", "loss_g", "acc_d", "d_real", "d_fake", "gnorm_d", "gnorm_g")


def _wandb_env(home: Path, **extra: str) -> dict[str, str]:
    """cli_env with W&B's config and cache kept out of the real home folder."""
    return cli_env(WANDB_CONFIG_DIR=str(home / "wandb-config"), WANDB_CACHE_DIR=str(home / "wandb-cache"),
                   WANDB_DATA_DIR=str(home / "wandb-data"), **extra)


def _offline_runs(run_dir: Path) -> list[Path]:
    root = run_dir / "wandb"
    return sorted(d for d in root.iterdir() if d.is_dir() and not d.is_symlink() and "run-" in d.name)


def _inspect(offline_run: Path, *flags: str) -> str:
    """`wandb leet inspect --json` of an offline run: wandb's own reader."""
    return subprocess.run([sys.executable, "-m", "wandb", "leet", "inspect", "--json", *flags, str(offline_run)],
                          capture_output=True, text=True, timeout=60, check=True).stdout


@functools.cache
def _history(offline_run: Path) -> dict[int, dict]:
    """History rows by step (the record stream holds one JSON object per line)."""
    records = [json.loads(line) for line in _inspect(offline_run).splitlines() if line.strip()]
    return {r["history"]["item"]["_step"]: r["history"]["item"] for r in records if r.get("type") == "history"}


def _jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.fixture(scope="module")
def two_rank_run(tmp_path_factory) -> Path:
    """A 2-process gloo run, W&B offline, each rank recording its pre-reduction values."""
    tmp = tmp_path_factory.mktemp("two_rank")
    run = tmp / "run"
    run_capsgan("train", str(DEBUG_CONFIG), "tracking.backend=wandb", f"train.run_dir={run}",
                "train.progress=false", "tracking.tags=[ci,tracking]", "tracking.group=g1",
                nproc=2, timeout=240, env=_wandb_env(tmp, CAPSGAN_DEBUG_RANK_METRICS="1"))
    return run


@pytest.fixture(scope="module")
def no_key_run(tmp_path_factory) -> tuple[Path, subprocess.CompletedProcess]:
    """One process, tracking.backend=wandb, no WANDB_MODE, no key anywhere (fresh HOME)."""
    tmp = tmp_path_factory.mktemp("no_key")
    home = tmp / "home"
    home.mkdir()
    env = _wandb_env(tmp, HOME=str(home), MPLCONFIGDIR=str(tmp / "mpl"))
    for var in ("WANDB_MODE", "WANDB_API_KEY", "WANDB_IDENTITY_TOKEN_FILE", "NETRC"):
        env.pop(var, None)
    run = tmp / "run"
    proc = run_capsgan("train", str(DEBUG_CONFIG), "tracking.backend=wandb", f"train.run_dir={run}",
                       "train.progress=false", "train.steps=10", "optim.lr_d=1e-4", timeout=180, env=env)
    return run, proc


def test_two_rank_run_logs_one_offline_run_with_rank_reduced_scalars(two_rank_run: Path) -> None:
    run = two_rank_run
    offline = _offline_runs(run)
    assert len(offline) == 1 and offline[0].name.startswith("offline-run-"), offline
    summary = json.loads(_inspect(offline[0], "--summary"))
    config = summary["config"]
    assert config["world_size"] == 2  # a real 2-process group
    assert config["git_commit"] and config["model"]["n_caps"] == 4 and config["tracking"]["group"] == "g1"
    assert {"hostname", "gpu", "cpu_count", "torch"} <= set(config)

    history = _history(offline[0])
    local = {r["step"]: r for r in _jsonl(run / "metrics.jsonl")}
    assert sorted(history) == sorted(local) == [5, 10, 15, 20]  # every logged step, once
    ranks = [{r["step"]: r for r in _jsonl(run / "debug" / f"rank_metrics_{i}.jsonl")} for i in range(2)]
    # The ranks saw different data, so a mean is not trivially equal to either rank's value.
    assert any(ranks[0][s]["loss_d"] != ranks[1][s]["loss_d"] for s in history)
    for step, row in history.items():
        for k in MEAN_KEYS:
            expected = (ranks[0][step][k] + ranks[1][step][k]) / 2
            assert row[k] == pytest.approx(expected, rel=1e-12, abs=1e-15), (step, k)
            assert local[step][k] == row[k]
        assert row["img_s"] == pytest.approx(ranks[0][step]["img_s"] + ranks[1][step]["img_s"], rel=1e-12)
        assert row["lr_d"] == row["lr_g"] == 2e-4


def test_rank_grid_has_one_grid_row_per_rank(two_rank_run: Path) -> None:
    offline = _offline_runs(two_rank_run)[0]
    history = _history(offline)
    cell = IMAGE_SIZE + PAD
    logged = {s: r for s, r in history.items() if "samples/ranks.path" in r}
    assert sorted(logged) == [10, 20]
    assert sorted(s for s, r in history.items() if "samples/fixed.path" in r) == [10, 20]
    for row in logged.values():
        png = offline / "files" / row["samples/ranks.path"]
        with Image.open(png) as im:
            grid = im.convert("L")
        assert grid.size == (PER_RANK * cell + PAD, 2 * cell + PAD) == (row["samples/ranks.width"],
                                                                      row["samples/ranks.height"])
        rows = [grid.crop((PAD, PAD + r * cell, grid.width, (r + 1) * cell)) for r in range(2)]
        assert rows[0].tobytes() != rows[1].tobytes(), "both rows are the same rank's samples"
    with Image.open(two_rank_run / "samples" / "ranks_0000020.png") as im:
        assert im.height == 2 * cell + PAD  # the local copy the HTML report shows


def test_run_without_key_or_mode_trains_offline(no_key_run) -> None:
    run, proc = no_key_run
    assert "finished" in proc.stdout
    assert [r["step"] for r in _jsonl(run / "metrics.jsonl")] == [5, 10]
    offline = _offline_runs(run)
    assert len(offline) == 1 and offline[0].name.startswith("offline-run-")
    assert sorted(_history(offline[0])) == [5, 10]
    assert "API key" not in proc.stderr and "W&B could not start" not in proc.stderr


_FAIL_WANDB = """
import os
import wandb

_orig, _calls = wandb.Run.log, [0]


def _log(self, *args, **kwargs):
    _calls[0] += 1
    if _calls[0] >= int(os.environ["CAPSGAN_TEST_FAIL_WANDB_LOG_AT"]):
        raise RuntimeError("injected W&B failure")
    return _orig(self, *args, **kwargs)


wandb.Run.log = _log
"""


def test_wandb_failure_mid_run_keeps_training_and_local_metrics(tmp_path: Path) -> None:
    inject = tmp_path / "inject"
    inject.mkdir()
    (inject / "sitecustomize.py").write_text(_FAIL_WANDB)  # patches wandb.Run.log in the child
    env = _wandb_env(tmp_path, CAPSGAN_TEST_FAIL_WANDB_LOG_AT="2")
    env["PYTHONPATH"] = f"{env['PYTHONPATH']}{os.pathsep}{inject}"
    run = tmp_path / "run"
    proc = run_capsgan("train", str(DEBUG_CONFIG), "tracking.backend=wandb", f"train.run_dir={run}",
                       "train.progress=false", "train.steps=10", "train.log_every=2", timeout=180, env=env)
    assert proc.stderr.count("injected W&B failure") == 1  # warned once, then W&B is left alone
    assert [r["step"] for r in _jsonl(run / "metrics.jsonl")] == [2, 4, 6, 8, 10]
    assert (run / "checkpoints" / "step_0000010" / "manifest.json").is_file()
    assert sorted(_history(_offline_runs(run)[0])) == [2]  # the call before the failure, then finished


# ---- capsgan report ----

@pytest.fixture(scope="module")
def report_html(two_rank_run: Path, no_key_run, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("report") / "report.html"
    proc = run_capsgan("report", str(two_rank_run), str(no_key_run[0]), "--out", str(out), timeout=120)
    assert f"wrote {out}" in proc.stdout
    return out


def test_report_html_is_self_contained(report_html: Path, two_rank_run: Path, no_key_run) -> None:
    text = report_html.read_text()
    srcs = re.findall(r'<img [^>]*src="([^"]+)"', text)
    assert srcs and all(s.startswith("data:image/png;base64,") for s in srcs)
    # Nothing else may point anywhere: no links, scripts, stylesheets, CSS urls or URL schemes.
    rest = re.sub(r'src="data:image/png;base64,[A-Za-z0-9+/=]+"', "", text)
    assert not re.search(r"\b(src|href)=|[a-z]+://|//[a-z0-9.-]+\.[a-z]|<script|<link|<iframe|@import|url\(",
                         rest, re.IGNORECASE)
    # 1 curves image + fixed-noise and per-rank grids: steps 10 and 20 (20-step run), step 10 (10-step run).
    assert len(srcs) == 1 + 2 * 2 + 2 * 1
    for name in (two_rank_run.name, no_key_run[0].name):
        assert f"<td>{name}</td>" in text
    # Config diff: world size and the learning rate differ; the seed does not.
    assert re.search(r"<td>env\.world_size</td><td>2</td><td>1</td>", text)
    assert re.search(r"<td>optim\.lr_d</td><td>0\.0002</td><td>0\.0001</td>", text)
    assert "<td>seed</td>" not in text


def test_wandb_report_panels_use_logged_keys(two_rank_run: Path) -> None:
    from capsgan_dist.report import build_wandb_report, load_run

    run = load_run(two_rank_run)
    report = build_wandb_report([run], entity="someone", project="capsgan-dist")
    grid = report.blocks[-1]
    assert run.wandb_id in str(grid.runsets[0].filters)
    history = _history(_offline_runs(two_rank_run)[0])
    logged = set().union(*history.values())
    plotted = {y for p in grid.panels if hasattr(p, "y") for y in p.y}
    media = {k for p in grid.panels if hasattr(p, "media_keys") for k in p.media_keys}
    assert plotted and plotted <= logged, plotted - logged
    assert media and {f"{k}.path" for k in media} <= logged


def _chromium() -> str:
    exe = shutil.which("chromium") or shutil.which("chromium-browser")
    if not exe:
        pytest.skip("chromium is not installed (scripts/install.sh installs Debian's chromium)")
    return exe


def _chromium_cmd(exe: str, profile: Path) -> list[str]:
    return [exe, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
            "--disable-background-networking", "--disable-component-update", "--disable-sync",
            f"--user-data-dir={profile}", "--window-size=1200,1600"]


def test_report_renders_in_headless_chromium(report_html: Path, tmp_path: Path) -> None:
    exe = _chromium()
    shot = tmp_path / "shot.png"
    subprocess.run([*_chromium_cmd(exe, tmp_path / "profile"), f"--screenshot={shot}", report_html.as_uri()],
                   capture_output=True, timeout=90, check=True)
    with Image.open(shot) as im:
        rgb = im.convert("RGB")
    assert rgb.size == (1200, 1600)
    assert max(ImageStat.Stat(rgb.convert("L")).var) > 100, "blank screenshot"
    # The curves are drawn in matplotlib's first two colours (nothing else on the page has them): seeing
    # them means the curves PNG was decoded and drawn. Tolerance: the image is scaled to the page width.
    colours = rgb.getcolors(maxcolors=1 << 22)

    def pixels_near(target: tuple[int, int, int], tol: int = 20) -> int:
        return sum(n for n, c in colours if all(abs(a - b) <= tol for a, b in zip(c, target)))

    assert pixels_near((31, 119, 180)) > 50  # C0 blue (first run); 0 if the image did not render
    assert pixels_near((255, 127, 14)) > 50  # C1 orange (second run)

    # Every <img> decoded: a copy of the page with a probe script reports naturalWidth per image.
    probe = tmp_path / "probe.html"
    probe.write_text(report_html.read_text().replace("</body>", (
        "<script>document.body.setAttribute('data-decoded', Array.from(document.images)"
        ".map(i => i.complete && i.naturalWidth > 0 ? 1 : 0).join(''));</script></body>")))
    dom = subprocess.run([*_chromium_cmd(exe, tmp_path / "profile2"), "--dump-dom", probe.as_uri()],
                         capture_output=True, text=True, timeout=90, check=True).stdout
    decoded = re.search(r'data-decoded="([01]*)"', dom)
    n_images = report_html.read_text().count("<img ")
    assert n_images == 7 and decoded and decoded.group(1) == "1" * n_images, decoded


def test_report_of_a_missing_run_is_a_user_error(tmp_path: Path) -> None:
    proc = run_capsgan("report", str(tmp_path / "nope"), "--out", str(tmp_path / "r.html"), check=False, timeout=60)
    assert proc.returncode == 2 and "is not a run folder" in proc.stderr


@pytest.mark.parametrize("console", [False, True])
def test_wandb_keeps_to_the_closing_line_unless_its_console_is_asked_for(tmp_path: Path, console: bool) -> None:
    run = tmp_path / "run"
    env = _wandb_env(tmp_path, WANDB_MODE="offline")
    env.pop("WANDB_SILENT")  # the harness's own hush would hide what a user sees
    proc = run_capsgan("train", str(DEBUG_CONFIG), "train.steps=10", "train.progress=false", "tracking.backend=wandb",
                       f"tracking.wandb_console={str(console).lower()}", f"train.run_dir={run}", env=env)
    out = (proc.stdout + proc.stderr).splitlines()
    (offline,) = _offline_runs(run)
    wandb_lines = [ln for ln in out if ln.startswith("wandb:")]
    if console:  # W&B's banner and history are back
        assert len(wandb_lines) > 10 and any("wandb sync" in ln for ln in wandb_lines)
        return
    assert wandb_lines == [] and len(out) <= 3, out
    assert out[-1] == (f"run finished: {run} (step 10); W&B offline run: upload with "
                       f"`wandb sync {run.resolve() / 'wandb' / offline.name}`")
