"""W&B mode choice and key detection, without training: offline unless online is asked for AND a key exists."""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from capsgan_dist.config import load_config
from capsgan_dist.tracking import (
    DEBUG_RANK_METRICS_ENV,
    WandbTracker,
    _has_wandb_key,
    gpu_memory,
    rank_metrics_recorder,
    resolve_mode,
)


def _no_key() -> bool:
    return False


def _key() -> bool:
    return True


@pytest.mark.parametrize(("config_mode", "env_mode", "has_key", "expected", "warned_about"), [
    ("offline", None, _no_key, "offline", None),
    ("offline", None, _key, "offline", None),  # a key alone never turns uploading on
    ("online", None, _key, "online", None),
    ("online", None, _no_key, "offline", "tracking.mode=online"),
    ("offline", "online", _no_key, "offline", "WANDB_MODE=online"),  # the env var beats the config
    ("online", "offline", _key, "offline", None),
    ("online", "disabled", _no_key, "disabled", None),
    ("offline", "dryrun", _no_key, "offline", None),
])
def test_resolve_mode(config_mode, env_mode, has_key, expected, warned_about) -> None:
    mode, why = resolve_mode(config_mode, env_mode, has_key)
    assert mode == expected
    assert (why is None) == (warned_about is None)
    if why:
        assert warned_about in why and "offline" in why


@pytest.fixture
def no_wandb_key(monkeypatch, tmp_path: Path) -> Path:
    """A process environment with no W&B credentials anywhere (fresh HOME, no env vars)."""
    for var in ("WANDB_API_KEY", "WANDB_IDENTITY_TOKEN_FILE", "WANDB_MODE", "NETRC", "WANDB_BASE_URL"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("WANDB_CONFIG_DIR", str(tmp_path / "wandb-config"))
    monkeypatch.setenv("WANDB_CACHE_DIR", str(tmp_path / "wandb-cache"))
    monkeypatch.setenv("WANDB_CONSOLE", "off")
    monkeypatch.setenv("WANDB_SILENT", "true")
    (tmp_path / "home").mkdir()
    return tmp_path


def test_key_detection_reads_env_and_netrc(no_wandb_key: Path, monkeypatch) -> None:
    assert not _has_wandb_key()
    netrc = no_wandb_key / "netrc"
    netrc.write_text("machine api.wandb.ai\n  login user\n  password " + "a" * 40 + "\n")
    monkeypatch.setenv("NETRC", str(netrc))
    assert _has_wandb_key()
    monkeypatch.delenv("NETRC")
    monkeypatch.setenv("WANDB_API_KEY", "b" * 40)
    assert _has_wandb_key()


@pytest.mark.parametrize("asked_by", ["config", "env"])
def test_online_without_key_logs_offline_after_one_warning(no_wandb_key: Path, monkeypatch, asked_by: str) -> None:
    """Real wandb.init: without the fallback it raises 'No API key configured'."""
    if asked_by == "env":
        monkeypatch.setenv("WANDB_MODE", "online")  # wandb itself reads it too: our mode= must win
    cfg = load_config(None, ["tracking.mode=online" if asked_by == "config" else "tracking.mode=offline"])
    run_dir = no_wandb_key / "run"
    run_dir.mkdir()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        tracker = WandbTracker(cfg, run_dir, {"world_size": 1})
        tracker.log(1, {"loss_d": 0.5})
        tracker.finish()
    ours = [w for w in caught if "no W&B API key" in str(w.message)]
    assert len(ours) == 1
    assert [d.name.split("-")[0] for d in (run_dir / "wandb").glob("*run-*") if not d.is_symlink()] == ["offline"]
    assert (run_dir / "wandb_id.txt").read_text().strip()


def test_rank_metrics_recorder_is_off_unless_asked(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.delenv(DEBUG_RANK_METRICS_ENV, raising=False)
    assert rank_metrics_recorder(tmp_path, 0) is None
    monkeypatch.setenv(DEBUG_RANK_METRICS_ENV, "1")
    record = rank_metrics_recorder(tmp_path, 3)
    record(5, {"loss_d": 0.25})
    assert json.loads((tmp_path / "debug" / "rank_metrics_3.jsonl").read_text()) == {"step": 5, "loss_d": 0.25}


def test_gpu_memory_is_empty_without_a_gpu() -> None:
    assert gpu_memory(SimpleNamespace(device=torch.device("cpu"))) == {}


def test_gpu_memory_logs_peaks_not_current_values(monkeypatch) -> None:
    """Both columns are peaks (the reserved one used to be the current reservation), max over ranks."""
    gib = 2**30
    monkeypatch.setattr(torch.cuda, "max_memory_allocated", lambda device=None: 3 * gib)
    monkeypatch.setattr(torch.cuda, "max_memory_reserved", lambda device=None: 5 * gib)
    monkeypatch.setattr(torch.cuda, "memory_allocated", lambda device=None: 1 * gib)
    monkeypatch.setattr(torch.cuda, "memory_reserved", lambda device=None: 2 * gib)
    reduced = []
    fake = SimpleNamespace(device=torch.device("cuda", 0), max=lambda values: reduced.append(values) or values)
    assert gpu_memory(fake) == {"gpu_mem_alloc_gb": 3.0, "gpu_mem_reserved_gb": 5.0}
    assert len(reduced) == 1  # one reduction over ranks (max), on host values
