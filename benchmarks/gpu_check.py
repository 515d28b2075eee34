"""The GPU checks in one run: numerics, CUDA graphs, the two GPU targets, the step grid.

NOT RUN YET: no GPU was available. Run it on a GPU machine through benchmarks/gpu_check.sh (one
command, ~8 minutes); it writes three files to $OUT (default ./gpu_out): gpu_check.md (the
report to paste into docs/benchmarks.md, with every step.py table and nvidia-smi in it),
gpu_check.json (every raw number) and, from the shell wrapper, gpu_check.log.

Sections, most important first, each under its own time budget so a slow one cannot starve the rest:
  1. environment (GPU, torch, which optional packages exist: DeepSpeed is expected to be absent)
  2. fused vs plain routing on the GPU: relative error of outputs and gradients (fp32 < 1e-5,
     bf16 < 1e-2), MNIST sizes
  3. perf.cuda_graphs: 30 iterations eager vs GraphedSteps from the same state -> parameter drift
  4. target "full CapsuleGAN iteration at batch 32 (16 real + 16 fake, then G) < 1.5 ms": the
     loop's own iteration (benchmarks/step.py `loop`: batch fetch, device noise, D and G steps,
     statistics, stop-flag check), eager and with GraphedSteps, beside the bare steps (`gan`,
     eager and captured whole), CapsuleGAN and DCGAN, fp32 and bf16; and the loader (`data`)
  5. target "D step at batch 1024, bf16, >= 250k img/s": benchmarks/step.py d, d_ref, d_einsum,
     without and with torch.compile
  6. larger images: the capsule D (conv1 strided, bounded primary grid), the paper's conv D and
     Radford et al.'s DCGAN D, D step at 64 and 128 px (RGB), batch 256, bf16
  7. the step grid: d, d_ref, d_einsum, g, gan, dcgan, loop x batch 32/256/1024 x fp32/bf16
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
OUT = Path(os.environ.get("OUT") or REPO / "gpu_out")
OUT.mkdir(parents=True, exist_ok=True)
REPORT, RESULTS = OUT / "gpu_check.md", {}
SCRATCH = Path(tempfile.mkdtemp(prefix="gpu_check_"))  # step.py's own files: merged into REPORT/RESULTS
# --smoke: the same code on CPU with tiny sizes and no graph capture, to catch mistakes before a
# GPU run spends its time on them. Its numbers mean nothing.
SMOKE = "--smoke" in sys.argv
DEV = "cpu" if SMOKE else "cuda"
CONFIG = REPO / "configs" / ("debug.yaml" if SMOKE else "mnist_capsgan.yaml")
T_START = time.perf_counter()
BUDGET_S = float(os.environ.get("GPU_CHECK_BUDGET_S", "500"))
ONLY = [x for x in os.environ.get("GPU_CHECK_ONLY", "").split(",") if x]  # e.g. "4,5" for a rerun


def say(text: str) -> None:
    """Append to the report as we go: a timeout still leaves everything finished before it."""
    print(text, flush=True)
    with REPORT.open("a") as f:
        f.write(text + "\n")
    (OUT / "gpu_check.json").write_text(json.dumps(RESULTS, indent=1, default=str))


def run_section(name: str, share: float, fn) -> None:
    """Run one section unless the budget is spent; record a failure instead of stopping."""
    left = BUDGET_S - (time.perf_counter() - T_START)
    if ONLY and name.split(".")[0] not in ONLY:
        return
    say(f"\n### {name}")
    if left < share * 0.5:
        say(f"SKIPPED: {left:.0f} s of the budget left")
        return
    t0 = time.perf_counter()
    try:
        fn()
    except Exception:  # noqa: BLE001 (the report must carry on to the next section)
        say("FAILED:\n```\n" + traceback.format_exc()[-3000:] + "```")
    say(f"({time.perf_counter() - t0:.0f} s)")


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.double() - b.double()).norm() / b.double().norm()).item()


def main() -> None:
    REPORT.write_text(f"# GPU check ({time.strftime('%Y-%m-%d %H:%M')})\n")
    if not (SMOKE or torch.cuda.is_available()):
        say("no CUDA device: nothing to check (--smoke runs the plumbing on CPU)")
        return

    def env():
        import importlib.util

        gpu = None if SMOKE else (torch.cuda.get_device_name(0), torch.cuda.get_device_capability(0))
        info = {"gpu": gpu, "torch": torch.__version__, "cuda": torch.version.cuda, "smoke": SMOKE,
                "present": {m: importlib.util.find_spec(m) is not None
                            for m in ("deepspeed", "ray", "wandb", "torchvision", "omegaconf", "accelerate")}}
        RESULTS["env"] = info
        say("```\n" + json.dumps(info, indent=1) + "\n```")
        try:
            smi = subprocess.run(["nvidia-smi"], capture_output=True, text=True, timeout=30).stdout
        except (OSError, subprocess.SubprocessError) as e:
            smi = f"nvidia-smi: {e}"
        say("```\n" + smi.strip() + "\n```")

    def numerics():
        from capsgan_dist.models.capsules import dynamic_routing, squash
        from capsgan_dist.models.routing import routed_capsules

        torch.backends.cuda.matmul.allow_tf32 = False  # fp32 means fp32 here
        out = {}
        B = 4 if SMOKE else 64
        for seed in range(3):
            g = torch.Generator(device=DEV).manual_seed(seed)
            u = squash(torch.randn(B, 1568, 8, device=DEV, generator=g)).requires_grad_()
            w = (4.0 * 10 / (1568 * 16) ** 0.5 * torch.randn(1568, 10, 16, 8, device=DEV, generator=g))
            w.requires_grad_()
            v_p = dynamic_routing(torch.einsum("ijed,bid->bije", w, u), 3, "all")
            go = torch.randn_like(v_p)
            gp = torch.autograd.grad(v_p, (u, w), go)
            v_f = routed_capsules(u, w, 3, "all")
            gf = torch.autograd.grad(v_f, (u, w), go)
            with torch.autocast(DEV, dtype=torch.bfloat16):
                v_b = routed_capsules(u, w, 3, "all")
            gb = torch.autograd.grad(v_b, (u, w), go)
            out[seed] = {"fp32": [rel(v_f, v_p), rel(gf[0], gp[0]), rel(gf[1], gp[1])],
                         "bf16": [rel(v_b, v_p), rel(gb[0], gp[0]), rel(gb[1], gp[1])]}
        worst32 = max(max(v["fp32"]) for v in out.values())
        worst16 = max(max(v["bf16"]) for v in out.values())
        RESULTS["routing_numerics"] = out
        say(f"worst relative error (output, d/du, d/dW over 3 seeds): fp32 {worst32:.2e} "
            f"({'PASS' if worst32 < 1e-5 else 'FAIL'} < 1e-5), bf16 {worst16:.2e} "
            f"({'PASS' if worst16 < 1e-2 else 'FAIL'} < 1e-2)")

    from accelerate import Accelerator

    from capsgan_dist.dist import Dist

    acc = Accelerator(cpu=SMOKE)  # one process state for all sections; precision is set per case below
    dist = Dist(acc, acc)

    def gan_setup(overrides: list[str]):
        from capsgan_dist.config import load_config
        from capsgan_dist.models import build_discriminator, build_generator

        cfg = load_config(CONFIG, ["data.name=synthetic", *overrides])
        torch.manual_seed(0)
        G, D = build_generator(cfg).to(DEV), build_discriminator(cfg).to(DEV)
        return cfg, G, D

    def eager_iteration(cfg, G, D, opt_g, opt_d, real, z_d, z_g, bf16: bool):
        from capsgan_dist import losses

        ac = torch.autocast(DEV, dtype=torch.bfloat16) if bf16 else torch.autocast(DEV, enabled=False)
        with torch.no_grad(), ac:
            fake = G(z_d)
        with ac:
            logits = D(torch.cat([real, fake.to(real.dtype)]))
        n = len(real)
        loss = losses.d_loss(logits[:n].float(), logits[n:].float(), cfg.loss)
        loss.backward()
        opt_d.step()
        opt_d.zero_grad(set_to_none=True)
        D.requires_grad_(False)
        with ac:
            lg = D(G(z_g))
        losses.g_loss(lg.float(), cfg.loss).backward()
        opt_g.step()
        opt_g.zero_grad(set_to_none=True)
        D.requires_grad_(True)

    def graphs_correct():
        import copy

        from capsgan_dist.cuda_graphs import GraphedSteps
        from capsgan_dist.dist import noise
        from capsgan_dist.optim import build_adam

        cfg, G, D = gan_setup([])
        G2, D2 = copy.deepcopy(G), copy.deepcopy(D)
        t, dim = cfg.train, cfg.model.latent_dim
        reals = [torch.rand(t.batch_real, 1, 28, 28, device=DEV) * 2 - 1 for _ in range(30)]
        opt_g = build_adam(G.parameters(), 2e-4, (0.5, 0.999), fused=True)  # as train.py builds them
        opt_d = build_adam(D.parameters(), 2e-4, (0.5, 0.999), fused=True)
        graphed = GraphedSteps(cfg, dist, G, D, opt_g, opt_d, iter(reals), clip=float("inf"), capture=not SMOKE)
        opt_g2 = torch.optim.Adam(G2.parameters(), 2e-4, betas=(0.5, 0.999))
        opt_d2 = torch.optim.Adam(D2.parameters(), 2e-4, betas=(0.5, 0.999))
        for i in range(30):
            graphed.d_step(2 * i)
            graphed.g_step(2 * i + 1)
            z_d = noise(t.batch_fake, dim, DEV, cfg.seed, 2 * i, 0, 1)
            z_g = noise(t.batch_real + t.batch_fake, dim, DEV, cfg.seed, 2 * i + 1, 0, 2)
            eager_iteration(cfg, G2, D2, opt_g2, opt_d2, reals[i], z_d, z_g, False)
        drift = max(rel(a, b) for a, b in zip(list(G.parameters()) + list(D.parameters()),
                                               list(G2.parameters()) + list(D2.parameters())))
        RESULTS["graphs_drift"] = drift
        say(f"max relative parameter difference after 30 iterations, graphed vs eager: {drift:.2e} "
            f"({'PASS' if drift < 1e-3 else 'CHECK'}: expected at float-rounding level)")

    def step_py(args: list[str], name: str, timeout: float, smoke_args: list[str] | None = None) -> list[dict]:
        """Run benchmarks/step.py in a subprocess; its table goes into the report, its rows into RESULTS."""
        out, raw = SCRATCH / f"{name}.md", SCRATCH / f"{name}.json"
        cmd = [sys.executable, str(REPO / "benchmarks" / "step.py"), "--device", DEV, "--inprocess",
               "--out", str(out), "--json", str(raw), *args]
        if SMOKE:  # the plumbing only: tiny cases on the CPU
            cmd = [*cmd[:5], "--out", str(out), "--json", str(raw), "--config", str(CONFIG), "--batches", "4",
                   "--dtypes", "fp32", "--quick", *(smoke_args or ["--cases", "d"])]
        def short(text: str) -> str:  # paths relative to the repository, scratch files by name
            return text.replace(str(SCRATCH) + "/", "").replace(str(REPO) + "/", "")

        say("`" + short(" ".join(cmd[1:])) + "`")
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=REPO)
        say(short(out.read_text()) if out.is_file() else "no table:\n```\n" + proc.stderr[-2000:] + "\n```")
        rows = json.loads(raw.read_text())["rows"] if raw.is_file() else []
        RESULTS[name] = rows
        return rows

    def iteration_time():
        rows = []
        for disc, config in (("capsule", "mnist_capsgan.yaml"), ("conv", "mnist_dcgan.yaml")):
            rows += [{**r, "D": disc} for r in step_py(
                ["--config", str(REPO / "configs" / config), "--cases", "gan", "loop", "--batches", "32",
                 "--dtypes", "fp32", "bf16", "--graphs", "both", "--no-memory"],
                f"iteration_{disc}", 120, ["--cases", "gan", "loop"])]
        say("\nThe loop's own iteration at batch 32 (`loop` rows; target < 1.5 ms with graphs):\n\n"
            "| D | precision | graphs | ms/iteration (median) | < 1.5 ms? |\n|---|---|---|---|---|")
        for r in rows:
            if r["case"] == "loop" and "wall_s" in r:
                ms = statistics.median(r["wall_s"]) * 1e3
                say(f"| {r['D']} | {r['dtype']} | {'yes' if r['graphs'] else 'no'} | {ms:.2f} | "
                    f"{'yes' if ms < 1.5 else 'no'} |")
        step_py(["--cases", "data", "data_ref", "--batches", "1024", "--dtypes", "fp32", "--no-memory"],
                "data_path", 60, ["--cases", "data", "data_ref"])

    def d_step_1024():
        step_py(["--cases", "d", "d_ref", "d_einsum", "--batches", "1024", "--dtypes", "bf16"], "d1024", 120)
        step_py(["--cases", "d", "d_einsum", "--batches", "1024", "--dtypes", "bf16", "--compile", "on",
                 "--no-memory"], "d1024_compile", 200)

    def sizes():
        for size in (64, 128):
            step_py(["--cases", "d", "d_conv", "d_dcgan", "--batches", "256", "--dtypes", "bf16", "--no-memory",
                     "--set", f"data.image_size={size}", "data.channels=3"], f"d_{size}px", 80,
                    ["--cases", "d", "d_conv", "--set", f"data.image_size={size}", "data.channels=3"])

    def grid():
        left = BUDGET_S - (time.perf_counter() - T_START)
        step_py(["--batches", "32", "256", "1024", "--dtypes", "fp32", "bf16", "--repeats", "10"], "step_grid",
                max(60.0, left - 10), ["--cases", "d", "gan", "loop"])

    run_section("1. Environment", 5, env)
    run_section("2. Fused vs plain routing on the GPU", 20, numerics)
    run_section("3. perf.cuda_graphs trains like eager", 60, graphs_correct)
    run_section("4. The loop's iteration at batch 32 (16+16, then G): eager vs CUDA graphs; the loader", 90,
                iteration_time)
    run_section("5. D step at batch 1024, bf16 (target >= 250k img/s)", 150, d_step_1024)
    run_section("6. Larger images: D steps at 64 and 128 px", 100, sizes)
    run_section("7. Step grid", 120, grid)
    say(f"\ntotal {time.perf_counter() - T_START:.0f} s")


if __name__ == "__main__":
    main()
