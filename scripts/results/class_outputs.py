"""How a semi-supervised D's K class outputs behave on held-out and generated images, one row per run.

    python scripts/results/class_outputs.py runs/semisup/mnist_100/*/seed0
    python scripts/results/class_outputs.py runs/semisup/fashion_100/capsule_*/seed* --n 2000

For each run's newest valid checkpoint, on the first N images of its held-out test split: the test
error, how many classes D calls present (sigmoid(l_k) > 0.5; for the capsule D that is a class
capsule longer than 0.5), the mean of the largest and second-largest sigmoid(l_k), and D's real/fake
probability D(x) = Z/(Z+1), Z = sum_k exp(l_k), on those images and on N of G's samples ("-" for a
run on the labeled images alone, loss.unsup_weight=0: its G never trained and its D never saw G's
images). It tells a D that learned "one class present per image" from one that calls many classes
present at once.
"""

import argparse
from pathlib import Path

import torch

from capsgan_dist.checkpoint import step_of
from capsgan_dist.data import load_splits
from capsgan_dist.dist import noise
from capsgan_dist.errors import UserError, warn
from capsgan_dist.losses import real_logit
from capsgan_dist.metrics.evaluate import generate
from capsgan_dist.sample import load_models, run_config
from capsgan_dist.semisup import to_unit, trains_gan

_NOISE_SALT = 6  # latents of this report, apart from training's and evaluation's

COLUMNS = ("run", "step", "test error %", "classes present", "largest", "2nd largest",
           "D(real test)", "D(generated)")


@torch.no_grad()
def _logits(D: torch.nn.Module, x: torch.Tensor, batch: int = 250) -> torch.Tensor:
    return torch.cat([D(x[i:i + batch]) for i in range(0, len(x), batch)]).float()


@torch.no_grad()
def outputs(run: Path, n: int) -> dict:
    """The row of one run (see the module's docstring)."""
    cfg = run_config(run)
    if cfg.data.labels_per_class <= 0:
        raise UserError(f"{run} is not a semi-supervised run (data.labels_per_class is 0)")
    G, D, path = load_models(run)
    splits = load_splits(cfg.data, cfg.seed)
    x, y = to_unit(splits.test_x[:n]), splits.test_y[:n]
    real = _logits(D, x)
    d_generated = None
    if trains_gan(cfg):
        z = noise(len(x), cfg.model.latent_dim, torch.device("cpu"), cfg.seed, _NOISE_SALT)
        d_generated = torch.sigmoid(real_logit(_logits(D, generate(G, z, batch=250)))).mean().item()
    top2 = torch.sigmoid(real).topk(2, dim=1).values
    return {"run": str(run), "step": step_of(path),
            "test error %": 100 * (real.argmax(1) != y).float().mean().item(),
            "classes present": (real > 0).float().sum(1).mean().item(),
            "largest": top2[:, 0].mean().item(), "2nd largest": top2[:, 1].mean().item(),
            "D(real test)": torch.sigmoid(real_logit(real)).mean().item(),
            "D(generated)": d_generated}


def _cell(column: str, v) -> str:
    if v is None:
        return "-"
    if not isinstance(v, float):
        return str(v)
    return f"{v:.2f}" if column in ("test error %", "classes present") else f"{v:.3f}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("runs", nargs="+", type=Path, help="semi-supervised run folders")
    ap.add_argument("--n", type=int, default=2000, help="held-out (and generated) images per run")
    args = ap.parse_args()
    if args.n < 1:
        ap.error(f"--n must be at least 1, got {args.n}")
    print("| " + " | ".join(COLUMNS) + " |")
    print("|" + "---|" * len(COLUMNS))
    for run in args.runs:
        try:
            row = outputs(run, args.n)
        except UserError as e:  # e.g. a run still before its first checkpoint: the others still count
            warn(f"skipping: {e}")
            continue
        print("| " + " | ".join(_cell(c, row[c]) for c in COLUMNS) + " |", flush=True)


if __name__ == "__main__":
    main()
