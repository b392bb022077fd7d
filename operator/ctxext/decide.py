"""The one decision logic of `ctxext run` and the operator. Pure; no I/O, no torch.

Both paths ask the same four questions and get their answers here:

* **What is evaluated, and when?** The base model is evaluated once, before stage 1, whenever
  evaluation is enabled (:func:`baseline_needed`), at stage 1's evaluation lengths
  (:func:`baseline_lengths`: ``evaluation.lengths`` if set, else L0 and stage 1's seqLen), with
  stage 1's processes. Stage *i* is evaluated after training at :func:`evaluated_lengths`.
* **Can the gates ever be judged?** :func:`gate_problems` refuses, before anything runs, a gate
  on a task that is not evaluated, at a length that is never evaluated, a ``maxIncrease`` gate the
  baseline cannot serve, and gates with evaluation disabled (``ctxext validate``, ``ctxext run``
  and the operator's ``InvalidSpec`` all call it through the planner).
* **Did the attempt pass?** :func:`judge`: no result is a failed attempt, a failed result is a
  failed attempt, and a succeeded one must pass every gate.
* **What does the next attempt do?** :func:`next_attempt`. Permanent failures and
  ``onNonFiniteGradients: Fail`` end the job; otherwise up to ``maxRetries`` more attempts, each after
  ``backoffSeconds·2^(n−1)``. A retry after non-finite gradients or loss spikes lowers the learning
  rate (``RetryWithLowerLR``). A **gate retry** (``onGateFailure: Retry``) trains the stage further:
  it resumes from the stage's final checkpoint and runs the stage's planned steps once more (on data
  the stream has not yet served), so the model the gate judges next has trained longer. Re-evaluating
  the same weights could not change the outcome; re-rolling the evaluation seed would only game it.

Worked example: a 150-step stage misses its passkey gate with ``onGateFailure: Retry``, 2 retries:

>>> from ctxext.api.spec import FailurePolicySpec
>>> policy = FailurePolicySpec(on_gate_failure="Retry", max_retries=2, backoff_seconds=0)
>>> n = next_attempt("GateFailed", attempt=1, policy=policy, learning_rate=1e-3, steps=150, planned_steps=150)
>>> (n.retry, n.steps, n.learning_rate, n.delay_seconds)
(True, 300, 0.001, 0.0)
>>> next_attempt("GateFailed", attempt=3, policy=policy, learning_rate=1e-3, steps=450, planned_steps=150).why_not
'exhausted'
>>> stop_message("stage 2/2", 3, "evaluation gate not met: ...", "exhausted")
'stage 2/2 failed after 3 attempts: evaluation gate not met: ...'
>>> next_attempt("NonFiniteGradients", attempt=1, policy=policy, learning_rate=1e-3, steps=150,
...              planned_steps=150).learning_rate
0.0005
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from ctxext.api.job import ContextExtensionJobSpec
from ctxext.api.spec import FailurePolicySpec, Gate, OnGateFailure, OnNonFinite
from ctxext.effective_length import RETRIEVAL_METRICS
from ctxext.gates import GateOutcome, evaluate_gates, failed_summary, resolve_length
from ctxext.planner import Plan
from ctxext.results import PERMANENT_REASON_CODES

NUMERIC_FAULTS = ("NonFiniteGradients", "LossSpikes")
NO_RESULT = "the trainer reported no stage result"
#: metric → the evaluation task that measures it (retrievalAccuracy / effectiveLength: any retrieval task).
METRIC_TASK = {metric: task for task, metric in RETRIEVAL_METRICS.items()} | {"perplexity": "perplexity"}


def evaluated_lengths(spec: ContextExtensionJobSpec, plan: Plan, stage_index: int) -> list[int]:
    """Where stage ``stage_index`` is evaluated: evaluation.lengths, else L0 and every stage length so far.

    (The same rule as :func:`ctxext.stage_config.eval_lengths`, which the stage configs use.)"""
    if spec.evaluation.lengths:
        return sorted(set(spec.evaluation.lengths))
    return [plan.original_context_length] + [s.seq_len for s in plan.stages if s.index <= stage_index]


def baseline_needed(spec: ContextExtensionJobSpec, *, report: bool = False) -> bool:
    """Whether the base model is evaluated: when a gate compares with it (``maxIncrease``), or, with
    ``report`` (`ctxext run` writes one), whenever evaluation is enabled. The operator evaluates it
    for the gates only: on a cluster it is one more job on stage 1's GPUs.

    >>> from ctxext.api.job import ContextExtensionJobSpec
    >>> spec = ContextExtensionJobSpec.model_validate({"model": {"source": "builtin://tiny"},
    ...     "targetContextLength": 256, "evaluation": {"gates": [{"metric": "perplexity", "maxIncrease": 0.1}]}})
    >>> baseline_needed(spec), baseline_needed(spec.model_copy(update={"evaluation": spec.evaluation.model_copy(
    ...     update={"gates": []})}))
    (True, False)
    """
    ev = spec.evaluation
    return bool(ev.enabled) and (report or any(g.max_increase is not None for g in ev.gates))


def baseline_lengths(spec: ContextExtensionJobSpec, plan: Plan) -> list[int]:
    """Stage 1's evaluation lengths: what stage 1's processes can evaluate (a 1M-token baseline would
    need the last stage's nodes)."""
    return evaluated_lengths(spec, plan, 1)


def _gate_field(i: int) -> str:
    return f"spec.evaluation.gates[{i}]"


def gate_problems(spec: ContextExtensionJobSpec, plan: Plan) -> list[tuple[str, str]]:
    """Every gate that could never be judged, as ``(field, plain words)``; empty when all can be."""
    ev = spec.evaluation
    if ev.gates and not ev.enabled:
        return [("spec.evaluation.enabled", f"{len(ev.gates)} gate(s) are set but evaluation is disabled, so no "
                 "stage could ever pass them: enable evaluation or remove the gates")]
    tasks = {str(t) for t in ev.tasks}
    retrieval = sorted(tasks & set(RETRIEVAL_METRICS))
    base = baseline_lengths(spec, plan)
    out: list[tuple[str, str]] = []
    for i, gate in enumerate(ev.gates):
        metric = str(gate.metric)
        if metric in ("retrievalAccuracy", "effectiveLength"):
            if not retrieval:
                out.append((_gate_field(i), f"{metric} needs a retrieval task (passkey, needle, multiKeyNiah, "
                            f"multiValueNiah or variableTracking) in evaluation.tasks, which has {sorted(tasks)}"))
            if metric == "effectiveLength":
                continue
        elif METRIC_TASK[metric] not in tasks:
            out.append((_gate_field(i), f"{metric} is gated but evaluation.tasks {sorted(tasks)} does not run "
                        f"{METRIC_TASK[metric]}: add it to evaluation.tasks or remove the gate"))
            continue
        for stage in plan.stages:
            length = resolve_length(gate.at_length, stage_seq_len=stage.seq_len,
                                    original_length=plan.original_context_length)
            lengths = evaluated_lengths(spec, plan, stage.index)
            if length not in lengths:
                out.append((f"{_gate_field(i)}.atLength", f"{metric} is gated at {length} tokens, but stage "
                            f"{stage.index} is evaluated only at {lengths}: add {length} to evaluation.lengths"))
                break
            if gate.max_increase is not None and length not in base:
                out.append((f"{_gate_field(i)}.maxIncrease", f"{metric} maxIncrease at {length} tokens (stage "
                            f"{stage.index}) needs the base model's {metric} at {length}, but the base model is "
                            f"evaluated only at stage 1's lengths {base}: list {length} in evaluation.lengths "
                            "or gate with max instead"))
                break
    return out


@dataclass(frozen=True)
class Verdict:
    """How one stage attempt went."""

    passed: bool
    reason: str | None = None
    """Plain words, when it did not pass."""
    code: str | None = None
    """reasonCode: the trainer's, GateFailed, or NoResult."""
    gates: list[GateOutcome] = field(default_factory=list)


def judge(result: Mapping[str, Any] | None, *, gates: Sequence[Gate], stage_seq_len: int,
          original_length: int, baseline: Mapping[str, Any] | None) -> Verdict:
    """The verdict on an attempt's result (the wire dict of :class:`ctxext.results.StageResult`, or None).

    >>> gates = [Gate(metric="passkeyAccuracy", min=0.8)]
    >>> judge(None, gates=gates, stage_seq_len=256, original_length=128, baseline=None).reason
    'the trainer reported no stage result'
    >>> v = judge({"status": "Succeeded", "evaluation": {"passkeyAccuracy": {"256": 0.5}}}, gates=gates,
    ...           stage_seq_len=256, original_length=128, baseline=None)
    >>> (v.passed, v.code, v.reason)
    (False, 'GateFailed', 'evaluation gate not met: passkeyAccuracy at 256 = 0.5 < min 0.8')
    """
    if not isinstance(result, Mapping):
        return Verdict(False, NO_RESULT, "NoResult")
    if result.get("status") != "Succeeded":
        code = result.get("reasonCode")
        reason = result.get("reason") or code or "the trainer reported a failure without a reason"
        return Verdict(False, str(reason), str(code) if code else None)
    evaluation = result.get("evaluation")
    outcomes = evaluate_gates(list(gates), dict(evaluation) if isinstance(evaluation, Mapping) else {},
                              baseline=dict(baseline) if baseline else None, stage_seq_len=stage_seq_len,
                              original_length=original_length)
    missed = failed_summary(outcomes)
    if missed:
        return Verdict(False, f"evaluation gate not met: {missed}", "GateFailed", outcomes)
    return Verdict(True, None, None, outcomes)


@dataclass(frozen=True)
class NextAttempt:
    """Whether and how a failed attempt is retried."""

    retry: bool
    why_not: str | None = None
    """When not: onGateFailure, onNonFiniteGradients, permanent or exhausted (see :func:`stop_message`)."""
    delay_seconds: float = 0.0
    learning_rate: float | None = None
    """Peak learning rate of the next attempt."""
    steps: int | None = None
    """Total steps of the next attempt (more than this one's after a gate failure)."""


def next_attempt(code: str | None, *, attempt: int, policy: FailurePolicySpec, learning_rate: float | None,
                 steps: int | None, planned_steps: int, preemptions: int = 0) -> NextAttempt:
    """What follows failed attempt ``attempt`` (1-based) whose reasonCode is ``code``.

    ``preemptions``: earlier attempts of the stage that were preempted; they spend no retries, so
    only ``attempt − preemptions`` failures count against ``maxRetries`` and the backoff. The
    learning rate and steps of the would-be next attempt are filled in even when it is refused.
    """
    lr = learning_rate
    if lr is not None and code in NUMERIC_FAULTS:  # on_non_finite_gradients is RetryWithLowerLR when retried
        lr = lr * policy.learning_rate_backoff
    total = steps if steps is not None else planned_steps
    if code == "GateFailed":
        total += planned_steps
    failures = max(1, attempt - preemptions)
    if code == "GateFailed" and policy.on_gate_failure != OnGateFailure.RETRY:
        return NextAttempt(False, "onGateFailure", 0.0, lr, total)
    if code in NUMERIC_FAULTS and policy.on_non_finite_gradients == OnNonFinite.FAIL:
        return NextAttempt(False, "onNonFiniteGradients", 0.0, lr, total)
    if code in PERMANENT_REASON_CODES:
        return NextAttempt(False, "permanent", 0.0, lr, total)
    if failures >= policy.max_retries + 1:
        return NextAttempt(False, "exhausted", 0.0, lr, total)
    return NextAttempt(True, None, float(policy.backoff_seconds * 2 ** (failures - 1)), lr, total)


def stop_message(label: str, attempt: int, reason: str, why_not: str | None) -> str:
    """The job's failure message when :func:`next_attempt` says no more attempts (``label``: 'stage 2/4')."""
    if why_not == "onGateFailure":
        return f"{label} failed: {reason}"
    if why_not == "onNonFiniteGradients":
        return f"{label} attempt {attempt} failed: {reason}; failurePolicy.onNonFiniteGradients is Fail"
    if why_not == "permanent":
        return f"{label} attempt {attempt} failed: {reason}; retrying cannot help"
    return f"{label} failed {f'after {attempt} attempts' if attempt > 1 else '(no retries allowed)'}: {reason}"
