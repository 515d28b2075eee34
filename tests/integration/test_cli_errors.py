"""What a user sees on bad input: exit code 2, one line on stderr, no traceback, nothing written."""

from __future__ import annotations

import pytest
from conftest import DEBUG_CONFIG, run_capsgan


def _one_line_error(proc) -> str:
    assert proc.returncode == 2, f"exit {proc.returncode}\nstderr:\n{proc.stderr}"
    assert "Traceback" not in proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("capsgan: error: "), proc.stderr
    return lines[0]


@pytest.mark.parametrize("args,needle", [
    (("optim.lr_dd=1e-4",), "did you mean 'optim.lr_d'"),
    (("model.routing_iters=0",), "model.routing_iters"),
    (("train.batch_real=abc",), "train.batch_real"),
    (("data.name=imagenet",), "data.name"),
    (("model.n_caps=1",), "no-op"),
    (("model.routing=em",), "model.primary_dim=4 and model.caps_dim=8 do not fit model.routing=em, whose "
                            "capsules are 4x4 pose matrices; set model.primary_dim=16 model.caps_dim=16"),
    (("model.routing_iters",), "key=value"),
    (("data.image_size=8",), "data.image_size>=12"),  # too small for debug.yaml's capsule D kernels
])
def test_bad_override_is_one_line_and_exit_2(tmp_path, args, needle):
    out = tmp_path / "runs"
    msg = _one_line_error(run_capsgan("train", str(DEBUG_CONFIG), f"train.out_dir={out}", *args, check=False,
                                      timeout=120))
    assert needle in msg
    assert not out.exists()  # failed before any work


def test_missing_config_file(tmp_path):
    missing = tmp_path / "nope.yaml"
    assert str(missing) in _one_line_error(run_capsgan("train", str(missing), check=False, timeout=120))


def test_missing_data_names_the_path_and_leaves_no_run_folder(tmp_path):
    out, root = tmp_path / "runs", tmp_path / "no-mnist-here"
    proc = run_capsgan("train", str(DEBUG_CONFIG), "data.name=idx", f"data.root={root}",
                       f"train.out_dir={out}", check=False, timeout=180)
    msg = _one_line_error(proc)
    assert str(root) in msg and "data.root=" in msg
    assert not out.exists() or not any(out.iterdir())


def test_resume_without_a_run(tmp_path):
    msg = _one_line_error(run_capsgan("train", "--resume", str(tmp_path), check=False, timeout=120))
    assert str(tmp_path) in msg and "config.yaml" in msg


def test_resume_of_a_folder_that_does_not_exist(tmp_path):
    msg = _one_line_error(run_capsgan("train", "--resume", str(tmp_path / "gone"), check=False, timeout=120))
    assert f"--resume {tmp_path / 'gone'}: no such folder" in msg and "config.yaml" not in msg


def test_resume_with_a_run_but_no_checkpoint(tmp_path):
    (tmp_path / "config.yaml").write_text(DEBUG_CONFIG.read_text())
    msg = _one_line_error(run_capsgan("train", "--resume", str(tmp_path), "train.progress=false",
                                      check=False, timeout=180))
    assert "no checkpoint" in msg and str(tmp_path) in msg and "without --resume" in msg


def test_sample_without_a_run(tmp_path):
    msg = _one_line_error(run_capsgan("sample", "--run", str(tmp_path / "none"), check=False, timeout=120))
    assert str(tmp_path / "none") in msg


@pytest.mark.parametrize("args", [(), ("train", str(DEBUG_CONFIG), "--bogus"), ("sample",),
                                  ("sample", "--run", "x", "--n", "many")])
def test_argparse_errors_exit_2_without_traceback(args):
    proc = run_capsgan(*args, check=False, timeout=120)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines()[-1].startswith("capsgan")  # usage line, then the error


def test_python_dash_m_is_the_cli():
    """`python -m capsgan_dist` (what run_capsgan launches, and every training test uses) is the CLI."""
    proc = run_capsgan("train", "--help", timeout=120)
    assert "--dry-run" in proc.stdout and "--resume" in proc.stdout
