"""report.md of a local run: the tables, the stages' heatmaps and a loss-by-position plot."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from ctxext.local_run.layout import Workdir

LOSS_PLOT = "loss_by_position.png"


def _fmt(value: Any, spec: str) -> str:
    return format(value, spec) if isinstance(value, int | float) else "–"


def _rows(report: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    return [("base model", report["baseline"])] + [(f"after stage {s['index']} ({s['seqLen']} tok)", s)
                                                   for s in report["stages"]]


def metric_table(report: dict[str, Any], metric: str, spec: str) -> list[str]:
    lengths = [str(n) for n in report["lengths"]]
    lines = ["| model | θ | " + " | ".join(lengths) + " |", "|---|---:|" + "---:|" * len(lengths)]
    for name, m in _rows(report):
        values = m.get(metric) or {}
        lines.append(f"| {name} | {_fmt(m.get('ropeTheta'), ',.0f')} | "
                     + " | ".join(_fmt(values.get(n), spec) for n in lengths) + " |")
    return lines


def plot_position_loss(report: dict[str, Any], path: Path) -> bool:
    """Loss by position bucket for the base model and each stage; False when there is nothing to plot."""
    series = [(name, m.get("positionLoss") or []) for name, m in _rows(report)]
    series = [(n, s) for n, s in series if s]
    if not series:
        return False
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    fig, ax = plt.subplots(figsize=(7, 4))
    for name, buckets in series:
        xs = [(b["from"] + b["to"]) / 2 for b in buckets]
        ax.plot(xs, [b["loss"] for b in buckets], marker="o", label=name)
    ax.axvline(report["originalContextLength"], color="grey", linestyle="--", label="original context L0")
    ax.set_xlabel("position (tokens)")
    ax.set_ylabel("held-out loss (nats/token)")
    ax.set_title(f"{report['job']}: loss by position at {report['lengths'][-1]} tokens")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return True


def write_report_md(wd: Workdir, report: dict[str, Any]) -> Path:
    lines = [f"# {report['job']}: {report['originalContextLength']} → {report['lengths'][-1]} tokens "
             f"({report['thetaRule']})", "",
             f"Status: **{report['status']}** in {report['wallSeconds']:.0f} s."
             + (f" Reason: {report['reason']}" if report.get("reason") else ""), ""]
    lines += ["## Passkey accuracy by length", "", *metric_table(report, "passkeyAccuracy", ".2f"), ""]
    lines += ["## Held-out perplexity by length", "", *metric_table(report, "perplexity", ".3f"), ""]
    lines += ["## Stages", "", "| stage | seqLen | θ | steps | final loss | tokens/s | wall s | gates |",
              "|---:|---:|---:|---:|---:|---:|---:|---|"]
    for s in report["stages"]:
        gates = "; ".join(("✓ " if g.get("passed") else "✗ ") + str(g.get("message")) for g in s.get("gates", []))
        lines.append(f"| {s['index']} | {s['seqLen']} | {_fmt(s['ropeTheta'], ',.0f')} | {s.get('stepsDone')} | "
                     f"{_fmt(s.get('finalLoss'), '.3f')} | {_fmt(s.get('tokensPerSecond'), ',.0f')} | "
                     f"{_fmt(s.get('wallSeconds'), '.0f')} | {gates} |")
    if report.get("checks"):
        lines += ["", "## Claims", "", "| check | value | limit | ok |", "|---|---:|---:|---|"]
        lines += [f"| {c['name']} | {_fmt(c['value'], '.3f')} | {c['limit']:g} | "
                  f"{ {True: 'yes', False: 'no', None: '–'}[c['passed']] } |" for c in report["checks"]]
    if plot_position_loss(report, wd.root / LOSS_PLOT):
        lines += ["", "## Loss by position", "", f"![loss by position]({LOSS_PLOT})"]
    pictures = [("base model", p) for p in report["baseline"].get("plots", [])]
    pictures += [(f"stage {s['index']}", p) for s in report["stages"] for p in s.get("plots", [])]
    if pictures:
        lines += ["", "## Heatmaps", ""]
        for index, p in pictures:
            rel = os.path.relpath(p, wd.root) if os.path.isabs(p) else p
            lines += [f"{index}: `{Path(p).name}`", "", f"![{index} {Path(p).stem}]({rel})", ""]
    wd.report_md.write_text("\n".join(lines) + "\n")
    return wd.report_md
