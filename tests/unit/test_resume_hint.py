"""The command a stop on a signal suggests when no launcher exported its own: the same process count."""

from __future__ import annotations

import pytest

from capsgan_dist.cli import _default_resume_command


@pytest.mark.parametrize("world, local, want", [
    (None, None, "capsgan train --resume {run}"),
    ("2", "2", "torchrun --standalone --nproc_per_node=2 -m capsgan_dist train --resume {run}"),
    ("8", "4", "on each of the 2 nodes, the same torchrun options as before with -m capsgan_dist train "
               "--resume {run}"),
])
def test_resume_hint_keeps_the_process_count(monkeypatch: pytest.MonkeyPatch, world, local, want) -> None:
    for key, value in (("WORLD_SIZE", world), ("LOCAL_WORLD_SIZE", local)):
        if value is None:
            monkeypatch.delenv(key, raising=False)
        else:
            monkeypatch.setenv(key, value)
    assert _default_resume_command() == want
