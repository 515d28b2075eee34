"""The prepared cache (data/cache.py): decoded once, memory-mapped, prepared again when the source changes,
never half-used, one preparer among concurrent processes."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import MNIST_DIR, REPO, cli_env
from PIL import Image

from capsgan_dist.config import load_config
from capsgan_dist.data import load_images
from capsgan_dist.data.cache import IMAGES, MANIFEST, cache_path, prepare
from capsgan_dist.data.folder import read_folder


def _folder(root: Path, n: int = 6) -> Path:
    rng = np.random.default_rng(0)
    for i in range(n):
        (root / f"c{i % 2}").mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 255, (20, 20, 3), dtype=np.uint8)).save(root / f"c{i % 2}" / f"{i}.png")
    return root


def _cfg(root: Path, cache_dir: Path, *ovs: str):
    return load_config(None, ["data.name=folder", f"data.root={root}", "data.image_size=16", "data.channels=3",
                              f"data.cache_dir={cache_dir}", "model.discriminator=conv", *ovs]).data


def _prepare(cfg) -> tuple[object, list[str]]:
    said: list[str] = []
    return prepare(cfg, log=said.append), said


def test_prepared_once_then_reused_with_the_same_pixels(tmp_path: Path):
    cfg = _cfg(_folder(tmp_path / "imgs"), tmp_path / "cache", "data.labels=subfolders")
    cache, said = _prepare(cfg)
    assert len(said) == 1 and said[0].startswith("capsgan: prepared 6 images of 3x16x16") and "images/s" in said[0]
    assert cache.path == cache_path(cfg) and (cache.path / IMAGES).stat().st_size == 6 * 3 * 16 * 16
    m = cache.manifest
    assert m["count"] == 6 and m["shape"] == [6, 3, 16, 16] and m["classes"] == ["c0", "c1"]
    assert [f[0] for f in m["files"]] == ["c0/0.png", "c0/2.png", "c0/4.png", "c1/1.png", "c1/3.png", "c1/5.png"]
    assert torch.equal(cache.images, read_folder(cfg).images)  # the same rule as reading into memory
    assert cache.labels.tolist() == [0, 0, 0, 1, 1, 1]
    again, said = _prepare(cfg)
    assert said == [] and torch.equal(again.images, cache.images)
    # other conversion settings get a cache of their own
    assert cache_path(_cfg(tmp_path / "imgs", tmp_path / "cache", "data.background=black")) != cache.path


def test_training_reads_the_cache_through_a_memory_map(tmp_path: Path):
    cfg = _cfg(_folder(tmp_path / "imgs"), tmp_path / "cache")
    images = load_images(cfg)
    ptr = images.data_ptr()
    mapped = [line for line in Path("/proc/self/maps").read_text().splitlines() if line.endswith(IMAGES)]
    spans = [tuple(int(x, 16) for x in line.split()[0].split("-")) for line in mapped]
    assert any(lo <= ptr < hi for lo, hi in spans), "the training images are not a mapping of images.u8"
    assert torch.equal(images, load_images(_cfg(tmp_path / "imgs", tmp_path / "c2", "data.cache=false")))


@pytest.mark.parametrize("change, said", [
    (lambda r: Image.new("RGB", (20, 20), (9, 9, 9)).save(r / "c0" / "new.png"), "1 added"),
    (lambda r: (r / "c1" / "3.png").unlink(), "1 removed"),
    (lambda r: (time.sleep(0.01), Image.new("RGB", (24, 24), (1, 2, 3)).save(r / "c0" / "2.png")), "1 changed"),
])
def test_a_changed_folder_is_noticed_and_prepared_again(tmp_path: Path, change, said):
    root = _folder(tmp_path / "imgs")
    cfg = _cfg(root, tmp_path / "cache")
    before, _ = _prepare(cfg)
    change(root)
    after, lines = _prepare(cfg)
    assert lines[0] == f"capsgan: {root} changed since its cache was prepared ({said}); preparing it again"
    assert after.manifest["files"] != before.manifest["files"]
    assert torch.equal(after.images, read_folder(cfg).images)


def test_a_half_written_cache_is_never_used(tmp_path: Path):
    cfg = _cfg(_folder(tmp_path / "imgs"), tmp_path / "cache")
    path = cache_path(cfg)
    path.mkdir(parents=True)
    (path / IMAGES).write_bytes(b"\0" * 100)  # a crash before the manifest
    cache, said = _prepare(cfg)
    assert said[0].startswith("capsgan: prepared 6 images")
    (cache.path / IMAGES).write_bytes((cache.path / IMAGES).read_bytes()[:-16])  # truncated afterwards
    _, said = _prepare(cfg)
    assert said[0] == "capsgan: its image file is incomplete; preparing it again"
    assert (cache.path / MANIFEST).is_file() and not list(cache.path.parent.glob(".tmp-*"))


def test_two_concurrent_prepares_leave_one_valid_cache(tmp_path: Path):
    root = _folder(tmp_path / "imgs", n=200)
    args = [sys.executable, "-m", "capsgan_dist", "data", "prepare", str(REPO / "configs" / "debug.yaml"),
            "data.name=folder", f"data.root={root}", "data.image_size=16", "data.channels=3",
            f"data.cache_dir={tmp_path / 'cache'}", "model.discriminator=conv"]
    procs = [subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=cli_env(),
                              cwd=REPO) for _ in range(2)]
    outs = [p.communicate(timeout=120) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    assert sum(err.count("capsgan: prepared 200 images") for _, err in outs) == 1  # the other waited, then reused
    assert all("cache ready:" in out for out, _ in outs)
    cfg = _cfg(root, tmp_path / "cache")
    caches = [p for p in (tmp_path / "cache").iterdir() if p.is_dir()]
    assert caches == [cache_path(cfg)] and torch.equal(prepare(cfg).images, read_folder(cfg).images)


@pytest.mark.skipif(not (MNIST_DIR / "t10k-images-idx3-ubyte.gz").is_file(), reason="real MNIST not found")
def test_idx_data_is_cached_too(tmp_path: Path):
    cfg = load_config(None, ["data.name=idx", f"data.root={MNIST_DIR}", f"data.cache_dir={tmp_path}"]).data
    images = load_images(cfg)
    assert images.shape == (10000, 1, 28, 28) and (cache_path(cfg) / IMAGES).is_file()
    assert prepare(cfg).labels.shape == (10000,)
    assert os.path.getsize(cache_path(cfg) / IMAGES) == 10000 * 28 * 28
