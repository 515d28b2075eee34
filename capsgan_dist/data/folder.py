"""Your own images: every PNG, JPEG, WebP, BMP or GIF under a folder, made the configured shape by one rule.

The rule (docs/data.md states it too), for each file in sorted order of its path below data.root:

1. Decode it (a GIF's first frame; 16-bit greys scaled to 8 bits). A file that does not decode is
   skipped; one warning gives how many were skipped and the first paths.
2. Transparency (RGBA, LA, a palette or RGB image with a transparent colour) is composited on
   data.background (white by default), so a transparent pixel becomes that colour.
3. Colour becomes data.channels: RGB -> grey by ITU-R 601-2 luma (L = 0.299 R + 0.587 G + 0.114 B),
   grey -> RGB by copying the grey into the three channels.
4. The shorter side is resized to data.image_size with antialiasing (Lanczos), then the centred
   image_size x image_size square is cut out.

An image whose shorter side is below image_size / 2 is refused before any decoding (exit 2) unless
data.upscale=true. With data.labels=subfolders an image's class is its first-level folder.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from capsgan_dist.config import DataConfig
from capsgan_dist.errors import DataError, warn

EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif")
SHOW_PATHS = 3  # paths named in a warning or an error about many files
_DECODE_ERRORS = (OSError, UnidentifiedImageError, ValueError, SyntaxError, Image.DecompressionBombError)


def background_rgb(name: str) -> tuple[int, int, int]:
    """data.background as an RGB triple: white, black or #rrggbb."""
    if name == "white":
        return 255, 255, 255
    if name == "black":
        return 0, 0, 0
    return int(name[1:3], 16), int(name[3:5], 16), int(name[5:7], 16)


def list_images(root: Path) -> list[Path]:
    """Image files under `root`, recursively, in a stable order (their paths below root, sorted)."""
    files = [p for p in root.rglob("*") if p.suffix.lower() in EXTENSIONS and p.is_file()]
    return sorted(files, key=lambda p: p.relative_to(root).as_posix())


def _first(paths: list[Path], root: Path) -> str:
    shown = ", ".join(p.relative_to(root).as_posix() for p in paths[:SHOW_PATHS])
    return shown + (", ..." if len(paths) > SHOW_PATHS else "")


def convert(img: Image.Image, size: int, channels: int, background: tuple[int, int, int]) -> np.ndarray:
    """One decoded image -> uint8 (channels, size, size) by the module's rule (steps 2-4)."""
    if img.mode in ("I;16", "I;16B", "I;16L", "I"):  # 16-bit grey: keep the top 8 bits' worth
        img = Image.fromarray((np.asarray(img, dtype=np.float64) / 257.0).clip(0, 255).round().astype(np.uint8))
    has_alpha = img.mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in img.info
    if has_alpha:
        rgba = img.convert("RGBA")
        img = Image.alpha_composite(Image.new("RGBA", rgba.size, (*background, 255)), rgba)
    img = img.convert("L" if channels == 1 else "RGB")
    w, h = img.size
    scale = size / min(w, h)
    new = (max(size, round(w * scale)), max(size, round(h * scale)))  # the shorter side exactly `size`
    if new != (w, h):
        img = img.resize(new, Image.Resampling.LANCZOS)
    left, top = (new[0] - size) // 2, (new[1] - size) // 2
    img = img.crop((left, top, left + size, top + size))
    arr = np.asarray(img, dtype=np.uint8)
    return arr[None] if channels == 1 else arr.transpose(2, 0, 1)


@dataclass(frozen=True)
class FolderImages:
    """What `read_folder` found: the images, their labels (or None), class names and the files kept."""

    images: torch.Tensor  # uint8 (N, C, S, S)
    labels: torch.Tensor | None  # int64 (N,) with data.labels=subfolders
    classes: list[str]
    files: list[Path]


def check_root(cfg: DataConfig) -> tuple[Path, list[Path]]:
    """data.root and its image files in order; a root that is missing, a file or empty is one DataError."""
    root = Path(cfg.root or "")
    if not root.exists():
        raise DataError(f"data.root {root} does not exist; point it at a folder of images (PNG, JPEG, WebP, "
                        "BMP, GIF), e.g. data.root=data/twemoji64 after `make data-twemoji`")
    if not root.is_dir():
        raise DataError(f"data.root {root} is a file, not a folder; point it at the folder that holds the images")
    files = list_images(root)
    if not files:
        raise DataError(f"no images under {root} (looked for {', '.join(EXTENSIONS)}, in subfolders too); "
                        "check data.root")
    return root, files


