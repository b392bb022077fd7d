"""What `ctxext run` prints: plain progress lines when not a terminal; a summary that fits 80 columns."""

from __future__ import annotations

import io
from pathlib import Path

from rich.console import Console

from ctxext.local_run.display import StageBars
from ctxext.local_run.progress import Progress
from tests.unit.test_local_run import _job


def _console(buf: io.StringIO, terminal: bool = False, width: int = 200) -> Console:
    return Console(file=buf, force_terminal=terminal, width=width, color_system=None)


def _p(step: int) -> Progress:
    return Progress(step=step, loss=2.0, perplexity=7.39, tokens_per_second=1234.0, seq_len=256)


def test_not_a_terminal_prints_a_line_per_event_and_every_n_steps_as_they_happen(tmp_path: Path) -> None:
    _, plan = _job(tmp_path)  # stage 1: 150 steps, stage 2: 600 steps
    buf = io.StringIO()
    with StageBars(_console(buf), plan) as bars:
        bars.start(1)
        assert "stage 1/2" in buf.getvalue() and "started" in buf.getvalue()  # at once, not at the end
        for step in range(1, 151, 7):  # polled: steps arrive in jumps
            bars.update(1, _p(step))
        lines = [x for x in buf.getvalue().splitlines() if "step " in x]
        assert 8 <= len(lines) <= 11, buf.getvalue()  # about every tenth of the stage
        assert "step 15/150" in lines[0] and "loss 2.000" in lines[0] and "1,234 tok/s" in lines[0], lines[0]
        bars.note(1, "evaluating")
        bars.note(1, "evaluating")  # the same note twice is one line
        bars.finish(1, steps=150, loss=1.5, note="[green]done[/]")
        bars.start(2, "resuming from checkpoint")
    out = buf.getvalue()
    assert out.count("evaluating") == 1
    assert "stage 1/2 (256 tokens): done, 150/150 steps, loss 1.500" in out, out
    assert "stage 2/2 (512 tokens): started, resuming from checkpoint" in out, out
    assert "[green]" not in out and "\x1b" not in out and "━" not in out  # no markup, no colour, no bars


def test_a_terminal_still_gets_the_bars(tmp_path: Path) -> None:
    _, plan = _job(tmp_path)
    buf = io.StringIO()
    with StageBars(_console(buf, terminal=True), plan) as bars:
        bars.start(1)
        bars.update(1, _p(75))
    assert "━" in buf.getvalue() and "step 75/150" not in buf.getvalue()
