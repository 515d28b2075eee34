"""Every kind of bad input through the real CLI: exit 2, one line on stderr, no traceback.

All cases run once per module, two at a time (`outcomes`); the parametrised test checks each.
The table in docs/reliability.md lists the same cases and messages.
"""

from __future__ import annotations

import gzip
import re
import shutil
import struct
import subprocess
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import torch
from conftest import DEBUG_CONFIG, run_capsgan

CFG = str(DEBUG_CONFIG)
QUIET = "train.progress=false"


def _write_idx(path: Path, n: int = 64, size: int = 28) -> Path:
    """A small gzip'd IDX3 image file like MNIST's (random pixels)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = torch.randint(0, 256, (n, size, size), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    with gzip.open(path, "wb") as f:
        f.write(struct.pack(">IIII", 2051, n, size, size) + pixels.numpy().tobytes())
    return path


def _write_labels(path: Path, n: int = 64) -> Path:
    """The matching gzip'd IDX1 label file (digits 0-9 in turn)."""
    with gzip.open(path, "wb") as f:
        f.write(struct.pack(">II", 2049, n) + bytes(i % 10 for i in range(n)))
    return path


def _idx(root: Path) -> list[str]:
    """An IDX folder as data, its prepared cache beside it (not in the checkout's data/cache)."""
    return ["data.name=idx", f"data.root={root}", f"data.cache_dir={root.parent / 'cache'}"]


def _mount_tmpfs(path: Path, size: str, read_only: bool = False) -> bool:
    """Mount a real tmpfs of `size` at `path` (needs root); False where mounting is not allowed."""
    path.mkdir(parents=True, exist_ok=True)
    opts = f"size={size}" + (",ro" if read_only else "")
    return subprocess.run(["mount", "-t", "tmpfs", "-o", opts, "tmpfs", str(path)], capture_output=True).returncode == 0


# id -> (key words the one line must contain); the arguments are built in `_cases`.
EXPECT: dict[str, list[str]] = {
    "unknown-key": ["unknown config key 'train.stpes'", "did you mean 'train.steps'"],
    "unknown-key-in-yaml": ["unknown config key 'trian'", "bad_key.yaml", "did you mean 'train'"],
    "wrong-type": ["wrong type for 'train.steps'", "'abc'", "give a value of type int"],
    "wrong-type-in-yaml": ["wrong type for 'optim.lr_d'", "bad_type.yaml", "give a value of type float"],
    "out-of-range": ["train.steps=0 is out of range", "must be >= 1"],
    "bad-choice": ["train.schedule='sometimes' is not allowed", "choose one of alternate, both"],
    "yaml-syntax": ["YAML syntax error in", "bad_syntax.yaml line 3"],
    "missing-config": ["config file", "nope.yaml does not exist", "presets are in configs/"],
    "override-not-key-value": ["override 'steps' must look like key=value"],
    "missing-dataset": ["no train-images-idx3-ubyte[.gz] or t10k-images-idx3-ubyte[.gz] in", "get the data"],
    "truncated-dataset": ["cannot read", "t10k-images-idx3-ubyte.gz", "corrupt or truncated, fetch it again"],
    "corrupt-dataset": ["cannot read", "t10k-images-idx3-ubyte.gz", "corrupt or truncated, fetch it again"],
    "image-size-mismatch": ["images are 1x28x28", "configured for 1x32x32", "set data.channels=1 data.image_size=28"],
    "channels-mismatch": ["images are 1x28x28", "configured for 3x28x28", "set data.channels=1"],
    "checkpoint-other-model": ["was written for a different model config", "resume with the run's own config.yaml"],
    "truncated-checkpoint": ["none of the 2 checkpoints", "is intact", "fails its checksum (truncated or corrupt)",
                             "restore them from a backup"],
    "resume-without-checkpoint": ["no checkpoint in", "start a new run without --resume"],
    "resume-not-a-run": ["--resume", "no config.yaml there", "pass the folder of an earlier run"],
    "resume-missing-folder": ["--resume", "gone: no such folder", "pass the folder of an earlier run"],
    "image-too-small-for-capsule-d": ["data.image_size=8 is too small for the capsule discriminator",
                                      "model.conv1_kernel=5", "use data.image_size>=12"],
    "images-too-small-for-classifier": ["--arch capsnet needs images of at least 17x17", "holds 16x16 images",
                                        "use --arch lenet"],
    "resume-with-config": ["--resume RUN_DIR uses the run's own config.yaml", "drop the CONFIG argument"],
    "run-folder-under-a-file": ["cannot create run folder", "Not a directory", "set train.out_dir"],
    "read-only-run-folder": ["cannot create run folder", "Read-only file system", "set train.out_dir"],
    "disk-full-while-saving": ["cannot write the checkpoint of step 4", "No space left on device",
                               "free disk space", "last good checkpoint (step_0000002)"],
}
NEEDS_MOUNT = {"read-only-run-folder", "disk-full-while-saving"}


