"""report.json and report.md of a local run, assembled from the baseline and the stage results. Pure.

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

from typing import Any

from ctxext.planner import Plan
from ctxext.results import StageResult

METRICS = ("passkeyAccuracy", "perplexity")


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


def build_report(*, job_name: str, plan: Plan, baseline: dict[str, Any], results: list[StageResult],
                 status: str, wall_seconds: float, model_path: str | None) -> dict[str, Any]:
    """report.json's content."""
    lengths = sorted({plan.original_context_length, *(s.seq_len for s in plan.stages)})
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
