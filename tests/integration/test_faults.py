"""Faults with real processes: SIGKILL at random moments (also mid-checkpoint), preemption signals,
torchrun SIGTERM and elastic restarts, non-finite steps, W&B failing, and malicious checkpoints.

The 20 SIGKILL runs and the signal runs go through `fault_lane.py` (forked children of a process
that imported torch once) in two parallel lanes; see docs/reliability.md.
"""

from __future__ import annotations

import json
import math
import os
import random
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import DEBUG_CONFIG, REPO, cli_env, run_capsgan, wait_for
from safetensors.torch import load_file

HERE = Path(__file__).resolve().parent
HOOKS = HERE / "fault_hooks"
STEPS = 24
KEEP = 2
# Tiny and fast: 8 real batches an epoch (the 12 D updates cross an epoch), a checkpoint every 2 steps.
KILL_ARGS = ["train", str(DEBUG_CONFIG), "resume=auto", f"train.steps={STEPS}", "train.checkpoint_every=2",
             f"train.keep_checkpoints={KEEP}", "train.log_every=2", "train.progress=false",
             "data.synthetic_size=64", "model.latent_dim=16", "model.g_widths=[16,8,8,3]",
             "train.sample_every=12", "tracking.grid_every=12"]
N_KILLED_RUNS = 20


def _hook_env(faults: dict) -> dict[str, str]:
    return cli_env(PYTHONPATH=f"{HOOKS}{os.pathsep}{REPO}", CAPSGAN_FAULTS=json.dumps(faults))


def _final_state(run: Path, step: int = STEPS) -> dict[str, torch.Tensor]:
    """Weights and Adam state of G and D in the run's checkpoint at `step`."""
    ckpt = run / "checkpoints" / f"step_{step:07d}"
    out = {}
    for m in ("G", "D"):
        out.update({f"{m}.{k}": v for k, v in load_file(ckpt / m / "model.safetensors").items()})
        opt = torch.load(ckpt / m / "optimizer.bin", weights_only=True)
        for pid, st in opt["state"].items():
            out.update({f"{m}.opt.{pid}.{k}": v for k, v in st.items() if torch.is_tensor(v)})
    return out


def _rows(run: Path) -> list[dict]:
    """metrics.jsonl rows without the timing columns (throughput and CPU time are measurements)."""
    return [{k: v for k, v in json.loads(line).items() if k not in ("img_s", "cpu_s")}
            for line in (run / "metrics.jsonl").read_text().splitlines()]


def _assert_same_state(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor], what: str) -> None:
    assert a.keys() == b.keys(), what
    diff = [k for k in a if not torch.equal(a[k], b[k])]
    assert not diff, f"{what}: {len(diff)} tensors differ, e.g. {diff[:3]}"


def _kill_plan(seed: int) -> list[dict]:
    """Seeded kills of one run: the first alternates 'mid-checkpoint' and 'random time'; 0-2 more follow."""
    rng = random.Random(seed)

    def one(kind: str) -> dict:
        if kind == "tmp":
            return {"kind": "tmp", "skip": rng.randrange(6), "delay_ms": rng.choice([0, 0, 1, 2, 5]), "sig": "KILL"}
        return {"kind": "time", "frac": round(rng.uniform(0.05, 1.0), 3), "sig": "KILL"}

    first = one("tmp" if seed % 2 == 0 else "time")
    return [first] + [one(rng.choice(["tmp", "time"])) for _ in range(rng.choice([0, 0, 1, 2]))]


def _lane_plans(root: Path) -> list[dict]:
    """Two lanes: one trains with the alternate schedule, one with 'both'; 10 SIGKILL runs + signals each."""
    lanes = []
    for lane, schedule in enumerate(("alternate", "both")):
        jobs = [{"name": f"{schedule}-ref", "run_dir": str(root / f"{schedule}-ref"), "reference": True, "kills": []}]
        for i in range(lane, N_KILLED_RUNS, 2):
            jobs.append({"name": f"kill{i:02d}", "run_dir": str(root / f"kill{i:02d}"), "kills": _kill_plan(1000 + i)})
        # Preemption signals: sent once training is under way (after step 6's checkpoint).
        for sig in (("TERM", "USR1") if lane == 0 else ("INT",)):
            rng = random.Random(sig)
            jobs.append({"name": f"sig{sig}", "run_dir": str(root / f"sig{sig}"),
                         "kills": [{"kind": "after", "folder": "step_0000006", "delay_ms": rng.randrange(40),
                                    "sig": sig}]})
        lanes.append({"args": KILL_ARGS + [f"train.schedule={schedule}"], "steps": STEPS, "jobs": jobs})
    return lanes


