"""Stage gates: decide from a stage's evaluation whether the curriculum may go on. Pure; no torch.

A gate (``spec.evaluation.gates[]``, :class:`ctxext.api.spec.Gate`) names a metric, the length it is
read at (``stage`` = the stage's seqLen, ``original`` = L0, or a number of tokens) and one or more
bounds: ``min``, ``max``, ``maxIncrease`` (relative to the base model at the same length, read from
the stage result's ``baseline``). Every bound must hold. The evaluation has the stage-result format
(``{"passkeyAccuracy": {"512": 0.62}, "perplexity": {"128": 3.4}, ...}``, string length keys).

Worked example (the messages quote the numbers, so a failed stage says why):

>>> from ctxext.api.spec import Gate
>>> gates = [Gate(metric="passkeyAccuracy", at_length="stage", min=0.9),
...          Gate(metric="perplexity", at_length="original", max_increase=0.05)]
>>> evaluation = {"passkeyAccuracy": {"128": 1.0, "512": 0.62}, "perplexity": {"128": 3.4}}
>>> out = evaluate_gates(gates, evaluation, baseline={"perplexity": {"128": 3.1}},
...                      stage_seq_len=512, original_length=128)
>>> [o.passed for o in out]
[False, False]
>>> failed_summary(out)
"passkeyAccuracy at 512 = 0.62 < min 0.9; perplexity at 128 = 3.4 is +9.7% over the base model's 3.1 (maxIncrease 5%)"
>>> out[0].to_dict()["atLength"]
512
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from ctxext.api.spec import Gate


@dataclass(frozen=True)
class GateOutcome:
    """The verdict on one gate."""

    metric: str
    """Metric name (e.g. passkeyAccuracy)."""
    at_length: int
    """Resolved length in tokens."""
    value: float | None
    """Measured value; None when it was not measured."""
    passed: bool
    """Whether every bound of the gate holds."""
    message: str
    """Plain-words verdict quoting the numbers."""

    def to_dict(self) -> dict[str, Any]:
        """camelCase form stored in the stage result's ``gates`` list."""
        return {"metric": self.metric, "atLength": self.at_length, "value": self.value, "passed": self.passed,
                "message": self.message}


def _num(x: float) -> str:
    """Short number: ``_num(0.62) == '0.62'``, ``_num(3.09999) == '3.1'``, ``_num(0.93) == '0.93'``."""
    return f"{x:.4g}"


def _pct(x: float) -> str:
    """Relative value as percent: ``_pct(0.05) == '5%'``, ``_pct(0.125) == '12.5%'``."""
    return f"{x * 100:.4g}%"


def resolve_length(at_length: int | str, *, stage_seq_len: int, original_length: int) -> int:
    """'stage' → the stage's seqLen, 'original' → L0, a number (or numeric string) → itself.

    >>> resolve_length("original", stage_seq_len=512, original_length=128)
    128
    """
    if at_length == "stage":
        return stage_seq_len
    if at_length == "original":
        return original_length
    return int(at_length)


def _lookup(data: Mapping[str, Any] | None, metric: str, length: int) -> tuple[float | None, str | None]:
    """(value, None) or (None, why it is missing)."""
    if not data or metric not in data or not isinstance(data[metric], Mapping):
        have = sorted(k for k, v in (data or {}).items() if isinstance(v, Mapping))
        return None, f"was not measured (the evaluation has: {', '.join(have) or 'nothing'})"
    by_length = data[metric]
    raw = by_length.get(str(length), by_length.get(length))
    if raw is None:
        measured = ", ".join(sorted((str(k) for k in by_length), key=lambda s: (len(s), s))) or "none"
        return None, f"was not measured at {length} (measured at: {measured})"
    try:
        return float(raw), None
    except (TypeError, ValueError):
        return None, f"at {length} is not a number ({raw!r})"


