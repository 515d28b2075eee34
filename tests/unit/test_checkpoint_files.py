"""Checkpoint folder bookkeeping without training: publish, verify, skip, prune, tidy."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from conftest import REPO

from capsgan_dist import checkpoint
from capsgan_dist.errors import CheckpointError


def _fake(root, step: int) -> None:
    """A published checkpoint holding two small files (the real ones hold Accelerate state)."""
    tmp = root / f".tmp-step_{step:07d}"
    (tmp / "G").mkdir(parents=True)
    (tmp / "G" / "model.safetensors").write_bytes(bytes([step]) * 100)
    (tmp / "D" / "sub").mkdir(parents=True)
    (tmp / "D" / "sub" / "optimizer.bin").write_bytes(b"x" * step)
    checkpoint._publish(tmp, root / f"step_{step:07d}", {"step": step, "model_hash": "h"})


def _names(root) -> list[str]:
    return sorted(p.name for p in root.iterdir())


def test_published_checkpoint_verifies_and_a_truncated_file_does_not(tmp_path):
    _fake(tmp_path, 3)
    ckpt = tmp_path / "step_0000003"
    assert checkpoint.verify(ckpt)["step"] == 3 and _names(tmp_path) == ["step_0000003"]
    f = ckpt / "D" / "sub" / "optimizer.bin"
    f.write_bytes(f.read_bytes()[:-1])
    with pytest.raises(CheckpointError, match="D/sub/optimizer.bin fails its checksum"):
        checkpoint.verify(ckpt)


def test_latest_valid_skips_a_broken_newest_with_a_warning(tmp_path):
    for s in (2, 4):
        _fake(tmp_path, s)
    (tmp_path / "step_0000004" / "manifest.json").write_text("{")  # torn manifest
    with pytest.warns(UserWarning, match="step_0000004 has no readable manifest.*using step_0000002"):
        path, manifest = checkpoint.latest_valid(tmp_path)
    assert path.name == "step_0000002" and manifest["step"] == 2


def test_a_skipped_checkpoint_warning_is_one_capsgan_line(tmp_path):
    """Python's default warning format adds the source line that called warn(); ours is one line."""
    for s in (2, 4):
        _fake(tmp_path, s)
    (tmp_path / "step_0000004" / "manifest.json").write_text("{")
    code = ("import pathlib; from capsgan_dist import checkpoint; "
            f"checkpoint.latest_valid(pathlib.Path({str(tmp_path)!r}))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                          env={**os.environ, "PYTHONPATH": str(REPO)})
    lines = proc.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("capsgan: warning: skipping "), proc.stderr
    assert lines[0].endswith("using step_0000002")


def test_latest_valid_is_none_without_checkpoints_and_an_error_when_all_are_broken(tmp_path):
    assert checkpoint.latest_valid(tmp_path / "missing") is None
    (tmp_path / ".tmp-step_0000002").mkdir()  # an unfinished write is not a checkpoint
    assert checkpoint.latest_valid(tmp_path) is None
    _fake(tmp_path, 4)
    (tmp_path / "step_0000004" / "G" / "model.safetensors").unlink()
    with pytest.raises(CheckpointError, match="none of the 1 checkpoints .* is intact .*missing G/model.safetensors"):
        checkpoint.latest_valid(tmp_path)


def test_prune_keeps_the_new_checkpoint_and_never_deletes_newer_ones(tmp_path):
    for s in (2, 4, 6, 8):
        _fake(tmp_path, s)
    # Resumed from 4 because 6 and 8 were broken, then wrote a new 6: keep=1 must keep the new 6.
    checkpoint.prune(tmp_path, 1, tmp_path / "step_0000006")
    assert _names(tmp_path) == ["step_0000006", "step_0000008"]


def test_rewriting_a_step_replaces_the_old_copy(tmp_path):
    _fake(tmp_path, 5)
    (tmp_path / "step_0000005" / "G" / "model.safetensors").write_bytes(b"broken")
    _fake(tmp_path, 5)
    assert checkpoint.verify(tmp_path / "step_0000005")["step"] == 5
    assert _names(tmp_path) == ["step_0000005"]


def test_tidy_removes_leftovers_of_a_kill_and_the_extra_checkpoint(tmp_path):
    for s in (2, 4, 6):
        _fake(tmp_path, s)
    (tmp_path / ".tmp-step_0000008" / "G").mkdir(parents=True)  # killed while writing
    (tmp_path / ".tmp-del-step_0000000").mkdir()  # killed while deleting
    removed = checkpoint.tidy(tmp_path, 2, tmp_path / "step_0000006")
    assert removed == [".tmp-del-step_0000000", ".tmp-step_0000008"]
    assert _names(tmp_path) == ["step_0000004", "step_0000006"]


def test_write_text_atomic_replaces_the_file_and_leaves_no_temporary(tmp_path):
    f = tmp_path / "metrics.jsonl"
    f.write_text("old\n")
    checkpoint.write_text_atomic(f, "new\n")
    assert f.read_text() == "new\n" and _names(tmp_path) == ["metrics.jsonl"]