@pytest.mark.slow
def test_sigkill_at_random_moments_then_resume_matches_uninterrupted_run(tmp_path):
    """20 runs SIGKILLed at seeded random moments (some mid-checkpoint) and resumed: bitwise equal to a clean run."""
    procs = []
    for n, plan in enumerate(_lane_plans(tmp_path)):
        (tmp_path / f"plan{n}.json").write_text(json.dumps(plan))
        cmd = [sys.executable, str(HERE / "fault_lane.py"), str(tmp_path / f"plan{n}.json"),
               str(tmp_path / f"res{n}.json")]
        procs.append(subprocess.Popen(cmd, env=cli_env(), cwd=REPO, stdout=subprocess.PIPE,
                                      stderr=subprocess.STDOUT, text=True))
    t0 = time.perf_counter()
    for p in procs:
        out, _ = p.communicate(timeout=900)
        assert p.returncode == 0, out[-3000:]
    wall = time.perf_counter() - t0
    results = [r for n in range(2) for r in json.loads((tmp_path / f"res{n}.json").read_text())]

    refs = {r["name"].split("-")[0]: Path(r["run_dir"]) for r in results if r["name"].endswith("-ref")}
    ref_state = {k: _final_state(v) for k, v in refs.items()}
    ref_rows = {k: _rows(v) for k, v in refs.items()}
    assert all(r["rc"] == 0 for r in results), [(r["name"], r["rc"], r["log"]) for r in results if r["rc"]]

    mid_checkpoint, cleaned, total_kills = 0, 0, 0
    for r in results:
        if r["name"].endswith("-ref"):
            continue
        run, log = Path(r["run_dir"]), Path(r["log"]).read_text()
        schedule = "both" if "train.schedule=both" in log.splitlines()[0] else "alternate"
        first = r["kills"][0]
        if r["name"].startswith("kill"):
            assert first["killed"], f"{r['name']}: finished before its SIGKILL ({first})"
            total_kills += sum(k["killed"] for k in r["kills"])
            for k in r["kills"]:
                if k["killed"] and any(n.startswith(".tmp-step_") for n in k["on_disk"]):
                    mid_checkpoint += 1
                    cleaned += 1
                    assert "capsgan: removed .tmp-step_" in log, f"{r['name']}: leftover not reported"
        else:  # a preemption signal: the run checkpoints and exits 75 by itself
            assert first["rc"] == 75, f"{r['name']}: exit {first['rc']}, see {r['log']}"
            assert "stopped at step" in log
        _assert_same_state(_final_state(run), ref_state[schedule], f"{r['name']} vs the uninterrupted run")
        if r["name"].startswith("kill"):  # resumed at even steps: the 2-step log windows line up exactly
            assert _rows(run) == ref_rows[schedule], f"{r['name']}: metrics.jsonl differs from the clean run's"
        else:  # resumed at an odd step: one window is shorter, but no row is lost or repeated
            assert [x["step"] for x in _rows(run)] == [x["step"] for x in ref_rows[schedule]]
        left = sorted(p.name for p in (run / "checkpoints").iterdir())
        assert left == [f"step_{s:07d}" for s in (STEPS - 2, STEPS)], f"{r['name']}: {left}"
    assert total_kills >= N_KILLED_RUNS
    # Enough kills landed while a checkpoint was being written for the test to mean something.
    assert mid_checkpoint >= 6, f"only {mid_checkpoint} kills hit a checkpoint write"
    print(f"\n{total_kills} SIGKILLs in {N_KILLED_RUNS} runs, {mid_checkpoint} mid-checkpoint, "
          f"{cleaned} leftovers cleaned; {wall:.0f} s for both lanes")