def _sizes(files: list[Path]) -> tuple[dict[Path, tuple[int, int]], list[Path]]:
    """Each file's (width, height) from its header alone, and the files whose header does not read."""
    sizes, bad = {}, []
    for f in files:
        try:
            with Image.open(f) as im:
                sizes[f] = im.size
        except _DECODE_ERRORS:
            bad.append(f)
    return sizes, bad


@dataclass(frozen=True)
class FolderScan:
    """A folder checked before any decoding: its image files in order, their sizes, and unreadable headers."""

    root: Path
    files: list[Path]
    sizes: dict[Path, tuple[int, int]]
    bad_headers: list[Path]

    def class_of(self, f: Path) -> str:
        return f.relative_to(self.root).parts[0]


def scan_folder(cfg: DataConfig) -> FolderScan:
    """List data.root's images and read their headers; refuse a bad folder (one DataError) before decoding."""
    root, files = check_root(cfg)
    if cfg.labels == "subfolders":
        loose = [f for f in files if f.parent == root]
        if loose:
            raise DataError(f"data.labels=subfolders: {len(loose)} image(s) sit directly in {root}, outside any "
                            f"class folder ({_first(loose, root)}); move them into one or use data.labels=none")
    sizes, bad = _sizes(files)
    small = [f for f, (w, h) in sizes.items() if min(w, h) * 2 < cfg.image_size]
    if small and not cfg.upscale:
        raise DataError(f"{len(small)} image(s) under {root} are smaller than half of data.image_size="
                        f"{cfg.image_size} ({_first(small, root)}); set data.upscale=true to enlarge them, "
                        "or use a smaller data.image_size")
    return FolderScan(root, files, sizes, bad)


def decode_folder(scan: FolderScan, cfg: DataConfig) -> Iterator[tuple[Path, np.ndarray | None]]:
    """(file, uint8 (C, S, S)) for each file of the scan in order; None for one that does not decode."""
    background = background_rgb(cfg.background)
    for f in scan.files:
        if f not in scan.sizes:
            yield f, None
            continue
        try:
            with Image.open(f) as im:
                im.seek(0)  # a GIF's (or WebP's) first frame
                im.load()
                yield f, convert(im, cfg.image_size, cfg.channels, background)
        except _DECODE_ERRORS:
            yield f, None


def warn_skipped(scan: FolderScan, skipped: list[Path]) -> None:
    """The one warning about files that did not decode (nothing if none)."""
    if skipped:
        skipped = sorted(skipped, key=lambda p: p.relative_to(scan.root).as_posix())
        warn(f"skipped {len(skipped)} of {len(scan.files)} image files under {scan.root} that do not decode "
             f"({_first(skipped, scan.root)})")


def class_labels(scan: FolderScan, kept: list[Path]) -> tuple[torch.Tensor, list[str]]:
    """Class index of each kept file (its first-level folder, classes in sorted order) and the class names."""
    classes = sorted({scan.class_of(f) for f in kept})
    index = {c: i for i, c in enumerate(classes)}
    return torch.tensor([index[scan.class_of(f)] for f in kept], dtype=torch.long), classes


def read_folder(cfg: DataConfig) -> FolderImages:
    """Every image under data.root by the module's rule, in memory; labels from first-level folders if asked."""
    scan = scan_folder(cfg)
    arrays, kept, skipped = [], [], []
    for f, arr in decode_folder(scan, cfg):
        if arr is None:
            skipped.append(f)
        else:
            arrays.append(arr)
            kept.append(f)
    warn_skipped(scan, skipped)
    if not arrays:
        raise DataError(f"none of the {len(scan.files)} image files under {scan.root} decodes; check the files")
    images = torch.from_numpy(np.stack(arrays))
    if cfg.labels != "subfolders":
        return FolderImages(images, None, [], kept)
    labels, classes = class_labels(scan, kept)
    return FolderImages(images, labels, classes, kept)


def load_folder(cfg: DataConfig) -> torch.Tensor:
    """The folder's images, uint8 (N, C, S, S)."""
    return read_folder(cfg).images


def load_folder_labeled(cfg: DataConfig) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    """The folder's images, their class indices and the class names (data.labels=subfolders)."""
    found = read_folder(cfg)
    if found.labels is None:
        raise DataError("labels of a folder come from its subfolders: set data.labels=subfolders")
    return found.images, found.labels, found.classes
