"""A prepared cache: a file-based source decoded once into one uint8 array file that every rank memory-maps.

`<data.cache_dir>/<source>-<size>px-<C>ch-<key>/` holds `images.u8` (raw uint8, (N, C, S, S) in
source order), `labels.npy` (int64, when the source has labels) and `manifest.json`: what went in
(the source's files with sizes and modification times), what came out (count, shape), and the
conversion rule's settings. `key` hashes the settings, so another size, colour or background gets
a cache of its own.

- Prepared once: `capsgan data prepare CONFIG`, or the first `capsgan train` that finds no valid
  cache. Processes that start together (the ranks of a node, two runs) take an exclusive lock on
  `<cache>.lock`: one prepares, the others wait and then reuse it.
- Never half-used: everything is written into a temporary folder that is renamed into place only
  after its manifest is written and synced.
- Kept honest: each use lists the source again and compares files, sizes and modification times
  with the manifest; a change (an image added, removed or replaced) prepares it again, saying so.
- Shared: training reads the array through `np.memmap`, so the ranks of a node share one copy in the
  page cache and a dataset larger than memory still trains (batches read their rows on demand).

Sources with files behind them use it: `folder` and `idx` (data.cache=false reads them into memory
instead); synthetic and torchvision data stay in memory.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
import sys
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

import capsgan_dist.data.folder as folder_source
from capsgan_dist.config import DataConfig
from capsgan_dist.data.sources import check_shape, idx_file, load_idx_labeled, read_idx_images
from capsgan_dist.errors import DataError

CACHE_VERSION = 1  # bump when the conversion rule or the file layout changes: older caches are prepared again
CACHED_SOURCES = ("folder", "idx")
IMAGES, LABELS, MANIFEST = "images.u8", "labels.npy", "manifest.json"


def uses_cache(cfg: DataConfig) -> bool:
    """Whether this data config trains from a prepared cache."""
    return cfg.cache and cfg.name in CACHED_SOURCES


def _settings(cfg: DataConfig) -> dict:
    """What decides the cached pixels, besides the files themselves."""
    return {"version": CACHE_VERSION, "name": cfg.name, "root": str(Path(cfg.root).resolve()),
            "image_size": cfg.image_size, "channels": cfg.channels, "background": cfg.background,
            "upscale": cfg.upscale, "labels": cfg.labels, "split": cfg.split}


def cache_path(cfg: DataConfig) -> Path:
    """The cache folder of this data config (it may not exist yet)."""
    key = hashlib.sha256(json.dumps(_settings(cfg), sort_keys=True).encode()).hexdigest()[:12]
    stem = Path(cfg.root).resolve().name or "root"
    return Path(cfg.cache_dir) / f"{cfg.name}-{stem}-{cfg.image_size}px-{cfg.channels}ch-{key}"


def _source_files(cfg: DataConfig) -> tuple[Path, list[Path]]:
    if cfg.name == "folder":
        return folder_source.check_root(cfg)  # a missing or empty folder: one DataError, before anything is written
    images = idx_file(Path(cfg.root), cfg.split)
    return images.parent, [images]


def fingerprint(cfg: DataConfig) -> list[list]:
    """[relative path, size, mtime_ns] of every source file, in order: the manifest's record of what went in."""
    root, files = _source_files(cfg)
    out = []
    for f in files:
        st = f.stat()
        out.append([f.relative_to(root).as_posix(), st.st_size, st.st_mtime_ns])
    return out


def _what_changed(old: list[list], new: list[list]) -> str:
    """'3 added, 1 removed, 2 changed' between two fingerprints ('' when they are equal)."""
    a, b = {p: (s, m) for p, s, m in old}, {p: (s, m) for p, s, m in new}
    parts = [f"{n} {what}" for n, what in ((len(b.keys() - a.keys()), "added"), (len(a.keys() - b.keys()), "removed"),
                                            (sum(a[p] != b[p] for p in a.keys() & b.keys()), "changed")) if n]
    return ", ".join(parts)


@dataclass(frozen=True)
class Cache:
    """An opened cache: memory-mapped images, labels (or None) and its manifest."""

    path: Path
    images: torch.Tensor  # uint8 (N, C, S, S) backed by np.memmap
    labels: torch.Tensor | None
    manifest: dict


def _status(path: Path, cfg: DataConfig, files: list[list]) -> tuple[dict | None, str]:
    """(manifest, '') for a valid cache of these files; (None, why) otherwise ('' when there is none)."""
    try:
        manifest = json.loads((path / MANIFEST).read_text())
    except (OSError, ValueError):
        return None, ""
    if manifest.get("settings") != _settings(cfg):
        return None, "it was prepared by another version of the conversion rule"
    changed = _what_changed(manifest.get("files", []), files)
    if changed:
        return None, f"{cfg.root} changed since its cache was prepared ({changed})"
    expected = int(np.prod(manifest["shape"]))
    if not (path / IMAGES).is_file() or (path / IMAGES).stat().st_size != expected:
        return None, "its image file is incomplete"
    return manifest, ""