def _torchrun(*args: str, max_restarts: int = 0) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
            f"--max-restarts={max_restarts}", "-m", "capsgan_dist", *args]


def _metric_steps(run: Path) -> list[int]:
    rows = (run / "metrics.jsonl").read_text().splitlines() if (run / "metrics.jsonl").is_file() else []
    return [json.loads(line)["step"] for line in rows]


@pytest.mark.slow
def test_sigterm_to_torchrun_group_saves_checkpoint_and_resume_completes(tmp_path):
    """SIGTERM to torchrun and its 2 workers: both ranks stop at the same step with a checkpoint; resume ends."""
    run, steps = tmp_path / "run", 40
    args = ["train", str(DEBUG_CONFIG), f"train.run_dir={run}", f"train.steps={steps}", "train.checkpoint_every=1000",
            "train.log_every=2", "train.progress=false", "data.synthetic_size=128"]
    proc = subprocess.Popen(_torchrun(*args), env=cli_env(), cwd=REPO, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        wait_for(lambda: len(_metric_steps(run)) >= 1, 180, "the first metrics row", proc, poll=0.05)
        os.killpg(proc.pid, signal.SIGTERM)  # what a scheduler (or Ctrl-C on the group) does
        out, _ = proc.communicate(timeout=180)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    stopped = re.findall(r"stopped at step (\d+) on a signal; checkpoint saved. Resume with: (.*)", out)
    assert len(stopped) == 1, out[-3000:]  # said once, by rank 0
    # plain torchrun: no launcher command to give, so the same two processes under torchrun
    assert stopped[0][1] == f"torchrun --standalone --nproc_per_node=2 -m capsgan_dist train --resume {run}"
    step = int(stopped[0][0])
    assert step < steps
    # torchrun itself exits 1 here (its own SignalException), not the workers' 75: see docs/reliability.md.
    assert proc.returncode != 0
    ckpt = run / "checkpoints" / f"step_{step:07d}"
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == [ckpt.name]
    assert (ckpt / "G" / "random_states_1.pkl").is_file()  # written by rank 1: world size 2

    res = run_capsgan("train", "--resume", str(run), nproc=2, timeout=300)
    assert f"resuming {run} from {ckpt.name}" in res.stderr
    assert (run / "checkpoints" / f"step_{steps:07d}").is_dir()
    assert _metric_steps(run) == list(range(2, steps + 1, 2))  # no duplicates from the stopped part


def _environ(pid: int) -> dict[str, str]:
    """Environment of a running process."""
    items = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    return dict(i.decode(errors="replace").split("=", 1) for i in items if b"=" in i)


@pytest.mark.slow
def test_torchrun_elastic_restart_resumes_from_last_checkpoint(tmp_path):
    """One of 2 workers SIGKILLed; torchrun --max-restarts 1 restarts the group, which resumes and finishes."""
    run, steps = tmp_path / "run", 40
    args = ["train", str(DEBUG_CONFIG), "resume=auto", f"train.run_dir={run}", f"train.steps={steps}",
            "train.checkpoint_every=10", "train.log_every=2", "train.progress=false", "data.synthetic_size=128"]
    # torch 2.14's shared rendezvous store hands restarted gloo workers the old round's addresses
    # (pytorch#135712); a fresh store per round avoids it. docs/reliability.md says the same.
    env = cli_env(TORCH_DISABLE_SHARE_RDZV_TCP_STORE="1")
    proc = subprocess.Popen(_torchrun(*args, max_restarts=1), env=env, cwd=REPO, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        wait_for(lambda: (run / "checkpoints" / "step_0000010").is_dir(), 240, "the first checkpoint", proc,
                 poll=0.05)
        workers = Path(f"/proc/{proc.pid}/task/{proc.pid}/children").read_text().split()
        rank1 = [int(w) for w in workers if _environ(int(w)).get("RANK") == "1"]
        assert len(workers) == 2 and len(rank1) == 1, workers
        os.kill(rank1[0], signal.SIGKILL)
        out, _ = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 0, out[-4000:]
    assert "exitcode: -9" in out  # the agent saw the killed worker ...
    resumed = re.findall(r"resuming \S+ from step_(\d+)", out)
    assert len(resumed) == 1 and int(resumed[0]) >= 10, out[-3000:]  # ... and the new group resumed
    assert (run / "checkpoints" / f"step_{steps:07d}").is_dir()
    assert _metric_steps(run) == list(range(2, steps + 1, 2))


@pytest.mark.slow
def test_nonfinite_steps_stop_the_run_naming_step_and_last_good_checkpoint(tmp_path):
    """lr=1e30 makes every step after the first non-finite: skipped, counted, then a one-line stop (exit 3)."""
    run = tmp_path / "run"
    res = run_capsgan("train", str(DEBUG_CONFIG), f"train.run_dir={run}", "optim.lr_d=1e30", "optim.lr_g=1e30",
                      "train.max_nonfinite=3", "train.log_every=1", "train.checkpoint_every=1", "train.progress=false",
                      check=False, timeout=300)
    assert res.returncode == 3, res.stderr[-2000:]
    assert "Traceback" not in res.stderr
    last = res.stderr.strip().splitlines()[-1]
    assert re.match(r"capsgan: error: 3 non-finite steps in a row \(steps 2-4, train.max_nonfinite=3\); "
                    r"last good checkpoint: \S+step_0000003; lower optim.lr_d/optim.lr_g", last), last
    assert [r["skipped_steps"] for r in _rows(run)] == [0.0, 1.0, 2.0]  # steps 1-3 logged; 4 raised
    good = _final_state(run, 3)  # skipped steps left the weights finite
    assert all(torch.isfinite(v).all() for v in good.values())


@pytest.mark.slow
def test_isolated_nonfinite_steps_are_skipped_and_counted(tmp_path):
    """Two NaN D updates that are not in a row (max_nonfinite=2): both skipped and counted, the run ends."""
    run = tmp_path / "run"
    res = run_capsgan("train", str(DEBUG_CONFIG), f"train.run_dir={run}", "train.max_nonfinite=2",
                      "train.steps=10", "train.log_every=2", "train.progress=false",
                      env=_hook_env({"nan_d_updates": [1, 3]}), timeout=300)
    assert "run finished" in res.stdout
    rows = _rows(run)
    assert rows[-1]["skipped_steps"] == 2.0
    nan_rows = [r["step"] for r in rows if "gnorm_d" in r and math.isnan(r["gnorm_d"])]
    assert nan_rows == [4, 8]  # D updates 1 and 3 are steps 2 and 6 (alternate schedule), in these windows
    final = _final_state(run, 10)
    assert all(torch.isfinite(v).all() for v in final.values())


@pytest.mark.slow
@pytest.mark.parametrize("failure", ["init", 2], ids=["wandb-unreachable-at-start", "wandb-fails-mid-run"])
def test_wandb_failure_does_not_stop_training(tmp_path, failure):
    """W&B raising at init or from its 3rd log call on: training finishes and metrics.jsonl is complete."""
    run = tmp_path / "run"
    res = run_capsgan("train", str(DEBUG_CONFIG), f"train.run_dir={run}", "tracking.backend=wandb",
                      "train.progress=false", env=_hook_env({"wandb_fail": failure}), timeout=300)
    assert "run finished" in res.stdout
    assert ("W&B could not start" if failure == "init" else "W&B logging failed") in res.stderr
    assert "injected" in res.stderr
    assert [r["step"] for r in _rows(run)] == [5, 10, 15, 20]
    assert (run / "checkpoints" / "step_0000020").is_dir()


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory) -> Path:
    """A short finished run to tamper with."""
    run = tmp_path_factory.mktemp("finished") / "run"
    run_capsgan("train", str(DEBUG_CONFIG), f"train.run_dir={run}", "train.steps=4", "train.checkpoint_every=2",
                "train.progress=false", timeout=300)
    return run


class _Payload:
    """Pickles to code that creates a marker file when unpickled without weights_only."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (exec, (f"open({str(self.marker)!r}, 'w').write('pwned')",))


@pytest.mark.slow
@pytest.mark.parametrize("target", ["G/optimizer.bin", "D/random_states_0.pkl"])
def test_checkpoint_with_code_in_a_pickle_is_not_executed(finished_run, tmp_path, target):
    """A checkpoint file crafted to run code (manifest re-signed to match) is never unpickled as code."""
    import shutil

    run = tmp_path / "run"
    shutil.copytree(finished_run, run)
    ckpt = run / "checkpoints" / "step_0000004"
    marker = tmp_path / "pwned"
    torch.save({"state": {}, "param_groups": [], "x": _Payload(marker)}, ckpt / target)
    torch.load(ckpt / target, weights_only=False)  # the payload is live: a plain load runs it
    assert marker.read_text() == "pwned"
    marker.unlink()
    manifest = json.loads((ckpt / "manifest.json").read_text())
    import hashlib

    manifest["files"][target] = hashlib.sha256((ckpt / target).read_bytes()).hexdigest()
    (ckpt / "manifest.json").write_text(json.dumps(manifest))

    res = run_capsgan("train", "--resume", str(run), "train.steps=6", check=False, timeout=300)
    assert not marker.exists(), "the checkpoint's pickle ran code"
    if target.endswith("optimizer.bin"):
        assert res.returncode == 2 and "Traceback" not in res.stderr
        assert "refusing to load checkpoint" in res.stderr.strip().splitlines()[-1]
    else:  # Accelerate skips RNG states it cannot load safely; the run goes on (its noise is keyed, not RNG)
        assert res.returncode == 0, res.stderr[-2000:]


@pytest.mark.slow
def test_corrupt_newest_checkpoint_is_skipped_with_a_warning(finished_run, tmp_path):
    """A truncated newest checkpoint fails its manifest check: resume warns and uses the previous one."""
    import shutil

    run = tmp_path / "run"
    shutil.copytree(finished_run, run)
    f = run / "checkpoints" / "step_0000004" / "D" / "model.safetensors"
    f.write_bytes(f.read_bytes()[:-100])
    res = run_capsgan("train", "--resume", str(run), "train.steps=6", timeout=300)
    assert "D/model.safetensors fails its checksum (truncated or corrupt); using step_0000002" in res.stderr
    assert "capsgan: warning: skipping " in res.stderr and "latest_valid(" not in res.stderr  # one line
    assert f"resuming {run} from step_0000002" in res.stderr
    assert (run / "checkpoints" / "step_0000006").is_dir()
    # The broken step 4 was replaced when training reached step 4 again, and now verifies.
    from capsgan_dist import checkpoint

    assert checkpoint.verify(run / "checkpoints" / "step_0000004")["step"] == 4


@pytest.mark.slow
def test_full_disk_stops_cleanly_and_resume_works_once_space_is_freed(tmp_path):
    """A real 4 MB tmpfs fills at the 2nd checkpoint: exit 2 naming the last good one; after growing it, resume."""
    disk = tmp_path / "disk"
    disk.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(disk)], capture_output=True).returncode:
        pytest.skip("mounting a tmpfs (a real full disk) needs root")
    try:
        run = disk / "run"
        res = run_capsgan("train", str(DEBUG_CONFIG), f"train.run_dir={run}", "train.checkpoint_every=2",
                          "train.progress=false", check=False, timeout=300)
        assert res.returncode == 2 and "Traceback" not in res.stderr, res.stderr[-2000:]
        assert "No space left on device" in res.stderr and "(step_0000002)" in res.stderr
        assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["step_0000002"]
        subprocess.run(["mount", "-o", "remount,size=64m", str(disk)], check=True)  # space freed
        res = run_capsgan("train", "--resume", str(run), timeout=300)
        assert f"resuming {run} from step_0000002" in res.stderr
        assert (run / "checkpoints" / "step_0000020").is_dir()
        assert _metric_steps(run) == [5, 10, 15, 20]
    finally:
        subprocess.run(["umount", "-l", str(disk)], capture_output=True)
