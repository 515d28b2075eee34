"""Progress output: a line every N seconds when stderr is not a terminal, a tqdm bar when it is."""

from __future__ import annotations

import io

from capsgan_dist.progress import Progress


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def _run(stream: io.StringIO, total: int = 200, stop_at: int | None = None, enabled: bool = True) -> list[str]:
    """Steps of 0.125 s (exact in binary), a line every 5 s; the loop logs every 10 steps after update()."""
    clock = FakeClock()
    p = Progress(total, 0, "run", enabled, 5.0, stream=stream, clock=clock)
    for i in range(stop_at or total):
        clock.now += 0.125
        p.update(1)
        if (i + 1) % 10 == 0:
            p.set_postfix({"loss_d": f"{1 / (i + 1):.3g}"})
    p.close()
    return stream.getvalue().splitlines()


def test_a_file_gets_a_line_every_interval_and_one_at_the_end():
    lines = _run(io.StringIO())
    assert [ln.split(" (")[0] for ln in lines] == [f"run: step {n}/200" for n in (40, 80, 120, 160, 200)]
    assert lines[0] == "run: step 40/200 (20%), 8 steps/s, loss_d=0.0333"  # stats of the last log (step 30)
    assert lines[-1] == "run: step 200/200 (100%), 8 steps/s, loss_d=0.005"  # the last step's own stats


def test_a_stop_right_after_a_line_adds_no_duplicate_and_disabled_prints_nothing():
    assert [ln.split(" (")[0] for ln in _run(io.StringIO(), stop_at=80)] == ["run: step 40/200", "run: step 80/200"]
    assert _run(io.StringIO(), enabled=False) == []


def test_a_terminal_gets_the_tqdm_bar():
    term = Terminal()
    _run(term, total=20)
    text = term.getvalue()
    assert "\r" in text and "20/20 [" in text and "it/s" in text and "steps/s" not in text  # tqdm's, not ours


def test_metrics_extraction_reports_images_when_given_a_label(capsys):
    import torch
    from torch import nn

    from capsgan_dist.metrics import extract

    class Tiny(nn.Module):
        def __init__(self):
            super().__init__()
            self.w = nn.Linear(4, 2)

        def features_and_logits(self, x):
            return x.flatten(1), self.w(x.flatten(1))

    images = torch.zeros(7, 1, 2, 2)
    out = extract(Tiny(), images, batch=3, progress="real images")
    assert out.features.shape == (7, 4)
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and err[0].startswith("real images: image 7/7 (100%), ") and "images/s" in err[0]
    extract(Tiny(), images, batch=3)  # no label: silent, as in the training loop
    assert capsys.readouterr().err == ""
