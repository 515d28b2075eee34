"""`capsgan` command line: thin wrappers over the library. Bad input ends in one line and exit 2."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from capsgan_dist.errors import UserError

USER_ERROR_EXIT = 2


def _train(args: argparse.Namespace) -> int:
    from capsgan_dist.config import load_config, to_yaml

    overrides = list(args.overrides)
    path = args.config
    if path and "=" in path:  # `capsgan train --resume RUN a.b=1`: no config, only overrides
        overrides.insert(0, path)
        path = None
    if args.resume:
        run = Path(args.resume)
        if not (run / "config.yaml").is_file():
            raise UserError(f"--resume {run}: no config.yaml there; pass the folder of an earlier run")
        if path is not None:
            raise UserError("--resume RUN_DIR uses the run's own config.yaml; drop the CONFIG argument")
        path = run / "config.yaml"
        overrides += [f"train.run_dir={run}", "resume=auto"]
    elif path is None:
        raise UserError("capsgan train needs a CONFIG file (e.g. configs/debug.yaml) or --resume RUN_DIR")
    cfg = load_config(path, overrides)
    if args.dry_run:
        print(to_yaml(cfg), end="")
        return 0
    from capsgan_dist.train import PREEMPTED_EXIT_CODE, train

    summary = train(cfg, require_checkpoint=bool(args.resume))
    if summary["preempted"]:
        print(f"stopped at step {summary['step']} on a signal; checkpoint saved. Resume with: "
              f"capsgan train --resume {summary['run_dir']}", file=sys.stderr)
        return PREEMPTED_EXIT_CODE
    if os.environ.get("RANK", "0") == "0":
        print(f"run finished: {summary['run_dir']} (step {summary['step']})")
    return 0


def _sample(args: argparse.Namespace) -> int:
    from capsgan_dist.sample import sample_from_run

    out = sample_from_run(Path(args.run), args.n, Path(args.out), args.seed)
    print(f"wrote {out}")
    return 0


def _sweep(args: argparse.Namespace) -> int:
    from capsgan_dist.tune import sweep_command

    return sweep_command(args.config, args.overrides, args.address, args.resume)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="capsgan", description="CapsuleGAN training, distributed.")
    p.add_argument("--debug", action="store_true", help="show full tracebacks for bad input")
    sub = p.add_subparsers(dest="command", required=True)

    t = sub.add_parser("train", help="train a GAN from a YAML config")
    t.add_argument("config", nargs="?", help="YAML config, e.g. configs/debug.yaml")
    t.add_argument("overrides", nargs="*", help="dotted overrides, e.g. optim.lr_d=1e-4")
    t.add_argument("--dry-run", action="store_true", help="print the resolved config and exit")
    t.add_argument("--resume", metavar="RUN_DIR", help="continue a run from its newest valid checkpoint")
    t.set_defaults(fn=_train)

    s = sub.add_parser("sample", help="sample a grid from a run's newest checkpoint")
    s.add_argument("--run", required=True, help="run folder")
    s.add_argument("--n", type=int, default=64, help="number of images")
    s.add_argument("--out", default="grid.png", help="output PNG")
    s.add_argument("--seed", type=int, default=0, help="noise seed")
    s.set_defaults(fn=_sample)

    w = sub.add_parser("sweep", help="hyperparameter sweep with Ray Tune (docs/sweeps.md)")
    w.add_argument("config", help="sweep YAML, e.g. configs/sweep_mnist.yaml")
    w.add_argument("overrides", nargs="*", help="sweep keys (trials=4) or training keys (train.steps=200)")
    w.add_argument("--address", help="join a running Ray cluster (HOST:PORT or auto); default: start Ray here")
    w.add_argument("--resume", action="store_true", help="fail unless there is a sweep to resume "
                   "(rerunning a sweep resumes it anyway)")
    w.set_defaults(fn=_sweep)
    return p


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    # `capsgan train CONFIG a.b=1 --dry-run`: options may follow the overrides.
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra:
        takes_overrides = getattr(args, "command", None) in ("train", "sweep")
        if takes_overrides and all("=" in e or not e.startswith("-") for e in extra):
            args.overrides = list(args.overrides) + extra
        else:
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
    try:
        return args.fn(args)
    except UserError as e:
        if args.debug:
            raise
        print(f"capsgan: error: {e}", file=sys.stderr)
        return USER_ERROR_EXIT


if __name__ == "__main__":
    sys.exit(main())
