"""`capsgan sweep` with real Ray on this machine: ASHA, a crashing trial, kill + resume, 2-worker trials.

The first test starts its own embedded Ray (the default); the others share one Ray head started
here and join it with `--address`, which saves a Ray start-up each and tests cluster mode.
"""

from __future__ import annotations

import contextlib
import csv
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import yaml
from conftest import CAPSULE_G_DEBUG, DEBUG_CONFIG, REPO, cli_env, run_capsgan, wait_for
from safetensors.torch import load_file

from capsgan_dist.sweep.config import load_sweep_config
from capsgan_dist.sweep.run import _scheduler

ray = pytest.importorskip("ray", reason="ray[tune] is an optional dependency (pip install -e .[tune])")
pytestmark = pytest.mark.slow

# Every trial: the tiny synthetic debug config, local tracking only.
BASE = ["train.steps=20", "train.log_every=5", "train.checkpoint_every=10", "train.sample_every=10",
        "tracking.backend=local"]
NO_DEFAULT_SPACE = {"model.routing_iters": None, "optim.lr_d": None, "optim.lr_g": None}


def write_sweep(tmp: Path, name: str, **fields) -> Path:
    """A sweep YAML in `tmp` over configs/debug.yaml; `fields` override the defaults below."""
    spec = {"name": name, "base": str(DEBUG_CONFIG), "overrides": BASE, "out_dir": str(tmp / "sweeps"),
            "trials": 1, "cpus_per_trial": 1, "max_failures": 1, "scheduler": {"name": "fifo"}, **fields}
    path = tmp / f"{name}.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def table(sweep_dir: Path) -> list[dict]:
    with open(sweep_dir / "results.csv") as f:
        return list(csv.DictReader(f))


def trial_config(row: dict) -> dict:
    return yaml.safe_load((Path(row["run_dir"]) / "config.yaml").read_text())


