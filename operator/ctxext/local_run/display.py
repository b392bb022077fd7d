"""What `ctxext run` shows: a rich progress bar (or plain lines) per stage and the final summary table."""

from __future__ import annotations

import time
from datetime import timedelta
from typing import Any

from rich.console import Console, ConsoleOptions, RenderResult
from rich.errors import MarkupError
from rich.measure import Measurement
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


def summary_table(report: dict[str, Any]) -> SummaryTable:
    """Passkey accuracy and perplexity by length, and the effective length (the longest length up to
    which the mean accuracy of the retrieval tasks run stays at or above the threshold,
    :mod:`ctxext.effective_length`), for the base model and after each stage.

    One table where the console is wide enough; on a narrower one (an 80-column terminal) two, passkey
    accuracy and perplexity, whose columns are headed by the length alone, so no header is cut to
    "pass…"."""
    return SummaryTable(report)


class SummaryTable:
    """The summary, laid out for the width it is rendered at (see :func:`summary_table`)."""

    def __init__(self, report: dict[str, Any]):
        self.report = report
        self.lengths = [str(n) for n in report["lengths"]]
        self.rows = [("base", report["baseline"], None)] + [
            (f"stage {s['index']} ({s['seqLen']})", s, s.get("finalLoss")) for s in report["stages"]]

    def title(self) -> str:
        r = self.report
        return (f"{r['job']}: {r['originalContextLength']} → {r['lengths'][-1]} tokens ({r['thetaRule']}) — "
                f"{r['status']} in {r['wallSeconds']:.0f}s")

    def wide(self) -> Table:
        table = Table(title=self.title())
        table.add_column("model", no_wrap=True)
        table.add_column("ropeTheta", justify="right")
        for n in self.lengths:
            table.add_column(f"passkey@{n}", justify="right")
        for n in self.lengths:
            table.add_column(f"ppl@{n}", justify="right")
        table.add_column("eff. length", justify="right")
        table.add_column("train loss", justify="right")
        for name, m, loss in self.rows:
            table.add_row(name, _fmt(m.get("ropeTheta"), ",.0f"), *self._cells(m, "passkeyAccuracy"),
                          *self._cells(m, "perplexity"), _fmt(m.get("effectiveLength"), ",d"), _fmt(loss, ".3f"))
        return table

    def narrow(self) -> list[Table]:
        heads = [_tokens(int(n)) for n in self.lengths]
        accuracy = Table(title=self.title() + "\npasskey accuracy by length (tokens)")
        accuracy.add_column("model", no_wrap=True)
        accuracy.add_column("ropeTheta", justify="right", no_wrap=True)
        for h in heads:
            accuracy.add_column(h, justify="right", no_wrap=True)
        accuracy.add_column("eff. length", justify="right", no_wrap=True)
        accuracy.add_column("train loss", justify="right", no_wrap=True)
        perplexity = Table(title="held-out perplexity by length (tokens)")
        perplexity.add_column("model", no_wrap=True)
        for h in heads:
            perplexity.add_column(h, justify="right", no_wrap=True)
        for name, m, loss in self.rows:
            accuracy.add_row(name, _fmt(m.get("ropeTheta"), ",.0f"), *self._cells(m, "passkeyAccuracy"),
                             _fmt(m.get("effectiveLength"), ",d"), _fmt(loss, ".3f"))
            perplexity.add_row(name, *self._cells(m, "perplexity"))
        return [accuracy, perplexity]

    def _cells(self, m: dict[str, Any], metric: str) -> list[str]:
        return [_fmt((m.get(metric) or {}).get(n), ".2f") for n in self.lengths]

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        wide = self.wide()
        if Measurement.get(console, options.update(max_width=100_000), wide).maximum <= options.max_width:
            yield wide
        else:
            yield from self.narrow()


def _tokens(n: int) -> str:
    return f"{n // 1024}K" if n >= 1024 and n % 1024 == 0 else str(n)


def checks_table(report: dict[str, Any]) -> Table:
    table = Table(title="claims")
    for col in ("check", "value", "limit", "ok"):
        table.add_column(col, justify="left" if col == "check" else "right")
    for c in report.get("checks", []):
        ok = {True: "[green]yes[/]", False: "[red]no[/]", None: "–"}[c["passed"]]
        table.add_row(c["name"], _fmt(c["value"], ".3f"), f"{c['limit']:g}", ok)
    return table
