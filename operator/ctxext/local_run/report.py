"""report.json and report.md of a local run, assembled from the baseline and the stage results.

report.json (abridged)::

    {"status": "Succeeded", "job": "tiny-cpu", "originalContextLength": 128, "lengths": [128, 256, 512],
     "baseline": {"ropeTheta": 10000.0, "passkeyAccuracy": {"128": 1.0, "512": 0.0}, "perplexity": {...},
                  "positionLoss": [{"from": 0, "to": 128, "loss": 1.31}, ...]},
     "stages": [{"index": 1, "seqLen": 256, "ropeTheta": 30483.2, "finalLoss": 1.2, "stepsDone": 600,
                 "passkeyAccuracy": {...}, "perplexity": {...}, "positionLoss": [...], "gates": [...]}],
     "checks": [{"name": "...", "value": 0.96, "limit": 0.9, "passed": true}], "wallSeconds": 402.1}

``checks`` are the claims of the demo, computed from the numbers above: the base model fails
retrieval at the longest length, the extended model retrieves there and still at L0, loss beyond
L0 stays within 10% of the loss within L0, and perplexity at L0 rises by at most 10%.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from ctxext.local_run.layout import Workdir
from ctxext.planner import Plan
from ctxext.results import StageResult

METRICS = ("passkeyAccuracy", "perplexity")
LOSS_PLOT = "loss_by_position.png"


def _metrics(evaluation: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {m: dict(evaluation.get(m) or {}) for m in METRICS}
    out["positionLoss"] = list(evaluation.get("positionLoss") or [])
    extra = {k: v for k, v in evaluation.items() if k not in out and k != "plots"}
    out.update(extra)
    return out


def stage_entry(result: StageResult) -> dict[str, Any]:
    """One stage's row of report.json."""
    entry: dict[str, Any] = {
        "index": result.stage, "seqLen": result.seq_len, "ropeTheta": result.rope_theta,
        "finalLoss": result.final_loss, "status": result.status, "stepsDone": result.steps_done,
        "totalSteps": result.total_steps, "resumedFromStep": result.resumed_from_step,
        "wallSeconds": result.wall_seconds, "tokensPerSecond": result.tokens_per_second,
        "learningRate": result.learning_rate, "modelPath": result.model_path,
    }
    entry.update(_metrics(result.evaluation))
    entry["gates"] = list(result.gates)
    entry["plots"] = list(result.evaluation.get("plots") or [])
    if result.reason:
        entry["reason"] = result.reason
    return entry


def beyond_within_ratio(position_loss: list[dict[str, Any]], original_length: int) -> float | None:
    """Mean loss of the buckets at or beyond L0 over the loss of the buckets within L0.

    >>> beyond_within_ratio([{"from": 0, "to": 128, "loss": 2.0}, {"from": 128, "to": 256, "loss": 1.9},
    ...                      {"from": 256, "to": 512, "loss": 2.1}], 128)
    1.0
    """
    within = [b["loss"] for b in position_loss if b["to"] <= original_length]
    beyond = [b["loss"] for b in position_loss if b["from"] >= original_length]
    if not within or not beyond:
        return None
    return round((sum(beyond) / len(beyond)) / (sum(within) / len(within)), 6)


def _at(metrics: dict[str, Any], metric: str, length: int) -> float | None:
    value = (metrics.get(metric) or {}).get(str(length))
    return float(value) if isinstance(value, int | float) else None


def checks(baseline: dict[str, Any], final: dict[str, Any], *, original: int, longest: int) -> list[dict[str, Any]]:
    """The demo's claims, each with its value, limit and outcome (value None = not measured)."""
    out: list[dict[str, Any]] = []

    def add(name: str, value: float | None, limit: float, upper: bool) -> None:
        passed = None if value is None else (value <= limit if upper else value >= limit)
        out.append({"name": name, "value": value, "limit": limit, "passed": passed})

    add(f"base model passkey accuracy at {longest} (fails before extension)",
        _at(baseline, "passkeyAccuracy", longest), 0.3, True)
    add(f"extended model passkey accuracy at {longest}", _at(final, "passkeyAccuracy", longest), 0.9, False)
    add(f"extended model passkey accuracy at {original}", _at(final, "passkeyAccuracy", original), 0.9, False)
    add(f"held-out loss beyond {original} / loss within {original} (at {longest})",
        beyond_within_ratio(final.get("positionLoss") or [], original), 1.10, True)
    base_ppl, final_ppl = _at(baseline, "perplexity", original), _at(final, "perplexity", original)
    add(f"perplexity increase at {original} over the base model",
        None if base_ppl is None or final_ppl is None else round(final_ppl / base_ppl - 1.0, 6), 0.10, True)
    return out


def run_lengths(plan: Plan, evaluation_lengths: list[int] | None = None) -> list[int]:
    """L0, every stage length and any evaluation.lengths: where the base model and the report are measured."""
    return sorted({plan.original_context_length, *(s.seq_len for s in plan.stages), *(evaluation_lengths or [])})


def build_report(*, job_name: str, plan: Plan, baseline: dict[str, Any], results: list[StageResult],
                 status: str, wall_seconds: float, model_path: str | None,
                 lengths: list[int] | None = None) -> dict[str, Any]:
    """report.json's content (``lengths``: default :func:`run_lengths` of the plan)."""
    lengths = lengths or run_lengths(plan)
    stages = [stage_entry(r) for r in results]
    base = {"ropeTheta": plan.base_rope_theta, **_metrics(baseline), "plots": list(baseline.get("plots") or [])}
    final = stages[-1] if stages and status == "Succeeded" else {}
    return {
        "status": status, "job": job_name, "originalContextLength": plan.original_context_length,
        "targetContextLength": plan.target_context_length, "thetaRule": plan.theta_rule, "lengths": lengths,
        "baseline": base, "stages": stages,
        "checks": checks(base, final, original=plan.original_context_length, longest=lengths[-1]) if final else [],
        "wallSeconds": round(wall_seconds, 1), "modelPath": model_path,
    }


# report.md: the tables, the stages' heatmaps and a loss-by-position plot (matplotlib, when installed)



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
    if any(m.get("retrievalAccuracy") for _, m in _rows(report)):
        lines += ["## Effective length", "", "Mean accuracy over the retrieval tasks run, by length; the effective "
                  "length is the longest length up to which it stays at or above the threshold "
                  f"({report['baseline'].get('effectiveLengthThreshold', 0.85):g}; RULER's definition).", "",
                  *metric_table(report, "retrievalAccuracy", ".2f"), "",
                  "| model | effective length | by task |", "|---|---:|---|"]
        lines += [f"| {name} | {_fmt(m.get('effectiveLength'), ',d')} | "
                  + ", ".join(f"{t} {v:,}" for t, v in (m.get("effectiveLengthByTask") or {}).items()) + " |"
                  for name, m in _rows(report)]
        lines.append("")
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
            rel = os.path.relpath(os.path.abspath(p), os.path.abspath(wd.root))  # from report.md's folder
            lines += [f"{index}: `{Path(p).name}`", "", f"![{index} {Path(p).stem}]({rel})", ""]
    wd.report_md.write_text("\n".join(lines) + "\n")
    return wd.report_md