def attempts(row: dict) -> list[dict]:
    return [json.loads(line) for line in (Path(row["run_dir"]) / "attempts.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def ray_address():
    """One Ray head (2 CPUs) in this process for the tests that join a cluster with --address."""
    os.environ.update(RAY_USAGE_STATS_ENABLED="0", RAY_AUTH_MODE="disabled")
    tmp = Path(tempfile.mkdtemp(prefix="cgray-", dir="/tmp"))  # short: Ray's unix sockets live below it
    ctx = ray.init(num_cpus=2, include_dashboard=False, _temp_dir=str(tmp), log_to_driver=False)
    yield ctx.address_info["gcs_address"]
    ray.shutdown()
    shutil.rmtree(tmp, ignore_errors=True)


def recorded_status(sweep_dir: Path) -> dict[str, str]:
    """Trial id -> status in Tune's newest saved experiment state (what a restore starts from)."""
    states = sorted((sweep_dir / "tune").glob("experiment_state-*.json"))
    try:
        trials = json.loads(states[-1].read_text())["trial_data"] if states else []
        return {t["trial_id"]: t["status"] for t in (json.loads(data) for data, _meta in trials)}
    except (OSError, ValueError, KeyError):  # caught mid-write: ask again
        return {}


def test_asha_sweep_writes_sorted_table_and_runnable_best_config(tmp_path):
    sweep = write_sweep(tmp_path, "asha", trials=1, scheduler={"name": "asha", "grace_period": 10},
                        space={"model.routing_iters": {"grid": [1, 2, 3, 4]}},  # x1 sample = 4 trials
                        overrides=[*BASE, "tracking.backend=wandb"])  # offline (cli_env)
    t0 = time.monotonic()
    proc = run_capsgan("sweep", str(sweep), timeout=240)  # embedded Ray, the default
    wall = time.monotonic() - t0
    print(f"4-trial ASHA sweep: {wall:.1f} s")
    sweep_dir = tmp_path / "sweeps" / "asha"
    rows = table(sweep_dir)
    assert len(rows) == 4 and "sweep finished" in proc.stdout
    # Trials that finish or that ASHA stops are normal outcomes: no traceback from W&B's exit or Ray's
    # SIGTERM handler, and no hint to run a TensorBoard that is not installed.
    out = proc.stdout + proc.stderr
    for noise in ("Traceback", "ConnectionResetError", "SystemExit", "tensorboard --logdir", "wandb: ",
                  "(run_trial pid="):  # trials' own output stays in Ray's logs unless trial_output=true
        assert noise not in out, f"{noise!r} in the sweep's output:\n{out[-3000:]}"
    assert all(list((Path(r["run_dir"]) / "wandb").glob("offline-run-*")) for r in rows)
    assert {r["status"] for r in rows} <= {"done", "stopped early"}
    # Sorted by the metric (lower is better), and the trials really ran different settings.
    gaps = [float(r["proxy_d_gap"]) for r in rows]
    assert gaps == sorted(gaps)
    configs = [trial_config(r) for r in rows]
    assert sorted(c["model"]["routing_iters"] for c in configs) == [1, 2, 3, 4]
    assert len({c["optim"]["lr_d"] for c in configs}) == 4 and len({c["optim"]["lr_g"] for c in configs}) == 4
    assert all(1e-5 <= c["optim"]["lr_d"] <= 1e-3 for c in configs)
    assert {c["tracking"]["group"] for c in configs} == {"asha"}  # one W&B group per sweep
    for r, c in zip(rows, configs):
        assert float(r["optim.lr_d"]) == pytest.approx(c["optim"]["lr_d"])
        assert int(r["model.routing_iters"]) == c["model"]["routing_iters"]
    # The best config is the best trial's that ran all 20 steps, and `capsgan train` accepts it.
    top = configs[next(i for i, r in enumerate(rows) if r["status"] == "done")]
    best = yaml.safe_load((sweep_dir / "best_config.yaml").read_text())
    assert best["model"]["routing_iters"] == top["model"]["routing_iters"]
    assert best["optim"]["lr_d"] == top["optim"]["lr_d"] and best["train"]["run_dir"] is None
    dry = run_capsgan("train", str(sweep_dir / "best_config.yaml"), "--dry-run")
    assert yaml.safe_load(dry.stdout)["optim"]["lr_g"] == top["optim"]["lr_g"]
    assert "| rank | trial | status | proxy_d_gap |" in (sweep_dir / "results.md").read_text()
    # Ray's files stayed with the sweep (through a short link: socket paths are length-limited).
    assert any(p.name.startswith("session_") for p in (sweep_dir / "ray").iterdir())
    if (sweep_dir / "ray").is_symlink():  # the short /tmp folder outlives tmp_path otherwise
        shutil.rmtree((sweep_dir / "ray").resolve(), ignore_errors=True)


def test_crashing_trial_is_retried_then_reported_failed(tmp_path, ray_address):
    # batch 4096 > the 512 synthetic images: train() raises in that trial, on every attempt.
    sweep = write_sweep(tmp_path, "crash", max_failures=1,
                        space={**NO_DEFAULT_SPACE, "train.batch_real": {"grid": [8, 4096]}})
    proc = run_capsgan("sweep", str(sweep), "--address", ray_address, timeout=240)
    rows = {int(r["train.batch_real"]): r for r in table(tmp_path / "sweeps" / "crash")}
    assert rows[4096]["status"] == "failed" and "fewer than one global batch" in rows[4096]["error"]
    assert len(attempts(rows[4096])) == 2  # the first try and max_failures=1 retry
    assert rows[8]["status"] == "done" and len(attempts(rows[8])) == 1
    assert "1 done, 1 failed" in proc.stdout
    best = yaml.safe_load((tmp_path / "sweeps" / "crash" / "best_config.yaml").read_text())
    assert best["train"]["batch_real"] == 8


def test_sweep_chooses_between_the_dcgan_and_the_capsule_generator(tmp_path, ray_address):
    # The searched key picks the generator; the capsule G's debug sizes ride along in the overrides.
    sweep = write_sweep(tmp_path, "gen", overrides=[*BASE, *CAPSULE_G_DEBUG[1:]],
                        space={**NO_DEFAULT_SPACE, "model.generator": {"grid": ["dcgan", "capsule"]}})
    run_capsgan("sweep", str(sweep), "--address", ray_address, timeout=240)
    rows = {r["model.generator"]: r for r in table(tmp_path / "sweeps" / "gen")}
    assert set(rows) == {"dcgan", "capsule"} and {r["status"] for r in rows.values()} == {"done"}
    for name, r in rows.items():
        assert trial_config(r)["model"]["generator"] == name
        weights = load_file(Path(r["run_dir"]) / "checkpoints" / "step_0000020" / "G" / "model.safetensors")
        assert ("weight" in weights) == (name == "capsule")  # the routing weight W_ij: that G was built


def test_trials_are_ranked_by_classifier_fid_when_they_evaluate(tmp_path, ray_address, mnist_classifier):
    # The default `metric: auto` picks the classifier FID because the trials set eval.classifier.
    sweep = write_sweep(tmp_path, "fid", scheduler={"name": "asha", "grace_period": 10},
                        overrides=[*BASE, "eval.every=10", "eval.n=64", f"eval.classifier={mnist_classifier}"],
                        space={**NO_DEFAULT_SPACE, "model.routing_iters": {"grid": [1, 3]}})
    proc = run_capsgan("sweep", str(sweep), "--address", ray_address, timeout=240)
    assert "sweep metric: eval/fid (min)" in proc.stderr
    sweep_dir = tmp_path / "sweeps" / "fid"
    rows = table(sweep_dir)
    assert len(rows) == 2 and "| rank | trial | status | eval/fid |" in (sweep_dir / "results.md").read_text()
    fids = [float(r["eval/fid"]) for r in rows]
    assert fids == sorted(fids) and all(f > 0 for f in fids)
    for r in rows:  # each trial's reported FID is its own evaluation's, at the step it reached
        evals = [json.loads(line) for line in (Path(r["run_dir"]) / "metrics.jsonl").read_text().splitlines()
                 if "eval/fid" in line]
        assert float(r["eval/fid"]) == pytest.approx(evals[-1]["eval/fid"]) and evals[-1]["step"] == int(r["step"])


def test_killed_sweep_resumes_where_it_stopped(tmp_path, ray_address):
    # A short trial that finishes early and a long one that is mid-way when the driver is killed.
    sweep = write_sweep(tmp_path, "kill", space={**NO_DEFAULT_SPACE, "train.steps": {"grid": [10, 240]}})
    sweep_dir = tmp_path / "sweeps" / "kill"
    cmd = [sys.executable, "-m", "capsgan_dist", "sweep", str(sweep), "--address", ray_address]
    log = open(tmp_path / "first.log", "w")
    # Tune saves its experiment state every ~10 s or more by default; every 2 s keeps this test short.
    env = cli_env(TUNE_GLOBAL_CHECKPOINT_S="2")
    driver = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=REPO)

    def runs() -> dict[int, Path]:
        out = {}
        for cfg in sweep_dir.glob("tune/trial_*/kill-*/config.yaml"):
            out[yaml.safe_load(cfg.read_text())["train"]["steps"]] = cfg.parent
        return out

    def long_checkpointed() -> bool:
        r = runs()
        return 240 in r and any((r[240] / "checkpoints").glob("step_*")) and (r[240] / "attempts.jsonl").is_file()

    def short_finished() -> bool:  # as recorded in the experiment state a restore starts from
        r = runs()
        return 10 in r and recorded_status(sweep_dir).get(r[10].parent.name.removeprefix("trial_")) == "TERMINATED"

    trainer = None
    try:
        # Freeze the long trial's process (it trains in the process that wrote its attempt record)
        # as soon as it has a checkpoint, so it cannot reach its last step however fast this
        # machine is, then wait for the short trial to be recorded as finished and kill the driver.
        wait_for(long_checkpointed, 180, "the long trial to checkpoint", driver, poll=0.05)
        trainer = json.loads((runs()[240] / "attempts.jsonl").read_text().splitlines()[0])["pid"]
        os.kill(trainer, signal.SIGSTOP)
        wait_for(short_finished, 180, "the short trial to be recorded as finished", driver)
        driver.send_signal(signal.SIGKILL)
        driver.wait(timeout=30)
    finally:
        if driver.poll() is None:
            driver.kill()
        if trainer is not None:  # what the Ray job's end does to its actors, without waiting for it
            with contextlib.suppress(ProcessLookupError):
                os.kill(trainer, signal.SIGKILL)
        log.close()
    long_run = runs()[240]
    killed_at = int(sorted((long_run / "checkpoints").glob("step_*"))[-1].name.split("_")[1])
    assert killed_at < 240
    # The killed driver's trial actors die with its job; wait until their CPUs are free again.
    wait_for(lambda: ray.available_resources().get("CPU", 0) >= 2, 60, "the killed sweep's trials to stop")

    proc = run_capsgan("sweep", str(sweep), "--address", ray_address, timeout=240, env=env)
    assert "resuming sweep" in proc.stderr
    rows = {int(trial_config(r)["train"]["steps"]): r for r in table(sweep_dir)}
    assert len(rows) == 2 and {r["status"] for r in rows.values()} == {"done"}  # no new trials drawn
    assert len(attempts(rows[10])) == 1  # the finished trial was not run again
    tries = attempts(rows[240])
    assert len(tries) == 2 and tries[1]["resume_step"] >= killed_at  # continued from its checkpoint
    steps = [json.loads(line)["step"] for line in (long_run / "metrics.jsonl").read_text().splitlines()]
    assert steps == sorted(set(steps)) and steps[-1] == 240  # one continuous history, no rows twice


def test_two_worker_trial_trains_with_world_size_2(tmp_path, ray_address):
    # 2 workers x 0.5 logical CPU (+ the trial's own 0.01) fit the 2-CPU head.
    sweep = write_sweep(tmp_path, "ddp", workers_per_trial=2, cpus_per_trial=0.5,
                        space={"model.routing_iters": None})
    run_capsgan("sweep", str(sweep), "--address", ray_address, timeout=240)
    (row,) = table(tmp_path / "sweeps" / "ddp")
    summary = json.loads((Path(row["run_dir"]) / "summary.json").read_text())
    assert summary["world_size"] == 2 and summary["step"] == 20
    assert row["status"] == "done" and int(row["world_size"]) == 2 and int(row["step"]) == 20
    assert float(row["proxy_d_gap"]) >= 0  # rank 0's metrics reached Tune through TuneReportCallback


@pytest.mark.parametrize("synch", [False, True])
def test_pbt_scheduler_gets_the_synch_setting(tmp_path, synch):
    sweep = load_sweep_config(write_sweep(tmp_path, "pbt", scheduler={"name": "pbt", "synch": synch}))
    scheduler = _scheduler(sweep, steps=20)
    assert isinstance(scheduler, ray.tune.schedulers.PopulationBasedTraining) and scheduler._synch is synch


def test_pbt_clones_a_checkpoint_and_continues_with_perturbed_learning_rates(tmp_path, ray_address):
    # Two trials: at each 10-step checkpoint the worse one clones the better one. Synchronous PBT:
    # asynchronous PBT clones nothing when one trial reaches every checkpoint before the other starts.
    sweep = write_sweep(tmp_path, "pbt", trials=2, overrides=[*BASE, "train.steps=40"],
                        space={"model.routing_iters": None},
                        scheduler={"name": "pbt", "perturbation_interval": 10, "quantile_fraction": 0.5,
                                   "resample_probability": 0.0, "synch": True})
    run_capsgan("sweep", str(sweep), "--address", ray_address, timeout=300)
    rows = table(tmp_path / "sweeps" / "pbt")
    assert len(rows) == 2 and {r["status"] for r in rows} == {"done"}
    runs = {r["trial"]: Path(r["run_dir"]) for r in rows}

    def metrics(run: Path) -> dict[int, dict]:
        return {m["step"]: m for m in map(json.loads, (run / "metrics.jsonl").read_text().splitlines())}

    clones = {tid: [a["cloned_from"] for a in attempts({"run_dir": run}) if a["cloned_from"]]
              for tid, run in runs.items()}
    assert any(clones.values()), "PBT never cloned a trial"
    for tid, origins in clones.items():
        if not origins:
            continue
        last = origins[-1]  # a trial may be cloned more than once; its final history follows the last clone
        assert last["trial_id"] in runs and last["trial_id"] != tid
        assert json.loads((runs[tid] / "restored_from.json").read_text()) == last
        own = metrics(runs[tid])
        lr_after = {own[s]["lr_d"] for s in own if s > last["step"]}
        # It trained on from the donor's step, to the end, with its new config's learning rate ...
        assert max(own) == 40 and lr_after == {yaml.safe_load((runs[tid] / "config.yaml").read_text())["optim"]["lr_d"]}
        # ... which is one the donor had, times 0.8 or 1.2 (PBT's explore; resample_probability is 0).
        donor_results = (runs[last["trial_id"]].parent / "result.json").read_text().splitlines()
        donor_lrs = {json.loads(r)["config"]["optim.lr_d"] for r in donor_results}
        (lr,) = lr_after
        assert any(lr == pytest.approx(d * f) for d in donor_lrs for f in (0.8, 1.2)), (lr, donor_lrs)
