"""Sweep config, trial configs, run-folder preparation and reporting: the parts that need no Ray."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml
from conftest import DEBUG_CONFIG, REPO, run_capsgan

from capsgan_dist.config import ROUTINGS, load_config, to_dict
from capsgan_dist.errors import ConfigError
from capsgan_dist.sweep.config import FID_METRIC, PROXY_METRIC, load_sweep_config, resolve_metric
from capsgan_dist.sweep.report import trial_rows, write_outputs
from capsgan_dist.sweep.run import resolve_base, split_overrides
from capsgan_dist.sweep.trial import (
    ATTEMPTS,
    ORIGIN,
    RESTORED,
    SUMMARY,
    Reporter,
    prepare_run_dir,
    proxy_d_gap,
    run_folder,
    trial_config,
)

SWEEP_DEBUG = REPO / "configs" / "sweep_debug.yaml"


def sweep_file(tmp_path: Path, **fields) -> Path:
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump({"base": str(DEBUG_CONFIG), **fields}))
    return path


def test_default_space_is_routing_and_both_learning_rates(tmp_path):
    s = load_sweep_config(sweep_file(tmp_path))
    assert s.searched == {"model.routing_iters": {"choice": [1, 2, 3, 4, 5]},
                          "optim.lr_d": {"loguniform": [1e-5, 1e-3]}, "optim.lr_g": {"loguniform": [1e-5, 1e-3]}}
    assert s.scheduler.name == "asha" and s.metric == "auto" and s.mode == "min"


def test_space_entries_replace_defaults_and_null_drops_them(tmp_path):
    path = sweep_file(tmp_path, space={"model.routing_iters": {"grid": [1, 3]}, "optim.lr_g": None,
                                       "optim.beta1": {"uniform": [0.0, 0.9]}})
    s = load_sweep_config(path, ["space.loss.gan.choice=[bce,margin]", "space.optim.lr_d=null", "trials=2"])
    assert s.searched == {"model.routing_iters": {"grid": [1, 3]}, "optim.beta1": {"uniform": [0.0, 0.9]},
                          "loss.gan": {"choice": ["bce", "margin"]}}
    assert s.trials == 2


@pytest.mark.parametrize("fields, match", [
    ({"space": {"optim.lr_d": {"normal": [0, 1]}}}, "space.optim.lr_d must be one of"),
    ({"space": {"optim.lr_d": {"loguniform": [0.0, 1e-3]}}}, "low > 0"),
    ({"space": {"optim.lr_d": {"uniform": [1e-3, 1e-5]}}}, "low < high"),
    ({"scheduler": {"name": "hyperband"}}, "scheduler.name='hyperband' is not allowed"),
    ({"scheduler": {"name": "pbt"}, "space": {"optim.lr_d": {"choice": [1e-4]}}}, "needs a uniform or loguniform"),
    ({"scheduler": {"name": "pbt"}, "workers_per_trial": 2}, "pbt needs workers_per_trial=1"),
    ({"trails": 4}, "bad sweep key 'trails'"),
])
def test_bad_sweep_config_is_a_config_error(tmp_path, fields, match):
    with pytest.raises(ConfigError, match=match):
        load_sweep_config(sweep_file(tmp_path, **fields))


def test_space_values_are_checked_against_the_training_config(tmp_path):
    typo = load_sweep_config(sweep_file(tmp_path, space={"model.routing_iter": {"choice": [1, 2]}}))
    with pytest.raises(ConfigError, match="space.model.routing_iter"):
        resolve_base(typo)
    bad_value = load_sweep_config(sweep_file(tmp_path, space={"model.routing_iters": {"choice": [0, 2]}}))
    with pytest.raises(ConfigError, match="space.model.routing_iters: value 0"):
        resolve_base(bad_value)
    pbt = load_sweep_config(sweep_file(tmp_path, scheduler={"name": "pbt", "perturbation_interval": 15},
                                       overrides=["train.checkpoint_every=10"]))
    with pytest.raises(ConfigError, match="multiple of train.checkpoint_every=10"):
        resolve_base(pbt)


def test_generator_choice_is_a_sweep_key_checked_before_ray(tmp_path):
    s = load_sweep_config(sweep_file(tmp_path), ["space.model.generator.choice=[dcgan,capsule]"])
    assert s.searched["model.generator"] == {"choice": ["dcgan", "capsule"]}
    base = resolve_base(s)
    assert trial_config(base, {"model.generator": "capsule"}).model.generator == "capsule"
    typo = load_sweep_config(sweep_file(tmp_path), ["space.model.generator.choice=[dcgan,capsnet]"])
    with pytest.raises(ConfigError, match="space.model.generator: value 'capsnet'.*choose one of dcgan, capsule"):
        resolve_base(typo)


def test_base_gets_sweep_group_and_absolute_data_root(tmp_path):
    s = load_sweep_config(sweep_file(tmp_path, name="grp", overrides=["data.name=idx", "data.root=some/dir"]))
    base = resolve_base(s)
    assert base["tracking"]["group"] == "grp" and Path(base["data"]["root"]).is_absolute()


def test_overrides_split_between_sweep_and_training():
    assert split_overrides(["trials=3", "train.steps=5", "scheduler.name=pbt", "optim.lr_d=1e-4", "seed=2",
                            "name=x", "eval.every=50", "perf.routing=plain"]) == (
        ["trials=3", "scheduler.name=pbt", "name=x"],
        ["train.steps=5", "optim.lr_d=1e-4", "seed=2", "eval.every=50", "perf.routing=plain"])


def test_auto_metric_is_fid_when_trials_evaluate_else_the_named_proxy(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "clf.safetensors").write_bytes(b"")  # only its existence is checked here
    proxy = load_sweep_config(sweep_file(tmp_path))
    assert proxy.metric == "auto" and resolve_metric(proxy, resolve_base(proxy)).metric == PROXY_METRIC
    fid = load_sweep_config(sweep_file(tmp_path, overrides=["eval.every=10", "eval.classifier=clf.safetensors"]))
    base = resolve_base(fid)
    assert base["eval"]["classifier"] == str(tmp_path / "clf.safetensors")  # absolute: trials run elsewhere
    assert resolve_metric(fid, base).metric == FID_METRIC
    named = load_sweep_config(sweep_file(tmp_path, metric="loss_g", overrides=["eval.every=10",
                                                                             "eval.classifier=clf.safetensors"]))
    assert resolve_metric(named, resolve_base(named)).metric == "loss_g"  # an explicit metric is kept
    (tmp_path / "inception.pth").write_bytes(b"")
    inception = load_sweep_config(sweep_file(tmp_path, overrides=["eval.every=10",
                                                                  "eval.inception_weights=inception.pth"]))
    base = resolve_base(inception)
    assert base["eval"]["inception_weights"] == str(tmp_path / "inception.pth")
    assert resolve_metric(inception, base).metric == FID_METRIC


@pytest.mark.parametrize("fields, match", [
    ({"overrides": ["eval.classifier=clf.safetensors"]}, "needs the trials to evaluate.*eval.every=N"),
    ({"metric": "eval/fid"}, "needs the trials to evaluate: add eval.classifier"),
    ({"overrides": ["eval.every=10", "eval.classifier=missing.safetensors"]}, "missing.safetensors not found"),
    ({"overrides": ["eval.every=10", "eval.inception_weights=gone.pth"]}, "inception_weights .*gone.pth not found"),
    ({"mode": "max"}, "metric=auto ranks by FID or proxy_d_gap"),
])
def test_a_fid_sweep_that_cannot_compute_fid_fails_before_ray(tmp_path, monkeypatch, fields, match):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "clf.safetensors").write_bytes(b"")
    s = load_sweep_config(sweep_file(tmp_path, **fields))
    with pytest.raises(ConfigError, match=match):
        resolve_metric(s, resolve_base(s))


def test_trial_config_sets_dotted_params_on_the_base():
    base = to_dict(load_config(DEBUG_CONFIG))
    cfg = trial_config(base, {"model.routing_iters": 5, "optim.lr_d": 3e-5}, **{"train.run_dir": "/x"})
    assert (cfg.model.routing_iters, cfg.optim.lr_d, cfg.train.run_dir) == (5, 3e-5, "/x")
    assert cfg.model.conv1_channels == 16  # the rest is the base
    with pytest.raises(ConfigError):
        trial_config(base, {"model.nope": 1})


def test_proxy_is_the_absolute_gap_between_d_outputs():
    assert proxy_d_gap({"d_real": 0.7, "d_fake": 0.4}) == pytest.approx(0.3)
    assert proxy_d_gap({"d_real": 0.4, "d_fake": 0.7}) == pytest.approx(0.3)
    assert proxy_d_gap({"loss_g": 1.0}) is None


def _fake_checkpoint(root: Path, step: int, tag: str) -> Path:
    """A checkpoint folder that passes verification (manifest with the files' hashes)."""
    import hashlib

    d = root / f"step_{step:07d}"
    (d / "G").mkdir(parents=True)
    (d / "G" / "w.bin").write_text(tag)
    digest = hashlib.sha256(tag.encode()).hexdigest()
    (d / "manifest.json").write_text(json.dumps({"step": step, "model_hash": "h", "files": {"G/w.bin": digest}}))
    return d


def test_pbt_clone_replaces_the_run_checkpoints_once(tmp_path):
    run = tmp_path / "run"
    _fake_checkpoint(run / "checkpoints", 40, "own")
    donor = tmp_path / "tune_ckpt"
    _fake_checkpoint(donor, 20, "donor")
    (donor / ORIGIN).write_text(json.dumps({"trial_id": "other", "step": 20}))

    rec = prepare_run_dir(run, donor, "me")
    assert rec["cloned_from"] == {"trial_id": "other", "step": 20} and rec["resume_step"] == 20
    assert [p.name for p in (run / "checkpoints").iterdir()] == ["step_0000020"]
    assert (run / "checkpoints" / "step_0000020" / "G" / "w.bin").read_text() == "donor"
    # A retry right after the clone keeps what it trained since (the clone is not applied twice).
    _fake_checkpoint(run / "checkpoints", 30, "own-after-clone")
    rec = prepare_run_dir(run, donor, "me")
    assert rec["cloned_from"] is None and rec["resume_step"] == 30
    assert json.loads((run / RESTORED).read_text())["trial_id"] == "other"
    assert len((run / ATTEMPTS).read_text().splitlines()) == 2


def test_own_tune_checkpoint_is_used_only_when_the_run_has_none(tmp_path):
    run = tmp_path / "run"
    own = tmp_path / "tune_ckpt"
    _fake_checkpoint(own, 10, "reported")
    (own / ORIGIN).write_text(json.dumps({"trial_id": "me", "step": 10}))
    assert prepare_run_dir(run, own, "me")["resume_step"] == 10  # empty run folder: copied in
    _fake_checkpoint(run / "checkpoints", 30, "newer")
    assert prepare_run_dir(run, own, "me")["resume_step"] == 30  # the run's own newer one wins


def test_reporter_metric_comes_from_logs_or_metrics_file(tmp_path):
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    sent = []
    rep = Reporter(run, "me", "eval/fid", lambda m, c: sent.append(m), checkpoints=False)
    rep(5, {"d_real": 0.6, "d_fake": 0.5})
    assert "eval/fid" not in sent[-1] and sent[-1]["proxy_d_gap"] == pytest.approx(0.1) and sent[-1]["step"] == 5
    with open(run / "metrics.jsonl", "w") as f:  # e.g. the evaluation hook's row
        f.write(json.dumps({"step": 10, "eval/fid": 12.5}) + "\n" + '{"step": 1')  # + a torn line
    rep(15, {"d_real": 0.6, "d_fake": 0.5})
    rep(20, {"d_real": 0.6, "d_fake": 0.5})
    assert [m.get("eval/fid") for m in sent] == [None, 12.5, 12.5]  # read once, then carried forward


def test_pbt_reporter_reports_each_new_checkpoint_once_and_the_last_log(tmp_path):
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    sent = []

    def send(metrics: dict, ckpt: str | None) -> None:
        files = ckpt and sorted(p.name for p in Path(ckpt).iterdir())
        sent.append((metrics["step"], metrics["checkpoint_step"], files))

    rep = Reporter(run, "me", "proxy_d_gap", send, checkpoints=True)
    logs = {"d_real": 0.6, "d_fake": 0.5}
    rep(5, logs)  # no checkpoint yet: held back
    _fake_checkpoint(run / "checkpoints", 10, "x")
    rep(10, logs)  # train() logs step 10 before saving it, but step_10 exists here: attached
    rep(15, logs)  # nothing new: held back
    _fake_checkpoint(run / "checkpoints", 20, "y")
    rep(20, logs)
    rep(25, logs)
    rep.finish({"step": 25, "world_size": 1})
    assert sent == [(10, 10, [ORIGIN, "step_0000010"]), (20, 20, [ORIGIN, "step_0000020"]), (25, 20, None)]
    assert json.loads((run / "summary.json").read_text())["step"] == 25


def test_summary_says_why_its_best_differs_from_rays_and_stopped_trials_keep_their_world_size(tmp_path):
    """ASHA stopped trial 0 early with a better proxy than trial 1, which ran all 20 steps: Ray calls 0 the
    current best, ours is 1, and the line says why. Stopped trials never write summary.json."""
    base = to_dict(load_config(DEBUG_CONFIG))
    sweep = resolve_metric(load_sweep_config(sweep_file(tmp_path, name="s")), base)
    trials = []
    for i, (step, gap) in enumerate([(10, 0.01), (20, 0.05)]):
        trial = SimpleNamespace(trial_id=f"t_0000{i}", status="TERMINATED", path=str(tmp_path / f"trial_{i}"),
                                config={"model.routing_iters": 2, "optim.lr_d": 1e-4, "optim.lr_g": 1e-4},
                                last_result={"step": step, PROXY_METRIC: gap})
        run = run_folder(Path(trial.path), "s", trial.trial_id)
        run.mkdir(parents=True)
        (run / "environment.json").write_text(json.dumps({"world_size": 2}))
        if step == 20:
            (run / SUMMARY).write_text(json.dumps({"world_size": 2}))
        trials.append(trial)
    summary = write_outputs(trials, sweep, base, tmp_path)
    assert summary.exit_code == 0
    assert f"Best: trial t_00001 {PROXY_METRIC}=0.05 (the best trial that ran all its steps; Ray's 'Current " \
           "best trial' is t_00000, stopped early at step 10" in summary.message
    rows = trial_rows(trials, sweep, base)
    assert [(r["trial"], r["status"], r["world_size"]) for r in rows] == [("t_00000", "stopped early", 2),
                                                                        ("t_00001", "done", 2)]
    assert "# Best trial t_00001" in (tmp_path / "best_config.yaml").read_text()


def test_cli_rejects_a_bad_sweep_before_starting_ray(tmp_path):
    path = sweep_file(tmp_path, space={"model.routing_iter": {"choice": [1]}})
    proc = run_capsgan("sweep", str(path), check=False, timeout=60)
    assert proc.returncode == 2
    assert proc.stderr.strip().startswith("capsgan: error: space.model.routing_iter")
    assert len(proc.stderr.strip().splitlines()) == 1


def test_shipped_sweep_configs_load():
    for path in sorted((REPO / "configs").glob("sweep_*.yaml")):
        s = load_sweep_config(path)
        assert resolve_base(s)["tracking"]["group"] == s.name, path
    assert load_sweep_config(SWEEP_DEBUG).trials == 4


def test_ray_cluster_config_passes_the_launcher_schema():
    import copy

    pytest.importorskip("jsonschema")
    util = pytest.importorskip("ray.autoscaler._private.util")
    cfg = yaml.safe_load((REPO / "launch" / "ray" / "cluster.yaml").read_text())
    full = util.prepare_config(copy.deepcopy(cfg))
    util.validate_config(full)  # raises on any field the cluster launcher does not know
    assert "--address auto" in (REPO / "launch" / "ray" / "cluster.yaml").read_text()


def test_slurm_sweep_script_help_dry_run_and_bad_input():
    import subprocess

    script = str(REPO / "launch" / "ray" / "sweep.sbatch")
    env = {k: v for k, v in __import__("os").environ.items() if not k.startswith("SLURM_")}
    run = lambda *a: subprocess.run(["bash", script, *a], capture_output=True, text=True, timeout=30, env=env)  # noqa: E731
    assert run("--help").stdout.startswith("Usage: sbatch")
    dry = run("--dry-run", "configs/sweep_mnist.yaml", "trials=4").stdout.splitlines()
    assert "ray.scripts.scripts start --head" in dry[0] and "--address=node1:" in dry[1]
    assert dry[-1].endswith("-m capsgan_dist sweep configs/sweep_mnist.yaml trials=4 --address node1:6379")
    missing = run("--dry-run")
    assert missing.returncode == 2 and "missing SWEEP_CONFIG" in missing.stderr
    outside = run("configs/sweep_mnist.yaml")
    assert outside.returncode == 2 and "not inside a SLURM job" in outside.stderr


def test_routing_kind_is_a_searchable_choice_checked_before_ray(tmp_path):
    """space.model.routing.choice=[dynamic,em,attention]: em needs 16-D capsules, said before any trial."""
    path = sweep_file(tmp_path)
    kinds = ["space.model.routing.choice=[dynamic,em,attention]"]
    s = load_sweep_config(path, kinds)
    assert s.searched["model.routing"] == {"choice": ["dynamic", "em", "attention"]}
    with pytest.raises(ConfigError, match=r"space.model.routing: value 'em' .*set model.primary_dim=16"):
        resolve_base(s)
    fits = load_sweep_config(sweep_file(tmp_path, overrides=["model.primary_dim=16", "model.caps_dim=16"]), kinds)
    base = resolve_base(fits)
    assert [trial_config(base, {"model.routing": k}).model.routing for k in ROUTINGS] == list(ROUTINGS)


@pytest.mark.parametrize("trial_output", [False, True])
def test_trials_output_reaches_the_console_only_when_asked(tmp_path, monkeypatch, trial_output):
    """trial_output is Ray's log_to_driver, for an embedded Ray and for a cluster alike."""
    import ray

    from capsgan_dist.sweep.run import init_ray

    seen = []
    monkeypatch.setattr(ray, "init", lambda **kwargs: seen.append(kwargs))
    sweep = dataclasses.replace(load_sweep_config(REPO / "configs" / "sweep_debug.yaml"), trial_output=trial_output)
    init_ray(sweep, tmp_path, None)
    init_ray(sweep, tmp_path, "127.0.0.1:6379")
    assert [k["log_to_driver"] for k in seen] == [trial_output, trial_output]