def _cases(tmp: Path, finished: Path, can_mount: bool) -> dict[str, list[str]]:
    """CLI arguments of each case, creating the bad files they need under `tmp`."""
    (tmp / "bad_key.yaml").write_text("trian:\n  steps: 3\n")
    (tmp / "bad_type.yaml").write_text("optim:\n  lr_d: fast\n")
    (tmp / "bad_syntax.yaml").write_text("train:\n  steps: [1, 2\n")
    (tmp / "empty").mkdir()
    good = _write_idx(tmp / "idx" / "t10k-images-idx3-ubyte.gz")
    raw = good.read_bytes()
    (tmp / "trunc").mkdir()
    (tmp / "trunc" / good.name).write_bytes(raw[: len(raw) // 2])
    flipped = bytearray(raw)
    for i in range(200, 400):
        flipped[i] ^= 0xFF
    (tmp / "flip").mkdir()
    (tmp / "flip" / good.name).write_bytes(bytes(flipped))
    shutil.copytree(finished, tmp / "trunc_ckpt")
    for ckpt in (tmp / "trunc_ckpt" / "checkpoints").iterdir():
        f = ckpt / "G" / "model.safetensors"
        f.write_bytes(f.read_bytes()[:1000])
    (tmp / "no_ckpt").mkdir()
    shutil.copy(finished / "config.yaml", tmp / "no_ckpt" / "config.yaml")
    shutil.copytree(finished, tmp / "other_model")
    (tmp / "a_file").write_text("")
    _write_idx(tmp / "small_idx" / "t10k-images-idx3-ubyte.gz", n=64, size=16)
    _write_labels(tmp / "small_idx" / "t10k-labels-idx1-ubyte.gz", n=64)
    idx = _idx(tmp / "idx")
    cases = {
        "unknown-key": ["train", CFG, "train.stpes=3"],
        "unknown-key-in-yaml": ["train", str(tmp / "bad_key.yaml")],
        "wrong-type": ["train", CFG, "train.steps=abc"],
        "wrong-type-in-yaml": ["train", str(tmp / "bad_type.yaml")],
        "out-of-range": ["train", CFG, "train.steps=0"],
        "bad-choice": ["train", CFG, "train.schedule=sometimes"],
        "yaml-syntax": ["train", str(tmp / "bad_syntax.yaml")],
        "missing-config": ["train", str(tmp / "nope.yaml")],
        "override-not-key-value": ["train", CFG, "steps"],
        "missing-dataset": ["train", CFG, *_idx(tmp / "empty"), f"train.run_dir={tmp / 'r1'}"],
        "truncated-dataset": ["train", CFG, *_idx(tmp / "trunc"), f"train.run_dir={tmp / 'r2'}"],
        "corrupt-dataset": ["train", CFG, *_idx(tmp / "flip"), f"train.run_dir={tmp / 'r3'}"],
        "image-size-mismatch": ["train", CFG, *idx, "data.image_size=32", f"train.run_dir={tmp / 'r4'}"],
        "channels-mismatch": ["train", CFG, *idx, "data.channels=3", f"train.run_dir={tmp / 'r5'}"],
        "checkpoint-other-model": ["train", CFG, "resume=auto", "model.dense=8",
                                   f"train.run_dir={tmp / 'other_model'}"],
        "truncated-checkpoint": ["train", "--resume", str(tmp / "trunc_ckpt")],
        "resume-without-checkpoint": ["train", "--resume", str(tmp / "no_ckpt")],
        "resume-not-a-run": ["train", "--resume", str(tmp / "empty")],
        "resume-missing-folder": ["train", "--resume", str(tmp / "gone")],
        "image-too-small-for-capsule-d": ["train", CFG, "data.image_size=8"],
        "images-too-small-for-classifier": ["classifier", "train", "--data", str(tmp / "small_idx"), "--arch",
                                            "capsnet", "--holdout", "8", "--out", str(tmp / "clf.safetensors")],
        "resume-with-config": ["train", CFG, "--resume", str(finished)],
        "run-folder-under-a-file": ["train", CFG, f"train.out_dir={tmp / 'a_file'}"],
    }
    if can_mount:
        # A real read-only filesystem (root ignores permission bits, so chmod would not do).
        _mount_tmpfs(tmp / "ro", "1m", read_only=True)
        cases["read-only-run-folder"] = ["train", CFG, f"train.run_dir={tmp / 'ro' / 'run'}"]
        # A real full disk: room for the first checkpoint (~2.9 MB) but not the second.
        _mount_tmpfs(tmp / "small", "4m")
        cases["disk-full-while-saving"] = ["train", CFG, "train.checkpoint_every=2", QUIET,
                                           f"train.run_dir={tmp / 'small' / 'run'}"]
    return cases


@pytest.fixture(scope="module")
def outcomes(tmp_path_factory) -> Iterator[dict[str, subprocess.CompletedProcess]]:
    """Run every case through the CLI, two at a time."""
    tmp = tmp_path_factory.mktemp("bad_input")
    finished = tmp / "finished"
    run_capsgan("train", CFG, f"train.run_dir={finished}", "train.steps=4", "train.checkpoint_every=2", QUIET,
                timeout=300)
    can_mount = _mount_tmpfs(tmp / "probe", "1m")
    if can_mount:
        subprocess.run(["umount", str(tmp / "probe")], check=True)
    cases = _cases(tmp, finished, can_mount)
    try:
        with ThreadPoolExecutor(2) as pool:
            futures = {k: pool.submit(run_capsgan, *args, check=False, timeout=300) for k, args in cases.items()}
            yield {k: f.result() for k, f in futures.items()}
    finally:
        for m in ("ro", "small"):
            subprocess.run(["umount", "-l", str(tmp / m)], capture_output=True)


@pytest.mark.slow
@pytest.mark.parametrize("case", list(EXPECT))
def test_bad_input_gives_one_clear_line_and_exit_2(outcomes, case):
    """Exit code 2, exactly one line on stderr naming what/where/fix, and no traceback."""
    if case not in outcomes:
        assert case in NEEDS_MOUNT
        pytest.skip("mounting a tmpfs (a real read-only or full disk) needs root")
    res = outcomes[case]
    lines = [line for line in res.stderr.splitlines() if line.strip()]
    assert "Traceback" not in res.stderr + res.stdout, res.stderr[-3000:]
    assert res.returncode == 2, res.stderr[-3000:]
    assert len(lines) == 1, lines
    assert lines[0].startswith("capsgan: error: ")
    print(f"\nMESSAGE {case}: {lines[0]}")  # `pytest -s` shows them (docs/reliability.md quotes them)
    missing = [w for w in EXPECT[case] if w not in lines[0]]
    assert not missing, f"{missing} not in: {lines[0]}"


def test_debug_flag_shows_the_traceback():
    """--debug turns the one-line message back into the full traceback."""
    res = run_capsgan("--debug", "train", CFG, "train.stpes=3", check=False, timeout=120)
    assert res.returncode != 0 and "Traceback" in res.stderr and "ConfigError" in res.stderr


def test_disk_full_leaves_no_partial_checkpoint(outcomes):
    """After the failed save only complete checkpoints remain, and they verify."""
    if "disk-full-while-saving" not in outcomes:
        pytest.skip("mounting a tmpfs (a real full disk) needs root")
    from capsgan_dist import checkpoint

    line = outcomes["disk-full-while-saving"].stderr.strip()
    root = Path(re.search(r" to (\S+): No space left on device", line).group(1))
    assert [p.name for p in root.iterdir()] == ["step_0000002"]
    assert checkpoint.verify(root / "step_0000002")["step"] == 2
