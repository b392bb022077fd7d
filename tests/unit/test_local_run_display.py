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


def _report(tmp_path: Path, lengths: list[int]) -> dict:
    from ctxext.local_run.report import build_report
    from ctxext.results import StageResult

    _, plan = _job(tmp_path)
    metrics = {"passkeyAccuracy": {str(n): 1.0 for n in lengths}, "perplexity": {str(n): 6.52 for n in lengths},
               "effectiveLength": lengths[-1]}
    results = [StageResult(status="Succeeded", stage=s.index, seq_len=s.seq_len, rope_theta=91896.0, final_loss=0.264,
                           steps_done=s.steps, total_steps=s.steps, evaluation=dict(metrics)) for s in plan.stages]
    return build_report(job_name="tiny-cpu", plan=plan, baseline=dict(metrics, ropeTheta=10000.0), results=results,
                        lengths=lengths, status="Succeeded", wall_seconds=384.0, model_path="/m")


def test_the_summary_fits_80_columns_without_cutting_a_header(tmp_path: Path) -> None:
    from ctxext.local_run.display import summary_table

    report = _report(tmp_path, [128, 512, 1024])
    buf = io.StringIO()
    _console(buf, width=80).print(summary_table(report))
    out = buf.getvalue()
    assert "…" not in out, out
    assert max(len(line) for line in out.splitlines()) <= 80
    for word in ("passkey", "perplexity", "ropeTheta", "eff. length", "train loss", "stage 2 (512)", "91,896",
                 "10,000", "1K", "6.52", "0.264"):
        assert word in out, (word, out)
    wide = io.StringIO()
    _console(wide, width=200).print(summary_table(report))
    assert "passkey@1024" in wide.getvalue() and "…" not in wide.getvalue()  # one table where it fits
