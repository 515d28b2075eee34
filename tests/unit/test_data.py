"""Datasets: synthetic determinism and range, the IDX reader, and errors that name the path."""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from capsgan_dist.config import DataConfig
from capsgan_dist.data import (
    EpochShuffle,
    build_dataset,
    load_images,
    read_idx_images,
    synthetic_images,
)
from capsgan_dist.errors import DataError


def write_idx(path: Path, images: np.ndarray, magic: int = 2051, drop_bytes: int = 0) -> Path:
    """Write uint8 images (N, H, W) as an IDX3 file (gzipped if the name ends in .gz)."""
    n, h, w = images.shape
    raw = struct.pack(">IIII", magic, n, h, w) + images.astype(np.uint8).tobytes()
    raw = raw[: len(raw) - drop_bytes]
    path.write_bytes(gzip.compress(raw) if path.suffix == ".gz" else raw)
    return path


def _idx_config(root: Path, cache: Path | None = None, **kw) -> DataConfig:
    """An IDX folder as data, its prepared cache under `cache` (default root/cache), not in the checkout."""
    return DataConfig(name="idx", root=str(root), cache_dir=str(cache or root / "cache"), **kw)


def _images(n: int = 3, h: int = 4, w: int = 5) -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, size=(n, h, w), dtype=np.uint8)


@pytest.mark.parametrize("size,channels", [(28, 1), (32, 3)])
def test_synthetic_is_deterministic_and_in_range(size, channels):
    a = synthetic_images(16, size, channels, seed=7)
    assert a.shape == (16, channels, size, size) and a.dtype == torch.uint8
    assert torch.equal(a, synthetic_images(16, size, channels, seed=7))
    assert not torch.equal(a, synthetic_images(16, size, channels, seed=8))
    ds = build_dataset(DataConfig(name="synthetic", synthetic_size=16, image_size=size, channels=channels))
    x = torch.stack([ds[i] for i in range(len(ds))])
    assert x.dtype == torch.float32 and x.shape == (16, channels, size, size)
    assert x.min().item() == -1.0 and x.max().item() <= 1.0
    assert x.max().item() > 0.9  # uses the whole range, not a sliver of it


@pytest.mark.parametrize("name", ["train-images-idx3-ubyte", "train-images-idx3-ubyte.gz"])
def test_idx_reader_roundtrip(tmp_path, name):
    imgs = _images()
    got = read_idx_images(write_idx(tmp_path / name, imgs))
    assert got.shape == (3, 1, 4, 5) and got.dtype == torch.uint8
    assert torch.equal(got[:, 0], torch.from_numpy(imgs))


def test_idx_dataset_scaled_to_minus_one_one(tmp_path):
    imgs = np.zeros((2, 28, 28), dtype=np.uint8)
    imgs[0, 0, 0], imgs[1, 5, 5] = 255, 128
    write_idx(tmp_path / "t10k-images-idx3-ubyte.gz", imgs)
    ds = build_dataset(_idx_config(tmp_path))
    assert len(ds) == 2
    assert ds[0][0, 0, 0].item() == 1.0 and ds[0][0, 1, 1].item() == -1.0
    assert ds[1][0, 5, 5].item() == pytest.approx(128 / 127.5 - 1, abs=1e-6)


@pytest.mark.parametrize("split,want", [("auto", 255), ("train", 255), ("test", 7)])
def test_idx_split_choice(tmp_path, split, want):
    write_idx(tmp_path / "train-images-idx3-ubyte.gz", np.full((2, 28, 28), 255, dtype=np.uint8))
    write_idx(tmp_path / "t10k-images-idx3-ubyte.gz", np.full((1, 28, 28), 7, dtype=np.uint8))
    assert load_images(_idx_config(tmp_path, split=split))[0, 0, 0, 0].item() == want


@pytest.mark.parametrize("drop", [1, 100])
def test_truncated_idx_is_a_data_error(tmp_path, drop):
    path = write_idx(tmp_path / "t10k-images-idx3-ubyte.gz", _images(), drop_bytes=drop)
    with pytest.raises(DataError, match="truncated") as e:
        read_idx_images(path)
    assert str(path) in str(e.value)


def test_truncated_header_is_a_data_error(tmp_path):
    path = tmp_path / "t10k-images-idx3-ubyte"
    path.write_bytes(struct.pack(">II", 2051, 3))
    with pytest.raises(DataError, match="corrupt or truncated") as e:
        read_idx_images(path)
    assert str(path) in str(e.value)


