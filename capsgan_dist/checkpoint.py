"""Checkpoints: Accelerate state of G and D in separate folders, written atomically with a manifest.

Layout: `<run>/checkpoints/step_0000100/{G/, D/, manifest.json}`. Each is written under a
`.tmp-` name, fsynced and renamed once complete; the manifest holds the step, the model-config
hash and a SHA-256 of every file, so a torn or edited checkpoint is detected and skipped on resume.
Anything named `.tmp-*` is an unfinished write (or deletion) and is removed when a run starts.
Loading goes through Accelerate, which unpickles with `torch.load(weights_only=True)`.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import pickle
import shutil
from pathlib import Path

from capsgan_dist.dist import Dist
from capsgan_dist.errors import CheckpointError, warn
from capsgan_dist.plots import step_name

MANIFEST = "manifest.json"
TMP_PREFIX = ".tmp-"


def _sha256(path: Path, sync: bool = False) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
        if sync:  # on disk before the rename publishes the checkpoint (power loss, not just SIGKILL)
            os.fsync(f.fileno())
    return h.hexdigest()


def _files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file() and p.name != MANIFEST)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return f"{type(e).__name__}: {text.splitlines()[0] if text else ''}"


def _free_bytes(path: Path) -> tuple[int, int] | None:
    """(free, total) bytes of the disk holding `path` (or its nearest existing parent)."""
    for p in (path, *path.parents):
        if p.exists():
            usage = shutil.disk_usage(p)
            return usage.free, usage.total
    return None


def _agree(dist: Dist, err: BaseException | None, root: Path, step: int, tmp: Path) -> None:
    """Collective: if any rank failed a phase of the save, every rank raises (none waits forever)."""
    if not dist.any(err is not None):
        return
    space = _free_bytes(root)  # measured before the partial write is removed: ~0 when the disk filled up
    if dist.is_main:
        shutil.rmtree(tmp, ignore_errors=True)
    # torch's zip writer reports a full disk only as "file write failed": judge by the free space too.
    full = (isinstance(err, OSError) and err.errno in (errno.ENOSPC, errno.EDQUOT)) or (
        space is not None and space[0] < max(2**20, space[1] // 1000))
    why = _first_line(err)[:200] if err is not None else "another rank failed to write its part"
    free = f"{space[0] / 2**20:.1f} MiB free; " if space else ""
    good = list_checkpoints(root)
    raise CheckpointError(
        f"cannot write the checkpoint of step {step} to {root}: {'No space left on device' if full else 'failed'} "
        f"({free}{why}); free disk space or set train.out_dir to a writable disk with room, then resume from "
        f"the last good checkpoint ({good[-1].name if good else 'none'})")


def save_checkpoint(dist: Dist, root: Path, step: int, model_hash: str, keep: int,
                    keep_steps: tuple[int, ...] = (), extra: dict | None = None) -> Path:
    """Save G, D, both optimizers and RNG states at `step`; every rank must call this.

    `extra` goes into the manifest (e.g. the CPU time spent so far); `keep_steps` are never pruned.
    """
    final = root / step_name(step)
    tmp = root / f"{TMP_PREFIX}{step_name(step)}"
    err: BaseException | None = None
    if dist.is_main:
        try:
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)
        except OSError as e:
            err = e
    _agree(dist, err, root, step, tmp)  # also the barrier: tmp exists before anyone writes into it
    try:
        dist.acc_g.save_state(str(tmp / "G"))
        dist.acc_d.save_state(str(tmp / "D"))
    except Exception as e:  # a full disk raises OSError, SafetensorError or torch's RuntimeError
        err = e
    _agree(dist, err, root, step, tmp)
    if dist.is_main:
        try:
            _publish(tmp, final, {"step": step, "model_hash": model_hash, **(extra or {})})
        except OSError as e:
            err = e
    _agree(dist, err, root, step, tmp)
    if dist.is_main:
        prune(root, keep, final, keep_steps)
    dist.barrier()
    return final


def prune(root: Path, keep: int, current: Path, keep_steps: tuple[int, ...] = ()) -> None:
    """Keep `current`, the newest keep-1 checkpoints before it and those of `keep_steps`; never touch newer ones.

    Newer folders only exist when they failed verification and the run went back to an older one;
    they are replaced as training reaches their steps, so pruning by name alone could keep a broken
    newer checkpoint and delete the good one just written.
    """
    older = [p for p in list_checkpoints(root) if p.name < current.name]
    for old in older[: max(len(older) - (keep - 1), 0)]:
        if step_of(old) not in keep_steps:  # e.g. the comparison points a later evaluation reloads
            _remove(old)


def step_of(path: Path) -> int:
    """The step of a `step_XXXXXXX` checkpoint folder."""
    return int(path.name.split("_", 1)[1])


def tidy(root: Path, keep: int, current: Path | None, keep_steps: tuple[int, ...] = ()) -> list[str]:
    """At start-up: remove `.tmp-*` leftovers of a killed run and prune around `current`; returns the leftovers."""
    if not root.is_dir():
        return []
    leftovers = sorted(p for p in root.iterdir() if p.name.startswith(TMP_PREFIX))
    for p in leftovers:
        shutil.rmtree(p, ignore_errors=True) if p.is_dir() else p.unlink(missing_ok=True)
    if current is not None:  # a kill between publishing and pruning left one too many
        prune(root, keep, current, keep_steps)
    return [p.name for p in leftovers]


def _publish(tmp: Path, final: Path, manifest: dict) -> None:
    """Checksum and fsync every file, write the manifest, then rename `tmp` to `final` atomically."""
    manifest["files"] = {str(p.relative_to(tmp)): _sha256(p, sync=True) for p in _files(tmp)}
    with open(tmp / MANIFEST, "w") as f:
        json.dump(manifest, f, indent=1)
        f.flush()
        os.fsync(f.fileno())
    for d in [p for p in tmp.rglob("*") if p.is_dir()] + [tmp]:
        _fsync_dir(d)
    if final.exists():  # rewriting a step (its earlier copy failed verification): retire it first
        _remove(final)
    os.replace(tmp, final)  # atomic: a reader sees the whole checkpoint or none of it
    _fsync_dir(final.parent)


def _remove(path: Path) -> None:
    """Delete a checkpoint: rename it to a `.tmp-` name first, so a kill never leaves half of one."""
    trash = path.with_name(f"{TMP_PREFIX}del-{path.name}")
    shutil.rmtree(trash, ignore_errors=True)  # a leftover of an earlier, interrupted deletion
    try:
        os.replace(path, trash)
    except OSError:
        return
    shutil.rmtree(trash, ignore_errors=True)


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
        manifest["model_hash"]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise CheckpointError(f"checkpoint {path} has no readable manifest ({_first_line(e)})") from None
    for rel, digest in files.items():
        p = path / rel
        if not p.is_file():
            raise CheckpointError(f"checkpoint {path} is missing {rel}")
        if _sha256(p) != digest:
            raise CheckpointError(f"checkpoint {path}: {rel} fails its checksum (truncated or corrupt)")
    return manifest


def latest_valid(root: Path) -> tuple[Path, dict] | None:
    """Newest checkpoint that passes verification (broken newer ones are skipped with a warning).

    None when there is no checkpoint at all; CheckpointError when there are some but none is intact,
    so a requeued job never silently starts over on top of a damaged run.
    """
    found = list_checkpoints(root)
    problems: list[str] = []
    for path in reversed(found):
        try:
            manifest = verify(path)
        except CheckpointError as e:
            problems.append(str(e))
            continue
        for p in problems:
            warn(f"skipping {p}; using {path.name}")
        return path, manifest
    if found:
        raise CheckpointError(
            f"none of the {len(found)} checkpoints in {root} is intact ({'; '.join(problems)}); restore them "
            "from a backup, or move the step_* folders away to start the run over")
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
    except pickle.UnpicklingError as e:  # torch.load(weights_only=True) met a non-tensor object
        raise CheckpointError(
            f"refusing to load checkpoint {path}: it holds pickled objects other than tensors and plain "
            f"data ({_first_line(e)[:160]}); only load checkpoints written by capsgan from a trusted source"
        ) from None
    except Exception as e:  # shape mismatches and unreadable files surface as many types
        raise CheckpointError(f"cannot load checkpoint {path}: {_first_line(e)}; it does not match this "
                              "config or was damaged after it was written") from None
    return int(manifest["step"])


def write_text_atomic(path: Path, text: str) -> None:
    """Replace `path` with `text` so that a kill leaves the old or the new content, never half."""
    tmp = path.with_name(f"{TMP_PREFIX}{path.name}")
    with open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
