"""Throughput and peak memory of the training steps, against a plain reference, on this machine.

    python benchmarks/step.py                      # CPU quick: batch 32, fp32+bf16, no compile
    python benchmarks/step.py --batches 32 256 1024 --dtypes fp32 bf16 --compile both   # full grid
    python benchmarks/step.py --device cuda --graphs both    # on a GPU (see benchmarks/gpu_check.sh)

Cases (timed round-robin in one subprocess per batch/dtype/compile group, so load from other
processes hits them alike; peak memory in one subprocess per case):
  d        D step alone (forward, backward, Adam) of the library's capsule D (fused routing)
  d_ref    the same step with benchmarks/reference_capsule.py (same weights): the baseline
  d_einsum the same step with perf.routing=einsum (the library's plain autograd routing)
  d_em     the D step with model.routing=em (matrix capsules; model.primary_dim=16, EM routing_iters times)
  d_attention  the D step with model.routing=attention (Efficient-CapsNet self-attention, one pass)
  d_conv   the D step of the paper's conv D reading (model.discriminator=conv)
  d_dcgan  the D step of Radford et al.'s DCGAN D (model.discriminator=dcgan; one batch-norm forward)
--set KEY=VALUE ... overrides the config of every model case (not loop/data), e.g. --set data.image_size=64
data.channels=3; benchmarks/sizes.py runs the D and G cases at each image size this way.
  g        G step: G forward, frozen capsule D forward, backward into G, Adam on G
  gan      one CapsuleGAN iteration as train.py runs it: D on B/2 real + B/2 fake, then G on B
  dcgan    the same iteration with the DCGAN conv discriminator (the paper's baseline)
Generator cases (not in the default list; name them with --cases):
  gen_dcgan    the DCGAN generator alone: forward on B latents, backward of a fixed linear loss, Adam
  gen_caps     the same for the capsule generator (model.generator=capsule)
  capsg_capsd  the `gan` iteration with the capsule generator (capsule G + capsule D)
  capsg_convd  the `dcgan` iteration with the capsule generator (capsule G + conv D)
    python benchmarks/step.py --cases gen_dcgan gen_caps dcgan gan capsg_capsd capsg_convd --dtypes fp32
Images per step: B for every case (an iteration counts its batch B once).
  loop     the loop's own iteration: batch fetch, noise, D and G steps, bookkeeping (loop_cases.py)
  data     the training loader alone, images per second at batch B (loop_cases.py; not by default)
  data_ref the DataLoader it replaced, the same images (loop_cases.py; not by default)
Images per step: B for every case (an iteration counts its batch B once); 20 B for data cases.
FLOPs per image: from capsgan_dist.models.forward_flops on the einsum model (the same count for
every implementation, so faster means more FLOP/s): D step 3 F_D, G step 3 F_G + 2 F_D (D only
passes gradients back), G alone 3 F_G, iteration F_G/2 + 3 F_D + 3 F_G + 2 F_D. The capsule G's
routing is elementwise work the counter does not see: its FLOP/s are a lower bound. The ceiling is a large matmul
in the same dtype, same process settings.
Peak memory: the growth of resident memory (Linux VmHWM, reset through /proc/self/clear_refs after
the warm-up steps) during the timed steps, per image, measured in a second subprocess run with
MALLOC_MMAP_THRESHOLD_=65536 so that freed tensors leave RSS at once. It is the step's transient
memory (activations, routing intermediates, gradient buffers re-made each step); parameters,
Adam moments and inputs live before the reset and are not in it. On CUDA: torch.cuda.max_memory_allocated.
Results are printed as a table and appended to docs/benchmarks.md (--no-write to skip).
The "vs ref" columns compare a case with its reference at the same settings: d and d_einsum with
d_ref, data with data_ref, loop with gan (the bare steps: below 1x is what the loop adds).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DEFAULT_CASES = ("d", "d_ref", "d_einsum", "g", "gan", "dcgan", "loop")
CASES = (*DEFAULT_CASES, "d_em", "d_attention", "d_conv", "d_dcgan", "gen_dcgan", "gen_caps", "capsg_capsd",
         "capsg_convd", "data", "data_ref")
CAPSULE_G_CASES = ("gen_caps", "capsg_capsd", "capsg_convd")
CONV_D_CASES = ("dcgan", "capsg_convd")
# The D step with another routing kind (model.routing): the overrides that make it. em's 4x4 pose
# matrices need 16-D primary capsules; the config's other sizes stay.
ROUTING_CASES = {"d_em": ["model.routing=em", "model.primary_dim=16"], "d_attention": ["model.routing=attention"],
                 # and the D step of the conv baselines, to set the capsule D's cost beside at any image size
                 "d_conv": ["model.discriminator=conv"], "d_dcgan": ["model.discriminator=dcgan"]}
DATA_CASES = ("data", "data_ref")
REFERENCE = {"d": "d_ref", "d_einsum": "d_ref", "data": "data_ref", "loop": "gan"}  # for the "vs ref" columns


# ----------------------------------------------------------------------------- child: one case
def _autocast(device: str, dtype: str):
    import contextlib

    import torch

    if dtype == "bf16":
        return torch.autocast(device, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def build_case(case: str, batch: int, device: str, dtype: str, compile_: bool, config: str | None,
               graphs: bool = False, overrides: list[str] | tuple[str, ...] = ()):
    """(step function, FLOPs per step, images per step, optimizers) for one case; `overrides` (--set) apply
    to every model the case builds."""
    import torch

    sys.path.insert(0, str(REPO))
    from benchmarks import loop_cases
    from benchmarks.reference_capsule import reference_from
    from capsgan_dist import losses
    from capsgan_dist.config import load_config as _load_config
    from capsgan_dist.models import build_discriminator, build_generator, forward_flops

    def load_config(path, ovs):  # every config of the case gets the --set overrides first
        return _load_config(path, [*overrides, *ovs])

    config = REPO / config if config else None  # recorded relative to the repository root
    if case in DATA_CASES:
        step, images = loop_cases.data_case(case, config, batch, device, dtype)
        return step, 0, images, ()
    cfg = load_config(config, [])
    dev = torch.device(device)
    torch.manual_seed(0)
    c, s, dim = cfg.data.channels, cfg.data.image_size, cfg.model.latent_dim
    betas = (cfg.optim.beta1, cfg.optim.beta2)
    cap = dict(capturable=True) if device == "cuda" else {}

    def flops_of(model, example) -> int:
        return forward_flops(model, example)

    x1 = torch.zeros(2, c, s, s)
    z1 = torch.zeros(2, dim)
    cfg_e = load_config(config, ["perf.routing=einsum"])
    cfg_conv = load_config(config, ["model.discriminator=conv"])
    G = build_generator(load_config(config, ["model.generator=capsule"]) if case in CAPSULE_G_CASES else cfg)
    f_g = flops_of(G, z1)
    if case in CONV_D_CASES:
        D = build_discriminator(cfg_conv)
        f_d = flops_of(D, x1)
    elif case in ROUTING_CASES:  # one implementation each: its own FLOPs (matmuls, convs, einsums)
        D = build_discriminator(load_config(config, ROUTING_CASES[case]))
        f_d = flops_of(D, x1)
    else:
        D = build_discriminator(cfg)
        f_d = flops_of(build_discriminator(cfg_e), x1)
    if case == "loop":  # the library builds its own models, optimizers and data
        step, images, opts = loop_cases.loop_case(config, batch, device, dtype, compile_, graphs)
        half = batch // 2
        return step, f_g * (batch - half) + 3 * f_d * batch + (3 * f_g + 2 * f_d) * batch, images, opts
    if case == "d_ref":
        D = reference_from(cfg, D)
    elif case == "d_einsum":
        D_e = build_discriminator(cfg_e)
        D_e.load_state_dict(D.state_dict())
        D = D_e
    G, D = G.to(dev), D.to(dev)
    if compile_:
        G.compile()
        D.compile()
    opt_d = torch.optim.Adam(D.parameters(), cfg.optim.lr_d, betas=betas, **cap)
    opt_g = torch.optim.Adam(G.parameters(), cfg.optim.lr_g, betas=betas, **cap)
    ac = lambda: _autocast(device, dtype)  # noqa: E731
    half = batch // 2

    if case in ("d", "d_ref", "d_einsum", *ROUTING_CASES):
        x = torch.randn(batch, c, s, s, device=dev)

        def step():
            with ac():
                logits = D(x)
            loss = losses.d_loss(logits[:half], logits[half:], cfg.loss)
            loss.backward()
            opt_d.step()
            opt_d.zero_grad(set_to_none=True)
            return loss

        return step, 3 * f_d * batch, batch, (opt_d,)

    if case in ("gen_dcgan", "gen_caps"):  # G alone: the generator's own cost, no D
        z = torch.randn(batch, dim, device=dev)
        target = torch.randn(batch, c, s, s, device=dev)

        def step():
            with ac():
                x = G(z)
            loss = (x.float() * target).mean()
            loss.backward()
            opt_g.step()
            opt_g.zero_grad(set_to_none=True)
            return loss

        return step, 3 * f_g * batch, batch, (opt_g,)

    if case == "g":
        z = torch.randn(batch, dim, device=dev)
        D.requires_grad_(False)

        def step():
            with ac():
                logits = D(G(z))
            loss = losses.g_loss(logits, cfg.loss)
            loss.backward()
            opt_g.step()
            opt_g.zero_grad(set_to_none=True)
            return loss

        return step, (3 * f_g + 2 * f_d) * batch, batch, (opt_g,)

    real = torch.rand(half, c, s, s, device=dev) * 2 - 1
    z_d = torch.randn(batch - half, dim, device=dev)
    z_g = torch.randn(batch, dim, device=dev)

    def step():  # train.py's D step then G step
        with torch.no_grad(), ac():
            fake = G(z_d)
        with ac():
            logits = D(torch.cat([real, fake.to(real.dtype)]))
        loss_d = losses.d_loss(logits[:half], logits[half:], cfg.loss)
        loss_d.backward()
        opt_d.step()
        opt_d.zero_grad(set_to_none=True)
        D.requires_grad_(False)
        with ac():
            logits = D(G(z_g))
        loss_g = losses.g_loss(logits, cfg.loss)
        loss_g.backward()
        opt_g.step()
        opt_g.zero_grad(set_to_none=True)
        D.requires_grad_(True)
        return loss_g

    flops = (f_g * (batch - half) + 3 * f_d * batch + (3 * f_g + 2 * f_d) * batch)
    return step, flops, batch, (opt_d, opt_g)


def _graphed(step, device: str):
    """Capture `step` once as a CUDA graph (3 warm-up steps on a side stream) and return a replayer."""
    import torch

    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(3):
            step()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        step()
    return graph.replay


def _rss_kb(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


def run_child(spec: dict) -> dict:
    """Memory of one case (spec["case"]), or timings of several cases (spec["cases"]) interleaved.

    The cases of a group are timed round-robin in one process (d, d_ref, d, d_ref, ...), so a
    neighbour that loads the machine for a while slows all of them alike.
    """
    import torch

    if spec["threads"]:
        torch.set_num_threads(spec["threads"])
    device = spec["device"]
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    cases = [spec["case"]] if spec["memory"] else spec["cases"]
    built, out = {}, {}
    for case in cases:
        try:
            if spec.get("graphs") and case in DATA_CASES:
                raise ValueError("the loader is not captured in graphs (it copies from the host)")
            step, flops, images, _ = build_case(case, spec["batch"], device, spec["dtype"], spec["compile"],
                                                spec["config"], bool(spec.get("graphs")), spec.get("overrides", ()))
            if spec.get("graphs") and case != "loop":  # the loop case replays GraphedSteps itself
                step = _graphed(step, device)
            for _ in range(spec["warmup"]):
                step()
            sync()
            built[case] = (step, flops, images)
        except Exception as e:  # noqa: BLE001 (one failing case must not lose the others)
            out[case] = {"error": f"{type(e).__name__}: {str(e).splitlines()[0][:160] if str(e) else ''}"}
    if spec["memory"]:
        if spec["case"] not in built:
            return out[spec["case"]]
        step, _, images = built[spec["case"]]
        if device == "cuda":
            torch.cuda.reset_peak_memory_stats()
            base = torch.cuda.memory_allocated()
            step()
            sync()
            return {"peak_bytes": torch.cuda.max_memory_allocated() - base, "images": images}
        Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM to the current RSS
        base = _rss_kb("VmRSS")
        step()
        return {"peak_bytes": (_rss_kb("VmHWM") - base) * 1024, "images": images}
    per = spec["steps_per_sample"]
    for case, (_, flops, images) in built.items():
        out[case] = {"wall_s": [], "cpu_s": [], "flops": flops, "images": images, "threads": torch.get_num_threads()}
    for _ in range(spec["repeats"]):
        for case, (step, _, _) in built.items():
            sync()
            t0, c0 = time.perf_counter(), time.process_time()
            for _ in range(per):
                step()
            sync()
            out[case]["wall_s"].append((time.perf_counter() - t0) / per)
            out[case]["cpu_s"].append((time.process_time() - c0) / per)
    return {"cases": out}


def run_ceiling(spec: dict) -> dict:
    """Achievable matmul FLOP/s on this device in fp32 and bf16 (median of 3)."""
    import torch

    if spec["threads"]:
        torch.set_num_threads(spec["threads"])
    dev, n = spec["device"], 8192 if spec["device"] == "cuda" else 2048
    out = {}
    for name, dt in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
        a, b = torch.randn(n, n, device=dev, dtype=dt), torch.randn(n, n, device=dev, dtype=dt)
        sync = torch.cuda.synchronize if dev == "cuda" else (lambda: None)
        reps = 20 if dev == "cuda" else 1
        a @ b
        sync()
        times, cpu = [], []
        for _ in range(3):
            t0, c0 = time.perf_counter(), time.process_time()
            for _ in range(reps):
                a @ b
            sync()
            times.append((time.perf_counter() - t0) / reps)
            cpu.append((time.process_time() - c0) / reps)
        out[name] = 2 * n**3 / statistics.median(times)
        out[name + "_cpu"] = 2 * n**3 / statistics.median(cpu)  # per CPU-second, all threads
    return out


# ----------------------------------------------------------------------------- parent: the grid
def child(spec: dict, timeout: float, env_extra: dict | None = None) -> dict:
    env = dict(os.environ, PYTHONPATH=str(REPO), **(env_extra or {}))
    proc = subprocess.run([sys.executable, __file__, "--child", json.dumps(spec)], capture_output=True,
                          text=True, timeout=timeout, env=env, cwd=REPO)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    if proc.returncode != 0 or not lines:
        return {"error": (proc.stderr.strip().splitlines() or ["no output"])[-1][:200]}
    return json.loads(lines[-1])


def _in_process(spec: dict) -> dict:
    """run_child in this process; a failure becomes an error row instead of ending the grid."""
    try:
        return run_child(spec)
    except Exception as e:  # noqa: BLE001 (report and go on: one failing case must not lose the others)
        return {"error": f"{type(e).__name__}: {str(e).splitlines()[0][:180] if str(e) else ''}"}
    finally:
        import gc

        import torch

        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()


def machine(device: str, threads: int | None) -> str:
    import torch

    if device == "cuda":
        what = f"{torch.cuda.get_device_name(0)}, CUDA {torch.version.cuda}"
    else:
        model = next((ln.split(":", 1)[1].strip() for ln in Path("/proc/cpuinfo").read_text().splitlines()
                      if ln.startswith("model name")), platform.processor())
        what = f"{model}, {os.cpu_count()} logical CPUs, {threads or torch.get_num_threads()} torch threads"
    return f"{what}; torch {torch.__version__}; {platform.node()}"


def loadavg() -> str:
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "n/a"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--child", help=argparse.SUPPRESS)
    p.add_argument("--device", default=None, help="cpu | cuda (default: cuda if available)")
    p.add_argument("--config", default="configs/mnist_capsgan.yaml", help="model sizes (relative: to the cwd)")
    p.add_argument("--cases", nargs="+", default=list(DEFAULT_CASES), choices=CASES)
    p.add_argument("--set", nargs="+", default=[], metavar="KEY=VALUE",
                   help="config overrides for every case, e.g. data.image_size=64 data.channels=3")
    p.add_argument("--batches", nargs="+", type=int, default=None, help="default: 32 on CPU, 32 256 1024 on CUDA")
    p.add_argument("--dtypes", nargs="+", default=["fp32", "bf16"], choices=["fp32", "bf16"])
    p.add_argument("--compile", default="off", choices=["off", "on", "both"], help="torch.compile the models")
    p.add_argument("--graphs", default="off", choices=["off", "on", "both"], help="CUDA-graph the step (CUDA)")
    p.add_argument("--repeats", type=int, default=None, help="timed samples per case (default 5 CPU, 20 CUDA)")
    p.add_argument("--warmup", type=int, default=None, help="untimed steps first (default 2, 5 with compile)")
    p.add_argument("--threads", type=int, default=None, help="torch threads in each case (default: torch's)")
    p.add_argument("--quick", action="store_true", help="3 repeats, 1 warm-up, no memory runs")
    p.add_argument("--no-memory", action="store_true", help="skip the peak-memory subprocesses")
    p.add_argument("--timeout", type=float, default=1800, help="seconds per case subprocess")
    p.add_argument("--inprocess", action="store_true",
                   help="run every case in this process (CUDA: memory from torch.cuda stats; CPU: no memory)")
    p.add_argument("--out", default=str(REPO / "docs" / "benchmarks.md"))
    p.add_argument("--no-write", action="store_true", help="print only")
    p.add_argument("--json", help="also write all raw numbers here")
    args = p.parse_args(argv)
    if args.child:
        spec = json.loads(args.child)
        print(json.dumps(run_ceiling(spec) if spec.get("ceiling") else run_child(spec)))
        return 0
    # Children run in the repository root; results record the config relative to it (no machine paths).
    config = Path(args.config).resolve()
    args.config = os.path.relpath(config, REPO) if config.is_relative_to(REPO) else str(config)

    import torch

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        p.error("--device cuda: no CUDA device here")
    if args.graphs != "off" and device != "cuda":
        p.error("--graphs needs --device cuda")
    batches = args.batches or ([32] if device == "cpu" else [32, 256, 1024])
    repeats = args.repeats or (3 if args.quick else 5 if device == "cpu" else 20)
    flags = {"off": [False], "on": [True], "both": [False, True]}
    started, load0 = datetime.now().strftime("%Y-%m-%d %H:%M"), loadavg()
    ceiling = child({"ceiling": True, "device": device, "threads": args.threads}, args.timeout)
    rows = []
    for batch in batches:
        for dtype in args.dtypes:
            for comp in flags[args.compile]:
                for graphs in flags[args.graphs]:
                    if graphs and comp:
                        continue  # one at a time: torch.compile's own cudagraphs are another story
                    warm = args.warmup if args.warmup is not None else (5 if comp else 1 if args.quick else 2)
                    spec = {"cases": args.cases, "batch": batch, "dtype": dtype, "compile": comp, "graphs": graphs,
                            "device": device, "config": args.config, "overrides": args.set,
                            "threads": args.threads, "warmup": warm,
                            "repeats": repeats, "steps_per_sample": 1 if device == "cpu" else 10, "memory": False}
                    timed = _in_process(spec) if args.inprocess else child(spec, args.timeout)
                    want_mem = not (args.quick or args.no_memory or (args.inprocess and device == "cpu"))
                    for case in args.cases:
                        r = timed.get("cases", {}).get(case, {"error": timed.get("error", "no result")})
                        mem = {**spec, "case": case, "memory": True, "warmup": max(1, warm - 1)}
                        if want_mem and "error" not in r and case not in DATA_CASES:
                            m = (_in_process(mem) if args.inprocess else
                                 child(mem, args.timeout, {"MALLOC_MMAP_THRESHOLD_": "65536"}))
                            r["peak_bytes"] = m.get("peak_bytes")
                        rows.append({**spec, "case": case, **r})
                        print(_row_text(rows[-1], ceiling), flush=True)
    table = markdown(rows, ceiling, device)
    print("\n" + table)
    if args.json:
        Path(args.json).write_text(json.dumps({"ceiling": ceiling, "rows": rows}, indent=1))
    if not args.no_write:
        cmd = "python benchmarks/step.py " + " ".join(argv if argv is not None else sys.argv[1:])
        gf = {k: v / 1e9 for k, v in ceiling.items()}
        size = 2048 if device == "cpu" else 8192
        head = (f"\n## {started}: {device}\n\n- Command: `{cmd.strip()}`\n- Machine: {machine(device, args.threads)}\n"
                f"- Load average (1/5/15 min) before: {load0}, after: {loadavg()}\n"
                f"- Matmul ceiling ({size}^2): fp32 {gf.get('fp32', 0):.1f} GFLOP/s wall, "
                f"{gf.get('fp32_cpu', 0):.1f} per CPU-s; bf16 {gf.get('bf16', 0):.1f} GFLOP/s wall, "
                f"{gf.get('bf16_cpu', 0):.1f} per CPU-s\n\n")
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        with out.open("a") as f:
            f.write(head + table + "\n")
        print(f"appended to {out}")
    return 0


def _row_text(r: dict, ceiling: dict) -> str:
    tag = f"{r['case']:9s} B={r['batch']:<5d} {r['dtype']} compile={int(r['compile'])} graphs={int(r['graphs'])}"
    if "error" in r:
        return f"{tag}  ERROR {r['error']}"
    med = statistics.median(r["wall_s"])
    return f"{tag}  {r['images'] / med:9.1f} img/s  {med * 1e3:9.2f} ms/step"


def markdown(rows: list[dict], ceiling: dict, device: str = "cpu") -> str:
    """One row per case, with speed-ups over d_ref and d_einsum at the same settings.

    On CPU the FLOP rate is per CPU-second (process time of all threads), against the matmul's
    rate per CPU-second: a shared machine slows the wall clock, much less the CPU time.
    """
    def key(r):
        return (r["batch"], r["dtype"], r["compile"], r["graphs"])

    basis = "cpu_s" if device == "cpu" else "wall_s"
    med = {(key(r), r["case"], b): statistics.median(r[b]) for r in rows if "wall_s" in r for b in ("wall_s", "cpu_s")}
    images_of = {(key(r), r["case"]): r["images"] for r in rows if "wall_s" in r}
    per = "CPU-s" if device == "cpu" else "s"
    lines = ["| case | batch | dtype | compile | graphs | img/s | ms/step (median) | min | CPU ms/step | "
             f"vs ref (wall) | vs ref (CPU) | vs d_einsum (CPU) | GFLOP per {per} | % of matmul | peak MB/img |",
             "|" + "---|" * 15]
    yes = {True: "yes", False: "no"}
    for r in rows:
        cells = [r["case"], str(r["batch"]), r["dtype"], yes[r["compile"]], yes[r["graphs"]]]
        if "error" in r:
            lines.append("| " + " | ".join(cells + [f"error: {r['error']}"] + [""] * 9) + " |")
            continue
        m, c = statistics.median(r["wall_s"]), statistics.median(r["cpu_s"])
        k, ref = key(r), REFERENCE.get(r["case"], "")

        def ratio(case: str, b: str, mine: float) -> str:
            # Speed relative to `case` per image (data cases time 20 batches a step).
            other = med.get((k, case, b))  # noqa: B023 (used at once, inside this iteration)
            other_images = images_of.get((k, case))  # noqa: B023
            if not other or not other_images:
                return ""
            return f"{(other / other_images) / (mine / r['images']):.2f}x"  # noqa: B023

        rate = r["flops"] / statistics.median(r[basis])
        top = ceiling.get(r["dtype"] + ("_cpu" if device == "cpu" else ""))
        peak = r.get("peak_bytes")
        cells += [f"{r['images'] / m:.1f}", f"{m * 1e3:.2f}", f"{min(r['wall_s']) * 1e3:.2f}", f"{c * 1e3:.1f}",
                  ratio(ref, "wall_s", m), ratio(ref, "cpu_s", c),
                  ratio("d_einsum", "cpu_s", c) if r["case"] == "d" else "",
                  f"{rate / 1e9:.1f}" if rate else "", f"{100 * rate / top:.0f}%" if top and rate else "",
                  f"{peak / r['images'] / 2**20:.2f}" if peak is not None else ""]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