def test_corrupt_gzip_is_a_data_error(tmp_path):
    path = tmp_path / "t10k-images-idx3-ubyte.gz"
    good = gzip.compress(struct.pack(">IIII", 2051, 3, 4, 5) + _images().tobytes())
    path.write_bytes(good[:20] + b"\x00garbage" * 4)  # a torn download
    with pytest.raises(DataError) as e:
        read_idx_images(path)
    assert str(path) in str(e.value)


def test_wrong_magic_is_a_data_error(tmp_path):
    path = write_idx(tmp_path / "t10k-images-idx3-ubyte", _images(), magic=2049)  # a labels file
    with pytest.raises(DataError, match="not an IDX image file"):
        read_idx_images(path)


def test_missing_dir_names_the_path(tmp_path):
    missing = tmp_path / "no" / "such" / "mnist"
    with pytest.raises(DataError) as e:
        load_images(DataConfig(name="idx", root=str(missing)))
    assert str(missing) in str(e.value) and "shared/data/mnist" in str(e.value)


def test_dir_without_images_names_the_path_and_files(tmp_path):
    (tmp_path / "train-labels-idx1-ubyte.gz").write_bytes(b"")
    with pytest.raises(DataError) as e:
        load_images(_idx_config(tmp_path))
    assert str(tmp_path) in str(e.value) and "images-idx3-ubyte" in str(e.value)


def test_size_mismatch_is_a_data_error(tmp_path):
    write_idx(tmp_path / "t10k-images-idx3-ubyte.gz", _images(2, 28, 28))
    with pytest.raises(DataError, match=r"data\.image_size=28") as e:
        load_images(_idx_config(tmp_path, image_size=32))
    assert "1x28x28" in str(e.value)
    with pytest.raises(DataError, match=r"data\.channels=1"):
        load_images(_idx_config(tmp_path, channels=3))


def test_torchvision_download_failure_is_a_data_error(tmp_path, monkeypatch):
    """A failed torchvision download (offline machine) becomes a DataError saying where to get data."""
    import urllib.error

    import torchvision.datasets

    def offline(*args, **kwargs):
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(torchvision.datasets, "MNIST", offline)
    root = tmp_path / "empty"
    with pytest.raises(DataError, match="get the data") as e:
        load_images(DataConfig(name="mnist", root=str(root)))
    assert str(root) in str(e.value) and "URLError" in str(e.value)


def test_epoch_shuffle_depends_only_on_seed_and_epoch():
    a, b = EpochShuffle(50, seed=3), EpochShuffle(50, seed=3)
    first = list(a)
    assert sorted(first) == list(range(50)) and first == list(b)
    a.set_epoch(1)
    assert list(a) != first
    b.set_epoch(1)
    assert list(a) == list(b)


def test_real_mnist(mnist_dir, tmp_path):
    images = load_images(_idx_config(mnist_dir, cache=tmp_path))
    assert images.shape == (10000, 1, 28, 28) and images.dtype == torch.uint8
    # MNIST digits: mostly black background, strokes near 255, mean pixel ~33
    assert images.max().item() == 255 and images.min().item() == 0
    assert 25 < images.float().mean().item() < 40
    ds = build_dataset(_idx_config(mnist_dir, cache=tmp_path))
    assert ds[0].min().item() == -1.0 and ds[0].max().item() <= 1.0


@pytest.mark.parametrize("name, cls", [("celeba", "CelebA"), ("stl10", "STL10")])
def test_celeba_and_stl10_download_failures_are_data_errors(tmp_path, monkeypatch, name, cls):
    import urllib.error

    import torchvision.datasets

    def offline(*args, **kwargs):
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(torchvision.datasets, cls, offline)
    with pytest.raises(DataError, match=f"cannot load {name} from .* or download it"):
        load_images(DataConfig(name=name, root=str(tmp_path), image_size=64, channels=3))


def test_stl10_images_are_made_the_configured_size_by_the_folder_rule(tmp_path, monkeypatch):
    import numpy as np
    import torchvision.datasets

    class FakeSTL10:  # torchvision's layout: data (N, 3, 96, 96) uint8, labels (N,)
        def __init__(self, root, split, download):
            self.data = np.full((3, 3, 96, 96), 200, np.uint8)
            self.labels = np.array([0, 4, 9])

    monkeypatch.setattr(torchvision.datasets, "STL10", FakeSTL10)
    images = load_images(DataConfig(name="stl10", root=str(tmp_path), image_size=64, channels=3))
    assert images.shape == (3, 3, 64, 64) and (images == 200).all()
