"""Checkpoints: Accelerate state of G and D in separate folders, written atomically with a manifest.

Layout: `<run>/checkpoints/step_0000100/{G/, D/, manifest.json}`. Each is written under a
`.tmp-` name and renamed once complete; the manifest holds the step, the model-config hash and a
SHA-256 of every file, so a torn or edited checkpoint is detected and skipped on resume.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import warnings
from pathlib import Path

from capsgan_dist.dist import Dist
from capsgan_dist.errors import CheckpointError

MANIFEST = "manifest.json"


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file() and p.name != MANIFEST)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def save_checkpoint(dist: Dist, root: Path, step: int, model_hash: str, keep: int) -> Path:
    """Save G, D, both optimizers and RNG states at `step`; every rank must call this."""
    final = root / f"step_{step:07d}"
    tmp = root / f".tmp-step_{step:07d}"
    if dist.is_main:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    dist.barrier()
    try:
        dist.acc_g.save_state(str(tmp / "G"))
        dist.acc_d.save_state(str(tmp / "D"))
    except OSError as e:
        raise CheckpointError(f"cannot write checkpoint {tmp}: {e.strerror or e}; free disk space or "
                              "point train.out_dir at a writable disk") from None
    dist.barrier()
    if dist.is_main:
        files = {str(p.relative_to(tmp)): _sha256(p) for p in _files(tmp)}
        manifest = {"step": step, "model_hash": model_hash, "files": files}
        with open(tmp / MANIFEST, "w") as f:
            json.dump(manifest, f, indent=1)
            f.flush()
            os.fsync(f.fileno())
        _fsync_dir(tmp)
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)  # atomic: a reader sees the whole checkpoint or none of it
        _fsync_dir(root)
        for old in list_checkpoints(root)[:-keep]:
            shutil.rmtree(old, ignore_errors=True)
    dist.barrier()
    return final


def list_checkpoints(root: Path) -> list[Path]:
    """Completed checkpoint folders under `root`, oldest first (temporary ones excluded)."""
    if not root.is_dir():
        return []
    return sorted(p for p in root.iterdir() if p.is_dir() and p.name.startswith("step_"))


def verify(path: Path) -> dict:
    """The manifest of `path` if every file matches its checksum; raises CheckpointError otherwise."""
    mpath = path / MANIFEST
    try:
        manifest = json.loads(mpath.read_text())
        files = manifest["files"]
        int(manifest["step"])
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise CheckpointError(f"checkpoint {path} has no readable manifest ({e})") from None
    for rel, digest in files.items():
        p = path / rel
        if not p.is_file():
            raise CheckpointError(f"checkpoint {path} is missing {rel}")
        if _sha256(p) != digest:
            raise CheckpointError(f"checkpoint {path}: {rel} fails its checksum (truncated or corrupt)")
    return manifest


def latest_valid(root: Path) -> tuple[Path, dict] | None:
    """Newest checkpoint that passes verification; broken ones are skipped with a warning."""
    for path in reversed(list_checkpoints(root)):
        try:
            return path, verify(path)
        except CheckpointError as e:
            warnings.warn(f"skipping {e}; trying the previous checkpoint", stacklevel=2)
    return None


def load_checkpoint(dist: Dist, path: Path, manifest: dict, model_hash: str) -> int:
    """Restore G, D, optimizers and RNG states from a verified checkpoint; returns its step."""
    if manifest["model_hash"] != model_hash:
        raise CheckpointError(
            f"checkpoint {path} was written for a different model config (hash {manifest['model_hash']}, "
            f"this config {model_hash}); resume with the run's own config.yaml or start a new run")
    try:
        dist.acc_g.load_state(str(path / "G"))
        dist.acc_d.load_state(str(path / "D"))
    except Exception as e:  # shape mismatches and unreadable files surface as many types
        raise CheckpointError(f"cannot load checkpoint {path}: {type(e).__name__}: {e}") from None
    return int(manifest["step"])
