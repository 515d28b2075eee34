"""Shared test helpers: run the real CLI in subprocesses (1 process, or N with torchrun)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
DEBUG_CONFIG = REPO / "configs" / "debug.yaml"
# configs/debug.yaml with a capsule generator of debug size (4 top capsules of 8-D, a 4 x 7 x 7 grid of 4-D).
CAPSULE_G_DEBUG = ["model.generator=capsule", "model.g_top_caps=4", "model.g_top_dim=8",
                   "model.g_primary_channels=4", "model.g_primary_dim=4", "model.g_routing_iters=2"]
SHARED = REPO.parent / "shared"
MNIST_DIR = SHARED / "data" / "mnist"
FASHION_DIR = Path("/usr/share/datasets/fashion-mnist")


def cli_env(**extra: str) -> dict[str, str]:
    """Environment for child processes: this checkout first on the path, W&B offline, 1 thread each."""
    env = dict(os.environ)
    env.update(PYTHONPATH=str(REPO), WANDB_MODE="offline", WANDB_SILENT="true", OMP_NUM_THREADS="1",
               RAY_USAGE_STATS_ENABLED="0", PYTHONUNBUFFERED="1")
    env.update(extra)
    return env


def write_script(path: Path, text: str) -> Path:
    """Write an executable script: a stub or wrapper a test puts in place of a real program."""
    path.write_text(text)
    path.chmod(0o755)
    return path


def wait_for(condition, timeout: float, what: str, proc: subprocess.Popen | None = None,
             poll: float = 0.2) -> None:
    """Poll an on-disk (or cluster) condition, the event a test synchronises on, every `poll` s;
    fail if it is not true within `timeout` or `proc` ended first."""
    end = time.monotonic() + timeout
    while not condition():
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"process exited ({proc.returncode}) before {what}")
        if time.monotonic() > end:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(poll)


def run_capsgan(*args: str, nproc: int = 1, timeout: float = 300, check: bool = True,
                env: dict[str, str] | None = None, cwd: Path | None = None) -> subprocess.CompletedProcess:
    """Run `capsgan ARGS` (under torchrun with `nproc` CPU processes when nproc > 1)."""
    if nproc == 1:
        cmd = [sys.executable, "-m", "capsgan_dist", *args]
    else:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
               "-m", "capsgan_dist", *args]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env or cli_env(),
                          cwd=cwd or REPO)
    if check and proc.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} exited {proc.returncode}\nstdout:\n{proc.stdout[-3000:]}\n"
                             f"stderr:\n{proc.stderr[-5000:]}")
    return proc


@pytest.fixture
def mnist_dir() -> Path:
    """The 10,000 real MNIST test digits (../shared/data/mnist); skips where they are absent."""
    if not (MNIST_DIR / "t10k-images-idx3-ubyte.gz").is_file():
        pytest.skip(f"real MNIST not found at {MNIST_DIR} (see ../shared/data/README.md)")
    return MNIST_DIR


_CLASSIFIER: dict[str, Path] = {}


@pytest.fixture
def mnist_classifier(mnist_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A LeNet trained through the CLI for 1 epoch on 8,000 real digits, once per session (~10 s)."""
    if "path" not in _CLASSIFIER:
        out = tmp_path_factory.mktemp("classifier") / "lenet.safetensors"
        run_capsgan("classifier", "train", "--data", str(mnist_dir), "--arch", "lenet", "--out", str(out),
                    "--epochs", "1", "--holdout", "2000", timeout=300)
        _CLASSIFIER["path"] = out
    return _CLASSIFIER["path"]


@pytest.fixture(scope="session")
def fid_inception_weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A file laid out like the FID Inception-v3 weights (random weights, so no real file is needed).

    Batch-norm statistics are taken from one batch of noise so activations stay finite, and the
    batch counters are dropped, as in files saved by older torch versions.
    """
    import torch
    import torchvision

    torch.manual_seed(0)
    net = torchvision.models.inception_v3(weights=None, aux_logits=False, num_classes=1008, init_weights=True)
    for m in net.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.momentum = 1.0  # running statistics := this batch's
    with torch.no_grad():
        net.train()(torch.rand(4, 3, 299, 299) * 2 - 1)
    state = {k: v for k, v in net.state_dict().items() if not k.endswith("num_batches_tracked")}
    path = tmp_path_factory.mktemp("inception") / "pt_inception-random.pth"
    torch.save(state, path)
    return path
