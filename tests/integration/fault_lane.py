"""Kill/resume driver for test_faults.py: runs `capsgan train` in forked children and SIGKILLs them.

Usage: python fault_lane.py PLAN.json RESULT.json

Forking from a parent that has already imported torch, Accelerate and matplotlib lets each child
start in milliseconds instead of ~4 s, so 20 killed-and-resumed runs fit in a test's budget. Each
child is still a real process: SIGKILL stops it wherever it is, and the next child knows only what
is on disk. The parent never runs a torch op (forking after OpenMP threads started is unsafe).

A plan is {"args": [...], "steps": N, "jobs": [{"name", "run_dir", "reference": bool, "kills": [...]}]}; each
kill is {"kind": "time", "frac": f} (at f times the reference run's time to its last checkpoint),
{"kind": "tmp", "skip": k, "delay_ms": d} (d ms after the (k+1)-th `.tmp-step_*` folder appears,
i.e. in the middle of writing a checkpoint) or {"kind": "after", "folder": F, "delay_ms": d}; "sig"
names the signal (default KILL). After its kills, every job runs once more to the end.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time
import traceback
from pathlib import Path

POLL_S = 0.0005


def _spawn(cli, args: list[str], log: Path) -> int:
    """Fork a child that runs `capsgan ARGS` with stdout and stderr appended to `log`."""
    pid = os.fork()
    if pid:
        return pid
    rc = 1
    try:
        fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        os.dup2(fd, 1)
        os.dup2(fd, 2)
        print(f"--- child {os.getpid()}: capsgan {' '.join(args)}", flush=True)
        rc = cli.main(args)
    except SystemExit as e:
        rc = e.code if isinstance(e.code, int) else 1
    except BaseException:
        traceback.print_exc()
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(rc)


def _tmp_folders(ckpts: Path) -> list[str]:
    try:
        return sorted(e.name for e in os.scandir(ckpts) if e.name.startswith(".tmp-step_"))
    except FileNotFoundError:
        return []


def _listing(ckpts: Path) -> list[str]:
    try:
        return sorted(os.listdir(ckpts))
    except FileNotFoundError:
        return []


def _exited(pid: int) -> int | None:
    """The exit code if the child has ended (reaping it), else None."""
    done, status = os.waitpid(pid, os.WNOHANG)
    return os.waitstatus_to_exitcode(status) if done else None


def _kill_when(pid: int, kill: dict, ckpts: Path, t_ref: float, last: Path) -> dict:
    """Wait for the kill moment, signal the child and describe how it ended and what was on disk.

    A random-time kill also fires when the run's last checkpoint `last` appears first (the
    machine got faster than during the reference run): that kills it while it finishes up.
    """
    t0 = time.perf_counter()
    seen: set[str] = set()
    deadline = t0 + (kill["frac"] * t_ref if kill["kind"] == "time" else 1e9)
    while True:
        rc = _exited(pid)
        if rc is not None:  # finished (or crashed) before the kill moment
            return {**kill, "killed": False, "rc": rc, "t": time.perf_counter() - t0}
        if kill["kind"] == "tmp":
            seen.update(_tmp_folders(ckpts))
            if len(seen) > kill["skip"]:
                break
        elif kill["kind"] == "after":
            if (ckpts / kill["folder"]).exists():
                break
        elif time.perf_counter() >= deadline or last.exists():
            break
        time.sleep(POLL_S)
    time.sleep(kill.get("delay_ms", 0) / 1000)
    sig = getattr(signal, f"SIG{kill.get('sig', 'KILL')}")
    os.kill(pid, sig)
    _, status = os.waitpid(pid, 0)
    rc = os.waitstatus_to_exitcode(status)
    return {**kill, "killed": rc == -signal.SIGKILL if sig == signal.SIGKILL else rc == 75, "rc": rc,
            "t": time.perf_counter() - t0, "on_disk": _listing(ckpts)}


def run_job(cli, base_args: list[str], steps: int, job: dict, t_ref: float) -> dict:
    """Run one job: its kills, then a run to the end; returns what happened."""
    run_dir = Path(job["run_dir"])
    ckpts = run_dir / "checkpoints"
    args = [*base_args, f"train.run_dir={run_dir}"]
    log = run_dir.with_suffix(".log")
    out: dict = {"name": job["name"], "run_dir": str(run_dir), "log": str(log), "kills": []}
    t0 = time.perf_counter()
    for kill in job["kills"]:
        pid = _spawn(cli, args, log)
        out["kills"].append(_kill_when(pid, kill, ckpts, t_ref, ckpts / f"step_{steps:07d}"))
    pid = _spawn(cli, args, log)
    if job.get("reference"):  # time to its last checkpoint: the scale of the random kill times
        final = ckpts / f"step_{steps:07d}"
        while not final.exists() and _exited_peek(pid):
            time.sleep(POLL_S)
        out["t_last_checkpoint"] = time.perf_counter() - t0
    _, status = os.waitpid(pid, 0)
    out["rc"] = os.waitstatus_to_exitcode(status)
    out["wall_s"] = time.perf_counter() - t0
    return out


def _exited_peek(pid: int) -> bool:
    """True while the child is alive (without reaping it)."""
    try:
        return os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is None
    except ChildProcessError:
        return False


def main() -> None:
    plan = json.loads(Path(sys.argv[1]).read_text())
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot  # noqa: F401  (warm the imports every child needs)
    import torch  # noqa: F401

    import capsgan_dist.train  # noqa: F401
    from capsgan_dist import cli

    results, t_ref = [], None
    for job in plan["jobs"]:
        res = run_job(cli, plan["args"], plan["steps"], job, t_ref or 0.0)
        if job.get("reference"):
            t_ref = res["t_last_checkpoint"]
        results.append(res)
        Path(sys.argv[2]).write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