def _check(gate: Gate, name: str, length: int, value: float, baseline: Mapping[str, Any] | None) -> list[str]:
    """Failures of each bound (empty = passed) — or, when all pass, the passing descriptions prefixed '+'."""
    failures: list[str] = []
    passes: list[str] = []
    head = f"{name} at {length} = {_num(value)}"
    if not math.isfinite(value):
        return [f"{head} is not finite"]
    if gate.min is not None:
        (passes if value >= gate.min else failures).append(
            f"{head} {'>=' if value >= gate.min else '<'} min {_num(gate.min)}")
    if gate.max is not None:
        (passes if value <= gate.max else failures).append(
            f"{head} {'<=' if value <= gate.max else '>'} max {_num(gate.max)}")
    if gate.max_increase is not None:
        base, why = _lookup(baseline, name, length)
        if base is None:
            need = f"{head}: maxIncrease {_pct(gate.max_increase)} needs the base model's {name} at {length}"
            failures.append(f"{need}, but there is no baseline evaluation" if not baseline
                            else f"{need}, but the baseline's {name} {why}")
        elif base <= 0 or not math.isfinite(base):
            failures.append(f"{head} cannot be compared with the base model's {_num(base)} (not a positive number)")
        else:
            rel = value / base - 1.0
            ok = rel <= gate.max_increase + 1e-12
            word = "over" if rel >= 0 else "under"
            limit = f"(maxIncrease {_pct(gate.max_increase)})"
            text = f"{head} is {rel * 100:+.1f}% {word} the base model's {_num(base)} {limit}"
            (passes if ok else failures).append(text)
    return failures if failures else ["+" + p for p in passes]


def _effective_length_gate(gate: Gate, evaluation: Mapping[str, Any], length: int) -> GateOutcome:
    """``effectiveLength`` (one number of tokens) against min/max, or against ``atLength`` without bounds.

    >>> from ctxext.api.spec import Gate
    >>> _effective_length_gate(Gate(metric="effectiveLength"), {"effectiveLength": 512}, 1024).message
    'effectiveLength = 512 < 1024 (atLength; threshold 0.85)'
    >>> _effective_length_gate(Gate(metric="effectiveLength", min=256), {"effectiveLength": 512}, 1024).passed
    True
    """
    name = "effectiveLength"
    raw = evaluation.get(name)
    if not isinstance(raw, int | float):
        return GateOutcome(name, length, None, False, f"{name} was not measured (no retrieval task ran)")
    value = float(raw)
    threshold = evaluation.get("effectiveLengthThreshold", 0.85)
    bounds = [(gate.min, ">=", value >= gate.min) if gate.min is not None else None,
              (gate.max, "<=", value <= gate.max) if gate.max is not None else None]
    checks = [b for b in bounds if b is not None] or [(float(length), ">=", value >= length)]
    failed = [(limit, op) for limit, op, ok in checks if not ok]
    where = " (atLength" if gate.min is None and gate.max is None else " (bound"
    if failed:
        limit, op = failed[0]
        message = f"{name} = {value:.0f} {'<' if op == '>=' else '>'} {limit:.0f}{where}; threshold {threshold:g})"
    else:
        message = "; ".join(f"{name} = {value:.0f} {op} {limit:.0f}" for limit, op, _ in checks)
    return GateOutcome(name, length, value, not failed, message)


def evaluate_gate(gate: Gate, evaluation: Mapping[str, Any], *, baseline: Mapping[str, Any] | None,
                  stage_seq_len: int, original_length: int) -> GateOutcome:
    """The outcome of one gate (see :func:`evaluate_gates`)."""
    name = str(gate.metric)
    length = resolve_length(gate.at_length, stage_seq_len=stage_seq_len, original_length=original_length)
    if name == "effectiveLength":
        return _effective_length_gate(gate, evaluation, length)
    value, why = _lookup(evaluation, name, length)
    if value is None:
        return GateOutcome(name, length, None, False, f"{name} {why}")
    parts = _check(gate, name, length, value, baseline)
    passed = all(p.startswith("+") for p in parts)
    message = "; ".join(p.lstrip("+") for p in parts)
    return GateOutcome(name, length, value, passed, message)


def evaluate_gates(gates: list[Gate], evaluation: dict[str, Any], *, baseline: dict[str, Any] | None,
                   stage_seq_len: int, original_length: int) -> list[GateOutcome]:
    """One :class:`GateOutcome` per gate, in order. A metric (or length) missing from the evaluation
    fails its gate with a message saying it was not measured; ``maxIncrease`` without a baseline
    value fails with a message saying so.

    >>> out = evaluate_gates([Gate(metric="needleAccuracy", min=0.5)], {}, baseline=None,
    ...                      stage_seq_len=256, original_length=128)
    >>> out[0].message
    'needleAccuracy was not measured (the evaluation has: nothing)'
    """
    return [evaluate_gate(g, evaluation, baseline=baseline, stage_seq_len=stage_seq_len,
                          original_length=original_length) for g in gates]


def failed_summary(outcomes: Iterable[GateOutcome]) -> str:
    """The messages of the failed gates joined by '; ' ('' when every gate passed)."""
    return "; ".join(o.message for o in outcomes if not o.passed)


def all_passed(outcomes: Iterable[GateOutcome]) -> bool:
    """True when every gate passed (also when there are none)."""
    return all(o.passed for o in outcomes)
