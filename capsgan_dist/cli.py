"""`capsgan` command line: thin wrappers over the library. Bad input ends in one line and exit 2."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from capsgan_dist.errors import NonFiniteError, UserError, explain_os_error

USER_ERROR_EXIT = 2
NONFINITE_EXIT = 3  # training diverged: distinct from bad input (2) and preemption (75)


def _train(args: argparse.Namespace) -> int:
    from capsgan_dist.config import load_config, replace, run_name, to_yaml

    overrides = list(args.overrides)
    path = args.config
    if path and "=" in path:  # `capsgan train --resume RUN a.b=1`: no config, only overrides
        overrides.insert(0, path)
        path = None
    if args.resume:
        run = Path(args.resume)
        if not run.is_dir():
            raise UserError(f"--resume {run}: {'that is a file, not' if run.exists() else 'no such'} folder; "
                            "pass the folder of an earlier run (e.g. runs/debug-20260101-120000)")
        if not (run / "config.yaml").is_file():
            raise UserError(f"--resume {run}: no config.yaml there; pass the folder of an earlier run")
        if path is not None:
            raise UserError("--resume RUN_DIR uses the run's own config.yaml; drop the CONFIG argument")
        path = run / "config.yaml"
        overrides += [f"train.run_dir={run}", "resume=auto"]
    elif path is None:
        raise UserError("capsgan train needs a CONFIG file (e.g. configs/debug.yaml) or --resume RUN_DIR")
    cfg = load_config(path, overrides)
    if not args.resume and not any(o.startswith(("name=", "train.run_dir=")) for o in overrides):
        cfg = replace(cfg, name=run_name(cfg.name, overrides))  # runs-folder names tell model variants apart
    if args.dry_run:
        print(to_yaml(cfg), end="")
        return 0
    from capsgan_dist.train import PREEMPTED_EXIT_CODE, train

    summary = train(cfg, require_checkpoint=bool(args.resume))
    if summary["preempted"]:
        # Once, from rank 0, with what continues this launch: a launcher exports its own command
        # (CAPSGAN_RESUME_CMD with {run}); an empty one means the launcher says it itself.
        resume = os.environ.get("CAPSGAN_RESUME_CMD", _default_resume_command())
        if os.environ.get("RANK", "0") == "0" and resume:
            print(f"stopped at step {summary['step']} on a signal; checkpoint saved. Resume with: "
                  f"{resume.replace('{run}', summary['run_dir'])}", file=sys.stderr)
        return PREEMPTED_EXIT_CODE
    if os.environ.get("RANK", "0") == "0":
        line = f"run finished: {summary['run_dir']} (step {summary['step']})"
        if cfg.data.labels_per_class:  # a semi-supervised run ends with its D's test error
            from capsgan_dist.semisup import final_test_error_line

            line += f"; {final_test_error_line(Path(summary['run_dir'])) or 'no test error logged'}"
        if summary.get("tracking_note"):
            line += f"; {summary['tracking_note']}"
        print(line)
    return 0


def _default_resume_command() -> str:
    """What continues a run stopped on a signal when no launcher said so: the same process count."""
    world, local = int(os.environ.get("WORLD_SIZE", "1")), int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
    if world == 1:
        return "capsgan train --resume {run}"
    if world == local:  # one node (plain torchrun or accelerate launch)
        return f"torchrun --standalone --nproc_per_node={world} -m capsgan_dist train --resume {{run}}"
    return (f"on each of the {world // max(local, 1)} nodes, the same torchrun options as before with "
            "-m capsgan_dist train --resume {run}")


def _sample(args: argparse.Namespace) -> int:
    from capsgan_dist.sample import sample_from_run

    out = sample_from_run(Path(args.run), args.n, Path(args.out) if args.out else None, args.seed)
    print(f"wrote {out}")
    return 0


def _report(args: argparse.Namespace) -> int:
    from capsgan_dist.report import save_wandb_report, write_html

    out = write_html([Path(d) for d in args.runs], Path(args.out) if args.out else None, args.title)
    print(f"wrote {out}")
    if args.wandb:
        print(f"W&B report: {save_wandb_report([Path(d) for d in args.runs], args.title, args.entity, args.project)}")
    return 0


def _classifier_train(args: argparse.Namespace) -> int:
    from capsgan_dist.metrics.classifier import train_classifier

    arch_kwargs = None
    if args.routing != "dynamic":
        if args.arch != "capsnet":
            raise UserError(f"--routing {args.routing} needs --arch capsnet (LeNet has no capsules)")
        # em's capsules are 4x4 pose matrices: 16-D primary capsules (class capsules are 16-D already).
        arch_kwargs = {"routing": args.routing,
                       **({"primary_dim": 16, "em_schedule": args.em_schedule} if args.routing == "em" else {})}
    meta = train_classifier(Path(args.data), args.arch, Path(args.out), args.epochs, args.batch, args.lr,
                            args.seed, args.holdout, arch_kwargs, labels_per_class=args.labels_per_class,
                            split_seed=args.split_seed, size=args.size, channels=args.channels)
    arch = meta["arch"] + (f" ({args.routing} routing)" if args.arch == "capsnet" else "")
    print(f"wrote {args.out}: {arch} accuracy {meta['accuracy']:.4f} on {meta['dataset']['n_test']} "
          f"held-out images ({meta['dataset']['split']})")
    return 0


def _eval(args: argparse.Namespace) -> int:
    from capsgan_dist.metrics.evaluate import evaluate_run

    report = evaluate_run(Path(args.run), args.n, args.classifier, args.all,
                          inception_weights=args.inception_weights)
    for row in report["checkpoints"]:
        print(" ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in row.items()))
    print(f"wrote {Path(args.run) / 'eval.json'}")
    return 0


def _data_prepare(args: argparse.Namespace) -> int:
    from capsgan_dist.config import load_config
    from capsgan_dist.data.cache import CACHED_SOURCES, prepare, uses_cache

    cfg = load_config(args.config, args.overrides).data
    if not uses_cache(cfg):
        raise UserError(f"data.name={cfg.name}{' with data.cache=false' if not cfg.cache else ''} has no prepared "
                        f"cache: only {' and '.join(CACHED_SOURCES)} sources are prepared (data.cache=true)")
    cache = prepare(cfg, force=args.force)
    m = cache.manifest
    print(f"cache ready: {cache.path} ({m['count']} images, {'x'.join(map(str, m['shape'][1:]))}"
          f"{', classes ' + ', '.join(m['classes']) if m.get('classes') else ''})")
    return 0


def _compare(args: argparse.Namespace) -> int:
    from capsgan_dist.compare import compare, load_compare_config

    cc = load_compare_config(args.config, args.overrides)
    only = [n for n in (args.only or "").split(",") if n]
    agg = compare(cc, only=only)
    if agg is None:
        from capsgan_dist.train import PREEMPTED_EXIT_CODE

        return PREEMPTED_EXIT_CODE
    if only:
        print(f"trained {', '.join(only)}; run the same command without --only to write the report")
        return 0
    print(f"wrote in {cc.out_dir}: {', '.join(agg['written'])}")
    return 0


def _sweep(args: argparse.Namespace) -> int:
    from capsgan_dist.sweep.run import sweep_command

    return sweep_command(args.config, args.overrides, args.address, args.resume)


class _DefaultsHelp(argparse.HelpFormatter):
    """--help shows each option's default, unless it has none or its help already says it."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        no_default = action.default is None or action.default is False or action.default == argparse.SUPPRESS
        if action.option_strings and not no_default and "default" not in text:
            text += " (default: %(default)s)"
        return text


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="capsgan", description="CapsuleGAN training, distributed.",
                                formatter_class=_DefaultsHelp)
    p.add_argument("--debug", action="store_true", help="show full tracebacks for bad input")
    sub = p.add_subparsers(dest="command", required=True, parser_class=_subparser)

    t = sub.add_parser("train", help="train a GAN from a YAML config")
    t.add_argument("config", nargs="?", help="YAML config, e.g. configs/debug.yaml")
    t.add_argument("overrides", nargs="*", help="dotted overrides, e.g. optim.lr_d=1e-4")
    t.add_argument("--dry-run", action="store_true", help="print the resolved config and exit")
    t.add_argument("--resume", metavar="RUN_DIR", help="continue a run from its newest valid checkpoint")
    t.set_defaults(fn=_train)

    s = sub.add_parser("sample", help="sample a grid from a run's newest checkpoint")
    s.add_argument("--run", required=True, help="run folder")
    s.add_argument("--n", type=int, default=64, help="number of images")
    s.add_argument("--out", help="output PNG (default: RUN_DIR/samples/sample_<checkpoint>_seed<seed>.png)")
    s.add_argument("--seed", type=int, default=0, help="noise seed")
    s.set_defaults(fn=_sample)

    r = sub.add_parser("report", help="one self-contained HTML report of runs (and a W&B Report with --wandb)")
    r.add_argument("runs", nargs="+", metavar="RUN_DIR", help="run folders")
    r.add_argument("--out", help="output HTML file (default: RUN_DIR/report.html for one run; for several, "
                   "report.html in the folder that holds them all)")
    r.add_argument("--title", default="CapsuleGAN runs", help="report title")
    r.add_argument("--wandb", action="store_true", help="also create a W&B Report (needs a key and network)")
    r.add_argument("--entity", help="W&B entity for --wandb (default: the runs' tracking.entity)")
    r.add_argument("--project", help="W&B project for --wandb (default: the runs' tracking.project)")
    r.set_defaults(fn=_report)
    c = sub.add_parser("classifier", help="feature classifier for the metrics")
    csub = c.add_subparsers(dest="action", required=True, parser_class=_subparser)
    ct = csub.add_parser("train", help="train a classifier on a labelled IDX folder")
    ct.add_argument("--data", required=True, help="IDX folder with *-images-idx3-ubyte.gz and *-labels-idx1-ubyte.gz, "
                    "or a folder of images with one subfolder per class (then --size and --channels)")
    ct.add_argument("--size", type=int, default=None, help="image folders: the run's data.image_size")
    ct.add_argument("--channels", type=int, default=None, choices=[1, 3], help="image folders: the run's data.channels")
    ct.add_argument("--arch", default="lenet", choices=["lenet", "capsnet"], help="classifier architecture")
    ct.add_argument("--routing", default="dynamic", choices=["dynamic", "em", "attention"],
                    help="CapsNet routing between primary and class capsules (model.routing; docs/design.md)")
    ct.add_argument("--em-schedule", default="ramp", choices=["ramp", "authors"],
                    help="with --routing em: its inverse temperatures and cost scale (model.em_schedule)")
    ct.add_argument("--out", required=True, help="output .safetensors (a .json goes beside it)")
    ct.add_argument("--epochs", type=float, default=5, help="passes over the training images (fractions allowed)")
    ct.add_argument("--batch", type=int, default=64, help="batch size")
    ct.add_argument("--lr", type=float, default=1e-3, help="Adam learning rate")
    ct.add_argument("--seed", type=int, default=0, help="seed of weights, order and the held-out split")
    ct.add_argument("--holdout", type=int, default=2000, help="held-out images when the folder has one split")
    ct.add_argument("--split-seed", type=int, default=None, help="seed of that held-out split (default: --seed)")
    ct.add_argument("--labels-per-class", type=int, default=0,
                    help="train on this many images per class only, the labeled subset of a semi-supervised "
                         "run with the same --seed (its supervised-only baseline); 0: all")
    ct.set_defaults(fn=_classifier_train)

    e = sub.add_parser("eval", help="FID/KID/IS/precision/recall of a run's checkpoints -> eval.json")
    e.add_argument("--run", required=True, help="run folder")
    e.add_argument("--n", type=int, default=None, help="generated images (default: the run's eval.n, 10000)")
    features = e.add_mutually_exclusive_group()
    features.add_argument("--classifier", default=None, help="classifier file (default: the run's eval.classifier)")
    features.add_argument("--inception-weights", default=None, metavar="FILE",
                          help="score in the FID Inception-v3's features instead (published FIDs' space): "
                               "torch-fidelity's or pytorch-fid's .pth; never downloaded; needs torch-fidelity")
    e.add_argument("--all", action="store_true", help="every checkpoint, not only the newest")
    e.set_defaults(fn=_eval)

    d = sub.add_parser("data", help="prepare a data source once into the cache that training memory-maps")
    dsub = d.add_subparsers(dest="action", required=True, parser_class=_subparser)
    dp = dsub.add_parser("prepare", help="decode CONFIG's data (folder or idx) into its cache; no-op if valid")
    dp.add_argument("config", help="YAML config, e.g. configs/twemoji64_capsgan.yaml")
    dp.add_argument("overrides", nargs="*", help="dotted overrides, e.g. data.root=path/to/images")
    dp.add_argument("--force", action="store_true", help="prepare again even if the cache is valid")
    dp.set_defaults(fn=_data_prepare)

    m = sub.add_parser("compare", help="CapsuleGAN vs DCGAN over seeds: table, FID curves, sample grids")
    m.add_argument("config", help="compare YAML, e.g. configs/compare_mnist.yaml")
    m.add_argument("overrides", nargs="*", help="overrides, e.g. seeds=[0,1] steps=1000")
    m.add_argument("--only", metavar="MODEL[,MODEL]", help="train only these models' runs and write no report "
                   "(to split one compare over several processes; a run without --only writes the report)")
    m.set_defaults(fn=_compare)
    w = sub.add_parser("sweep", help="hyperparameter sweep with Ray Tune (docs/sweeps.md)")
    w.add_argument("config", help="sweep YAML, e.g. configs/sweep_mnist.yaml")
    w.add_argument("overrides", nargs="*", help="sweep keys (trials=4) or training keys (train.steps=200)")
    w.add_argument("--address", help="join a running Ray cluster (HOST:PORT or auto); default: start Ray here")
    w.add_argument("--resume", action="store_true", help="fail unless there is a sweep to resume "
                   "(rerunning a sweep resumes it anyway)")
    w.set_defaults(fn=_sweep)
    return p


def _subparser(**kwargs) -> argparse.ArgumentParser:
    """Every subcommand (and sub-subcommand) shows its defaults in --help too."""
    kwargs.setdefault("formatter_class", _DefaultsHelp)
    return argparse.ArgumentParser(**kwargs)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    # `capsgan train CONFIG a.b=1 --dry-run`: options may follow the overrides.
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra:
        takes_overrides = getattr(args, "command", None) in ("train", "sweep", "compare", "data")
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
    except NonFiniteError as e:
        if args.debug:
            raise
        print(f"capsgan: error: {e}", file=sys.stderr)
        return NONFINITE_EXIT
    except OSError as e:  # a disk filling up or turning read-only mid-run is the user's to fix
        msg = explain_os_error(e)
        if args.debug or msg is None:
            raise
        print(f"capsgan: error: {msg}", file=sys.stderr)
        return USER_ERROR_EXIT


if __name__ == "__main__":
    sys.exit(main())
