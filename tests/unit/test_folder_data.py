"""data.name=folder: every image under a folder, made the configured shape by one rule (data/folder.py)."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest
from conftest import REPO
from PIL import Image

from capsgan_dist.config import load_config
from capsgan_dist.data import load_images
from capsgan_dist.data.folder import convert, list_images, load_folder_labeled, read_folder
from capsgan_dist.errors import DataError

TWEMOJI = REPO / "data" / "twemoji64"  # scripts/get_twemoji.sh (make data-twemoji)


def _cfg(root: Path, *ovs: str):
    """A folder source at 8 px, its prepared cache beside the folder (not in the checkout's data/cache)."""
    return load_config(None, ["data.name=folder", f"data.root={root}", "data.image_size=8",
                              f"data.cache_dir={root.parent / 'cache'}",
                              "model.discriminator=conv", *ovs]).data  # 8 px: too small for the capsule D


def _mixed_folder(root: Path) -> None:
    """Nested folders with RGBA, palette-with-transparency, grey and JPEG images (16x16)."""
    (root / "a" / "deep").mkdir(parents=True)
    (root / "b").mkdir()
    rgba = np.zeros((16, 16, 4), np.uint8)
    rgba[..., 0] = 200  # red where opaque
    rgba[:, 8:, 3] = 255  # left half transparent, right half opaque
    Image.fromarray(rgba, "RGBA").save(root / "a" / "rgba.png")
    pal = Image.new("P", (16, 16), 1)
    pal.putpalette([0, 0, 0, 10, 200, 30] + [0] * 762)
    pal.info["transparency"] = 0
    pal.paste(0, (0, 0, 16, 8))  # top half: palette index 0, transparent
    pal.save(root / "a" / "deep" / "palette.png", transparency=0)
    Image.new("L", (16, 16), 90).save(root / "b" / "grey.bmp")
    Image.new("RGB", (16, 16), (40, 80, 160)).save(root / "b" / "photo.JPG", quality=95)


def test_mixed_folder_becomes_one_uint8_array_in_path_order(tmp_path: Path):
    _mixed_folder(tmp_path)
    found = read_folder(_cfg(tmp_path, "data.channels=3"))
    assert [f.relative_to(tmp_path).as_posix() for f in found.files] == \
        ["a/deep/palette.png", "a/rgba.png", "b/grey.bmp", "b/photo.JPG"]
    assert found.images.shape == (4, 3, 8, 8) and found.labels is None
    pal, rgba, grey, photo = found.images.numpy().astype(int)
    # transparency composited on white: rgba's left half and the palette's top half (Lanczos rings by a
    # few levels next to the edge, hence the tolerance)
    assert np.abs(rgba[:, :, :3] - 255).max() <= 5 and np.abs(rgba[:, :, 5:] - [[[200]], [[0]], [[0]]]).max() <= 5
    assert np.abs(pal[:, :3] - 255).max() <= 5 and np.abs(pal[:, 5:] - [[[10]], [[200]], [[30]]]).max() <= 5
    assert (grey == 90).all()  # grey -> RGB copies the value into every channel
    assert np.abs(photo - np.array([40, 80, 160])[:, None, None]).max() <= 3  # JPEG, nearly exact


def test_grey_target_uses_luma_and_the_configured_background(tmp_path: Path):
    _mixed_folder(tmp_path)
    images = read_folder(_cfg(tmp_path, "data.channels=1", "data.background=black")).images.numpy().astype(int)
    assert images.shape == (4, 1, 8, 8)
    rgba = images[1, 0]
    assert rgba[:, :3].max() <= 5  # on black now
    assert abs(rgba[0, 6] - round(0.299 * 200)) <= 1  # ITU-R 601-2 luma of (200, 0, 0)
    # any #rrggbb, also as a bare command-line override (YAML would read '#...' as a comment)
    coloured = read_folder(_cfg(tmp_path, "data.channels=3", "data.background=#102030")).images.numpy().astype(int)
    assert np.abs(coloured[1, :, :, :2] - [[[16]], [[32]], [[48]]]).max() <= 3


def test_shorter_side_is_resized_then_the_centre_is_cut():
    wide = np.zeros((10, 30, 3), np.uint8)
    wide[:, 7:23] = 255  # a white middle: 30x10 -> 15x5 (white columns 3.5-11.5) -> the centre 5x5 (5-9)
    out = convert(Image.fromarray(wide), 5, 3, (255, 255, 255))
    assert out.shape == (3, 5, 5) and (out >= 250).all()
    tall = np.zeros((30, 10), np.uint8)
    tall[:3] = 255  # the top only: cropped away
    assert (convert(Image.fromarray(tall), 5, 1, (0, 0, 0)) <= 5).all()


def test_subfolders_are_classes_and_loose_images_are_refused(tmp_path: Path):
    _mixed_folder(tmp_path)
    images, labels, classes = load_folder_labeled(_cfg(tmp_path, "data.labels=subfolders"))
    assert classes == ["a", "b"] and labels.tolist() == [0, 0, 1, 1] and len(images) == 4
    Image.new("L", (16, 16)).save(tmp_path / "loose.png")
    with pytest.raises(DataError, match=r"1 image\(s\) sit directly in .*loose.png"):
        read_folder(_cfg(tmp_path, "data.labels=subfolders"))


def test_a_corrupt_file_is_skipped_with_one_warning(tmp_path: Path):
    _mixed_folder(tmp_path)
    (tmp_path / "b" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    good = tmp_path / "a" / "rgba.png"
    (tmp_path / "a" / "truncated.png").write_bytes(good.read_bytes()[:60])  # a header, then nothing
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        found = read_folder(_cfg(tmp_path))
    assert len(found.images) == 4
    (w,) = [str(c.message) for c in caught]
    assert "skipped 2 of 6 image files" in w and "a/truncated.png, b/broken.png" in w


@pytest.mark.parametrize("make, needle", [
    (lambda p: p, "no images under"),
    (lambda p: p / "missing", "does not exist"),
    (lambda p: (p / "f.png").write_bytes(b"") or p / "f.png", "is a file, not a folder"),
])
def test_empty_missing_or_file_root_is_one_data_error(tmp_path: Path, make, needle):
    with pytest.raises(DataError, match=needle):
        load_images(_cfg(make(tmp_path)))


def test_images_below_half_the_size_are_refused_unless_upscaled(tmp_path: Path):
    Image.new("RGB", (3, 3)).save(tmp_path / "tiny.png")
    Image.new("RGB", (16, 16)).save(tmp_path / "ok.png")
    with pytest.raises(DataError, match=r"1 image\(s\) .* smaller than half of data.image_size=8 \(tiny.png\); "
                                        "set data.upscale=true"):
        load_images(_cfg(tmp_path, "data.channels=3"))
    assert load_images(_cfg(tmp_path, "data.channels=3", "data.upscale=true")).shape == (2, 3, 8, 8)


def test_folder_needs_a_root_and_a_known_background():
    from capsgan_dist.errors import ConfigError

    with pytest.raises(ConfigError, match="data.name=folder needs data.root"):
        load_config(None, ["data.name=folder"])
    with pytest.raises(ConfigError, match="data.background"):
        load_config(None, ["data.name=folder", "data.root=x", "data.background=pink"])


def test_list_images_ignores_other_files(tmp_path: Path):
    (tmp_path / "notes.txt").write_text("x")
    Image.new("L", (4, 4)).save(tmp_path / "x.webp")
    Image.new("L", (4, 4)).save(tmp_path / "y.gif")
    assert [p.name for p in list_images(tmp_path)] == ["x.webp", "y.gif"]


@pytest.mark.skipif(not (TWEMOJI / ".complete").is_file(),
                    reason=f"no Twemoji at {TWEMOJI}: run `make data-twemoji` (npm pack emoji-datasource-twitter)")
def test_real_twemoji_folder_gives_nine_classes_of_rgb_images():
    images, labels, classes = load_folder_labeled(load_config(None, [
        "data.name=folder", f"data.root={TWEMOJI}", "data.labels=subfolders", "data.image_size=64",
        "data.channels=3"]).data)
    assert images.shape == (3781, 3, 64, 64) and len(classes) == 9 and "smileys-emotion" in classes
    assert labels.bincount().min() >= 80
    corners = images[:, :, 0, 0].float().mean()  # transparent corners on white
    assert corners > 200
