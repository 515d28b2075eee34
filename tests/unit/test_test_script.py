"""scripts/test.sh without running pytest: a stub `.venv/bin/python` records its arguments and exits
with a chosen code, so the script's exit-code handling is checked in milliseconds."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
from conftest import REPO, write_script

STUB = """#!/bin/bash
echo "$*" > "{calls}"
exit {rc}
"""


def _run(tmp: Path, pytest_rc: int, *args: str) -> tuple[subprocess.CompletedProcess, str]:
    (tmp / "scripts").mkdir()
    shutil.copy(REPO / "scripts" / "test.sh", tmp / "scripts" / "test.sh")
    (tmp / ".venv" / "bin").mkdir(parents=True)
    calls = tmp / "calls.log"
    write_script(tmp / ".venv" / "bin" / "python", STUB.format(calls=calls, rc=pytest_rc))
    proc = subprocess.run(["bash", str(tmp / "scripts" / "test.sh"), *args], capture_output=True, text=True,
                          timeout=30)
    return proc, calls.read_text().strip()


def test_no_tests_collected_fails_with_a_message(tmp_path):
    proc, _ = _run(tmp_path, 5)  # pytest's exit code when it collected nothing
    assert proc.returncode == 1
    assert "collected no tests" in proc.stderr


@pytest.mark.parametrize("pytest_rc", [0, 1, 2])
def test_other_exit_codes_pass_through(tmp_path, pytest_rc):
    proc, _ = _run(tmp_path, pytest_rc)
    assert proc.returncode == pytest_rc


def test_runs_the_tests_folder_with_the_given_arguments(tmp_path):
    _, calls = _run(tmp_path, 0, "-k", "routing", "-x")
    assert calls.startswith("-m pytest tests ")
    assert calls.endswith("-k routing -x")
