"""What `ctxext run` shows: a rich progress bar per stage and the final summary table."""

from __future__ import annotations

import time
from datetime import timedelta
from typing import Any

from rich.console import Console
from rich.errors import MarkupError
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TaskID, TextColumn, TimeElapsedColumn
from rich.table import Table
from rich.text import Text

from ctxext.local_run.progress import Progress as StageProgress
from ctxext.planner import Plan


def _fmt(value: Any, spec: str) -> str:
    return format(value, spec) if isinstance(value, int | float) else "–"


class StageBars:
    """One bar per stage: step / steps, loss, perplexity, tokens/s, elapsed time.

    When the console is not a terminal (CI logs, ``| tee``, a pod's log) a live bar would only be
    printed once, at the end; there it prints a plain line per stage event (started, notes such as
    "evaluating", done/failed) and about every tenth of a stage's steps instead::

        stage 1/2 (512 tokens): started (θ 40,000, 150 steps)
        stage 1/2 (512 tokens): step 15/150  loss 2.310  ppl 10.07  1,234 tok/s  0:00:42
        stage 1/2 (512 tokens): done, 150/150 steps, loss 1.902
    """

    LINES_PER_STAGE = 10

    def __init__(self, console: Console, plan: Plan, *, plain: bool | None = None):
        self.console = console
        self.plain = not console.is_terminal if plain is None else plain
        self.progress = Progress(
            TextColumn("{task.description}"), BarColumn(bar_width=24), MofNCompleteColumn(),
            TextColumn("loss {task.fields[loss]}  ppl {task.fields[ppl]}  {task.fields[tps]} tok/s  "
                       "{task.fields[note]}"),
            TimeElapsedColumn(), console=console, transient=False, refresh_per_second=4)
        self.tasks: dict[int, TaskID] = {}
        n = len(plan.stages)
        self.stages = {s.index: s for s in plan.stages}
        self.labels = {s.index: f"stage {s.index}/{n} ({s.seq_len:,} tokens)" for s in plan.stages}
        self.reported: dict[int, int] = {}  # plain mode: the last step // interval printed
        self.notes: dict[int, str] = {}
        self.started: dict[int, float] = {}
        for s in plan.stages:
            self.tasks[s.index] = self.progress.add_task(
                f"stage {s.index}/{n}  {s.seq_len:>6,} tok  θ {s.rope_theta:>12,.0f}", total=s.steps, start=False,
                loss="–", ppl="–", tps="–", note="")

    def __enter__(self) -> StageBars:
        if not self.plain:
            self.progress.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        if not self.plain:
            self.progress.__exit__(None, None, None)

    def _line(self, index: int, text: str) -> None:
        self.console.print(f"{self.labels[index]}: {text}", markup=False, highlight=False, soft_wrap=True)

    def start(self, index: int, note: str = "") -> None:
        self.progress.start_task(self.tasks[index])
        self.progress.update(self.tasks[index], note=note)
        if self.plain:
            s = self.stages[index]
            self.started[index] = time.monotonic()
            self._line(index, "started" + (f", {_plain(note)}" if note else "") +
                       f" (θ {s.rope_theta:,.0f}, {s.steps} steps)")

    def update(self, index: int, p: StageProgress) -> None:
        self.progress.update(self.tasks[index], completed=p.step, loss=_fmt(p.loss, ".3f"),
                             ppl=_fmt(p.perplexity, ".2f"), tps=_fmt(p.tokens_per_second, ",.0f"))
        if self.plain:
            total = self.stages[index].steps
            bucket = p.step // max(1, total // self.LINES_PER_STAGE)
            if bucket > self.reported.get(index, 0):
                self.reported[index] = bucket
                elapsed = int(time.monotonic() - self.started.get(index, time.monotonic()))
                self._line(index, f"step {p.step}/{total}  loss {_fmt(p.loss, '.3f')}  ppl {_fmt(p.perplexity, '.2f')}"
                           f"  {_fmt(p.tokens_per_second, ',.0f')} tok/s  {timedelta(seconds=elapsed)}")

    def finish(self, index: int, *, steps: int | None, loss: float | None, note: str) -> None:
        fields: dict[str, Any] = {"note": note}
        if loss is not None:
            fields.update(loss=_fmt(loss, ".3f"), ppl=_fmt(2.718281828459045 ** min(loss, 700.0), ".2f"))
        if steps is not None:
            fields["completed"] = steps
        self.progress.update(self.tasks[index], **fields)
        self.progress.stop_task(self.tasks[index])
        if self.plain:
            self._line(index, _plain(note) + (f", {steps}/{self.stages[index].steps} steps" if steps is not None
                                              else "") + (f", loss {loss:.3f}" if loss is not None else ""))

    def note(self, index: int, note: str) -> None:
        self.progress.update(self.tasks[index], note=note)
        if self.plain and self.notes.get(index) != note:
            self.notes[index] = note
            self._line(index, _plain(note))


def _plain(markup: str) -> str:
    """``"[red]gate failed[/]"`` → ``"gate failed"`` (text that is not valid markup is kept as it is)."""
    try:
        return Text.from_markup(markup).plain
    except MarkupError:
        return markup


def summary_table(report: dict[str, Any]) -> Table:
    """Passkey accuracy and perplexity by length, and the effective length (the longest length up to
    which the mean accuracy of the retrieval tasks run stays at or above the threshold,
    :mod:`ctxext.effective_length`), for the base model and after each stage."""
    lengths = [str(n) for n in report["lengths"]]
    table = Table(title=f"{report['job']}: {report['originalContextLength']} → {report['lengths'][-1]} tokens "
                        f"({report['thetaRule']}) — {report['status']} in {report['wallSeconds']:.0f}s")
    table.add_column("model")
    table.add_column("ropeTheta", justify="right")
    for n in lengths:
        table.add_column(f"passkey@{n}", justify="right")
    for n in lengths:
        table.add_column(f"ppl@{n}", justify="right")
    table.add_column("eff. length", justify="right")
    table.add_column("train loss", justify="right")
    rows = [("base", report["baseline"], None)] + [(f"stage {s['index']} ({s['seqLen']})", s, s.get("finalLoss"))
                                                   for s in report["stages"]]
    for name, m, loss in rows:
        table.add_row(name, _fmt(m.get("ropeTheta"), ",.0f"),
                      *(_fmt((m.get("passkeyAccuracy") or {}).get(n), ".2f") for n in lengths),
                      *(_fmt((m.get("perplexity") or {}).get(n), ".2f") for n in lengths),
                      _fmt(m.get("effectiveLength"), ",d"), _fmt(loss, ".3f"))
    return table


def checks_table(report: dict[str, Any]) -> Table:
    table = Table(title="claims")
    for col in ("check", "value", "limit", "ok"):
        table.add_column(col, justify="left" if col == "check" else "right")
    for c in report.get("checks", []):
        ok = {True: "[green]yes[/]", False: "[red]no[/]", None: "–"}[c["passed"]]
        table.add_row(c["name"], _fmt(c["value"], ".3f"), f"{c['limit']:g}", ok)
    return table