def open_cache(path: Path) -> Cache:
    """Memory-map a prepared cache folder."""
    manifest = json.loads((path / MANIFEST).read_text())
    array = np.memmap(path / IMAGES, dtype=np.uint8, mode="r", shape=tuple(manifest["shape"]))
    with warnings.catch_warnings():  # read-only by design: torch warns that it cannot write to it
        warnings.simplefilter("ignore", UserWarning)
        images = torch.from_numpy(array)
    labels = torch.from_numpy(np.load(path / LABELS)) if (path / LABELS).is_file() else None
    return Cache(path, images, labels, manifest)


def prepare(cfg: DataConfig, log=None, force: bool = False) -> Cache:
    """The valid cache of `cfg`, prepared first if there is none (or the source changed, or `force`)."""
    log = log or (lambda msg: print(msg, file=sys.stderr, flush=True))
    path = cache_path(cfg)
    files = fingerprint(cfg)  # the source exists and has images, or one DataError before anything is written
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.parent / f"{path.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # one prepares; the others wait here, then find it valid
        manifest, why = _status(path, cfg, files)
        if manifest is not None and not force:
            return open_cache(path)
        if why:
            log(f"capsgan: {why}; preparing it again")
        _write(cfg, path, files, log)
    return open_cache(path)


def _write(cfg: DataConfig, path: Path, files: list[list], log) -> None:
    tmp = path.parent / f".tmp-{path.name}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    t0 = time.perf_counter()
    try:
        if cfg.name == "folder":
            n, labels, extra = _write_folder(cfg, tmp, log)
        else:
            images, labels, _ = load_idx_labeled(Path(cfg.root), cfg.split) if _has_labels(cfg) else \
                (read_idx_images(idx_file(Path(cfg.root), cfg.split)), None, None)
            check_shape(images, cfg)
            images.numpy().tofile(tmp / IMAGES)
            n, extra = len(images), {}
        if labels is not None:
            np.save(tmp / LABELS, labels.numpy())
        seconds = time.perf_counter() - t0
        manifest = {"settings": _settings(cfg), "files": files, "count": n,
                    "shape": [n, cfg.channels, cfg.image_size, cfg.image_size], "labels": labels is not None,
                    "seconds": round(seconds, 2), **extra}
        with open(tmp / MANIFEST, "w") as f:
            json.dump(manifest, f, indent=1)
            f.flush()
            os.fsync(f.fileno())
        if path.exists():
            shutil.rmtree(path)
        os.rename(tmp, path)  # atomic: a reader sees the old cache, none, or this one whole
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    log(f"capsgan: prepared {n} images of {cfg.channels}x{cfg.image_size}x{cfg.image_size} in {seconds:.1f} s "
        f"({n / max(seconds, 1e-9):.0f} images/s) -> {path}")


def _has_labels(cfg: DataConfig) -> bool:
    try:
        root = Path(cfg.root)
        images = idx_file(root, cfg.split)
        return images.with_name(images.name.replace("-images-idx3-ubyte", "-labels-idx1-ubyte")).is_file()
    except DataError:
        return False


def _write_folder(cfg: DataConfig, tmp: Path, log) -> tuple[int, torch.Tensor | None, dict]:
    """Decode a folder straight into images.u8 (never the whole set in memory); the count, labels, extras."""
    scan = folder_source.scan_folder(cfg)
    per_image = cfg.channels * cfg.image_size * cfg.image_size
    kept, skipped = [], []
    progress = _Progress(len(scan.files), log)
    with open(tmp / IMAGES, "wb") as out:
        for f, arr in folder_source.decode_folder(scan, cfg):
            if arr is None:
                skipped.append(f)
            else:
                out.write(arr.tobytes())
                kept.append(f)
            progress.update()
    folder_source.warn_skipped(scan, skipped)
    if not kept:
        raise DataError(f"none of the {len(scan.files)} image files under {scan.root} decodes; check the files")
    assert (tmp / IMAGES).stat().st_size == len(kept) * per_image
    labels, extra = None, {"skipped": [f.relative_to(scan.root).as_posix() for f in skipped]}
    if cfg.labels == "subfolders":
        labels, classes = folder_source.class_labels(scan, kept)
        extra["classes"] = classes
    return len(kept), labels, extra


class _Progress:
    """'preparing: 1200/3781 images (4,100 images/s)' every 2 s on stderr, for long prepares."""

    def __init__(self, total: int, log, every_s: float = 2.0):
        self.total, self.log, self.every_s, self.n = total, log, every_s, 0
        self.t0 = self.last = time.perf_counter()

    def update(self) -> None:
        self.n += 1
        now = time.perf_counter()
        if now - self.last >= self.every_s and self.n < self.total:
            self.log(f"capsgan: preparing: {self.n}/{self.total} images ({self.n / (now - self.t0):.0f} images/s)")
            self.last = now


def cached_images(cfg: DataConfig) -> torch.Tensor:
    """The source's images from its prepared cache (preparing it first if needed), memory-mapped."""
    return prepare(cfg).images


__all__ = ["CACHE_VERSION", "Cache", "cache_path", "cached_images", "fingerprint", "open_cache", "prepare",
           "uses_cache"]
