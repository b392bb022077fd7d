"""What `ctxext run` shows: a rich progress bar per stage and the final summary table."""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TaskID, TextColumn, TimeElapsedColumn
from rich.table import Table

from ctxext.local_run.progress import Progress as StageProgress
from ctxext.planner import Plan


def _fmt(value: Any, spec: str) -> str:
    return format(value, spec) if isinstance(value, int | float) else "–"


class StageBars:
    """One bar per stage: step / steps, loss, perplexity, tokens/s, elapsed time."""

    def __init__(self, console: Console, plan: Plan):
        self.progress = Progress(
            TextColumn("{task.description}"), BarColumn(bar_width=24), MofNCompleteColumn(),
            TextColumn("loss {task.fields[loss]}  ppl {task.fields[ppl]}  {task.fields[tps]} tok/s  "
                       "{task.fields[note]}"),
            TimeElapsedColumn(), console=console, transient=False, refresh_per_second=4)
        self.tasks: dict[int, TaskID] = {}
        n = len(plan.stages)
        for s in plan.stages:
            self.tasks[s.index] = self.progress.add_task(
                f"stage {s.index}/{n}  {s.seq_len:>6,} tok  θ {s.rope_theta:>12,.0f}", total=s.steps, start=False,
                loss="–", ppl="–", tps="–", note="")

    def __enter__(self) -> StageBars:
        self.progress.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self.progress.__exit__(None, None, None)

    def start(self, index: int, note: str = "") -> None:
        self.progress.start_task(self.tasks[index])
        self.progress.update(self.tasks[index], note=note)

    def update(self, index: int, p: StageProgress) -> None:
        self.progress.update(self.tasks[index], completed=p.step, loss=_fmt(p.loss, ".3f"),
                             ppl=_fmt(p.perplexity, ".2f"), tps=_fmt(p.tokens_per_second, ",.0f"))

    def finish(self, index: int, *, steps: int | None, loss: float | None, note: str) -> None:
        fields: dict[str, Any] = {"note": note}
        if loss is not None:
            fields.update(loss=_fmt(loss, ".3f"), ppl=_fmt(2.718281828459045 ** min(loss, 700.0), ".2f"))
        if steps is not None:
            fields["completed"] = steps
        self.progress.update(self.tasks[index], **fields)
        self.progress.stop_task(self.tasks[index])

    def note(self, index: int, note: str) -> None:
        self.progress.update(self.tasks[index], note=note)


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
