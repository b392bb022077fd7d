"""One stage of one reconcile pass: start, watch, succeed (gates), retry or fail. Pure.

State kept in ``status.stages[i]`` (camelCase): ``attempts`` is the newest attempt created;
``nextAttemptTime`` set means that attempt failed and attempt ``attempts + 1`` starts then. Anything
the status may have missed (an operator killed between creating a PyTorchJob and writing status)
is re-derived from the PyTorchJobs themselves: the highest attempt found wins.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from ctxext.api.job import ContextExtensionJobSpec
from ctxext.api.spec import OnGateFailure, OnNonFinite
from ctxext.controller.model import (
    NUMERIC_FAULTS,
    CreateJob,
    Decision,
    Event,
    Inputs,
    SetSuspend,
    describe_reason,
    retry_message,
)
from ctxext.controller.observe import format_time, parse_time
from ctxext.naming import pytorchjob_name
from ctxext.results import PERMANENT_REASON_CODES, trusted_results

WAIT, ADVANCE, FAILED = "wait", "advance", "failed"


class StagePass:
    """Moves one stage forward; reports the job-level failure (if any) in :attr:`failure`."""

    def __init__(self, inp: Inputs, spec: ContextExtensionJobSpec, decision: Decision, total: int):
        self.inp, self.spec, self.d, self.total = inp, spec, decision, total
        self.now = format_time(inp.now)
        # Only results this attempt's trainer signed count (any trainer may patch any job's status).
        self.results: dict[str, Any] = trusted_results(inp.status.get("results") or {},
                                                       {j.name: j.result_key for j in inp.jobs})
        self.failure: tuple[str, str] | None = None  # (reason, message)
        self.degraded: str | None = None

    # -- helpers -------------------------------------------------------------------------------
    def _phase(self, s: dict[str, Any], phase: str) -> None:
        if s.get("phase") != phase:
            self.d.transitions.append((s.get("phase") or "Pending", phase))
            s["phase"] = phase

    def _event(self, kind: str, reason: str, message: str) -> None:
        self.d.events.append(Event(kind, reason, message))

    def _label(self, s: dict[str, Any]) -> str:
        return f"{s['index']}/{self.total}"

    def _baseline(self) -> dict[str, Any] | None:
        for r in self.results.values():
            if isinstance(r, dict) and r.get("baseline"):
                return r["baseline"]
        return None

    def _next_lr(self, s: dict[str, Any]) -> float | None:
        """Learning rate of the next attempt: lowered after non-finite gradients or loss spikes."""
        fp = self.spec.failure_policy
        result = self.results.get(s.get("jobName") or "") or {}
        lr = s.get("learningRate")
        if lr is not None and result.get("reasonCode") in NUMERIC_FAULTS and \
                fp.on_non_finite_gradients == OnNonFinite.RETRY_WITH_LOWER_LR:
            return float(lr) * fp.learning_rate_backoff
        return lr

    def _create(self, s: dict[str, Any], attempt: int, lr: float | None) -> None:
        name = pytorchjob_name(self.inp.name, s["index"], attempt)
        self.d.creates.append(CreateJob(s["index"], attempt, lr))
        s.update(attempts=attempt, jobName=name, learningRate=lr, nextAttemptTime=None)
        s.setdefault("startTime", self.now)
        self._phase(s, "Running")
        s["message"] = f"stage {self._label(s)} attempt {attempt} started (PyTorchJob {name})"
        self._event("Normal", "StageStarted", s["message"])
        if attempt > 1 and self.degraded is None:
            self.degraded = f"stage {self._label(s)} is on attempt {attempt}"

    def _fail(self, s: dict[str, Any], reason: str, message: str) -> str:
        self._phase(s, "Failed")
        s.update(completionTime=self.now, message=message)
        self.failure = (reason, message)
        return FAILED

    # -- the state machine -----------------------------------------------------------------------
    def step(self, s: dict[str, Any]) -> str:
        """Advance stage ``s`` (mutated in place); WAIT, ADVANCE (it succeeded) or FAILED."""
        index, plan = s["index"], self.inp.plan
        mine = {j.attempt: j for j in self.inp.jobs if j.stage == index}
        top = max(mine, default=0)
        if top > int(s.get("attempts") or 0):  # created before a crash, status not yet written: adopt it
            found = mine[top]
            s.update(attempts=top, jobName=found.name, nextAttemptTime=None,
                     learningRate=found.learning_rate if found.learning_rate is not None else s.get("learningRate"))
            s.setdefault("startTime", self.now)
            self._phase(s, "Running")
        attempt = int(s.get("attempts") or 0)
        if attempt == 0 or s.get("nextAttemptTime"):
            if attempt:  # a retry is pending (its backoff, or a suspension, may still hold it)
                self.degraded = s.get("message")
            due = parse_time(s.get("nextAttemptTime"))
            if attempt and due and due > self.inp.now:
                self.d.wake(due)
                return WAIT
            if self.spec.suspend or plan is None:
                return WAIT
            lr = plan.stages[index - 1].learning_rate if attempt == 0 else self._next_lr(s)
            self._create(s, attempt + 1, lr)
            return WAIT
        job = mine.get(attempt)
        result = self.results.get(s["jobName"])
        state = job.state if job else (result.get("status") if isinstance(result, dict) else None)
        if state is None:  # deleted before it finished: create it again under the same name
            if plan is not None:
                self.d.creates.append(CreateJob(index, attempt, s.get("learningRate")))
            return WAIT
        if state == "Succeeded" and isinstance(result, dict) and result.get("status") == "Failed":
            state = "Failed"  # the pod exited 0 but the trainer says the stage failed: believe the trainer
        if state == "Succeeded":
            return self._succeeded(s, result, job.finished_at if job else None)
        if state == "Failed":
            code = result.get("reasonCode") if isinstance(result, dict) else None
            return self._failed(s, describe_reason(result, job.message if job else None), code, result)
        if job is not None and job.suspended != self.spec.suspend:
            self.d.suspends.append(SetSuspend(job.name, self.spec.suspend))
        self._phase(s, "Running")
        s["message"] = f"stage {self._label(s)} attempt {attempt}: PyTorchJob {s['jobName']} is {state}"
        if attempt > 1:
            self.degraded = f"stage {self._label(s)} is on attempt {attempt}"
        return WAIT

    def _succeeded(self, s: dict[str, Any], result: Any, finished: Any) -> str:
        label, spec = self._label(s), self.spec
        if not isinstance(result, dict):
            deadline = (finished or self.inp.now) + timedelta(seconds=self.inp.result_grace_seconds)
            if deadline > self.inp.now:
                s["message"] = f"stage {label}: PyTorchJob {s['jobName']} succeeded; waiting for its stage result"
                self.d.wake(deadline)
                return WAIT
            result = None
        gates = spec.evaluation.gates if spec.evaluation.enabled else []
        if gates:
            from ctxext.gates import evaluate_gates

            outcomes = evaluate_gates(gates, (result or {}).get("evaluation") or {}, baseline=self._baseline(),
                                      stage_seq_len=s["seqLen"], original_length=self._original_length())
            missed = [o.message for o in outcomes if not o.passed]
            if missed:
                why = "evaluation gate not met: " + "; ".join(missed)
                s["result"] = result
                if spec.failure_policy.on_gate_failure == OnGateFailure.RETRY:
                    return self._failed(s, why, "GateFailed", result)
                return self._fail(s, "GateFailed", f"stage {label} failed: {why}")
        self._phase(s, "Succeeded")
        loss = (result or {}).get("finalLoss")
        s.update(completionTime=self.now, result=result,
                 message=f"stage {label} succeeded" + (f" (loss {loss:.4g})" if isinstance(loss, float) else "")
                 + ("" if result else "; the trainer reported no result"))
        self._event("Normal", "StageSucceeded", s["message"])
        started = parse_time(s.get("startTime"))
        if started:
            self.d.stage_durations.append(max(0.0, (self.inp.now - started).total_seconds()))
        return ADVANCE

    def _original_length(self) -> int:
        plan = self.inp.plan
        return plan.original_context_length if plan else int(self.spec.model.original_context_length or 0)

    def _failed(self, s: dict[str, Any], reason: str, code: str | None, result: Any) -> str:
        label, attempt = self._label(s), int(s["attempts"])
        fp = self.spec.failure_policy
        if code in NUMERIC_FAULTS and fp.on_non_finite_gradients == OnNonFinite.FAIL:
            return self._fail(s, code or "StageFailed", f"stage {label} attempt {attempt} failed: {reason}; "
                              "failurePolicy.onNonFiniteGradients is Fail")
        if code in PERMANENT_REASON_CODES:
            return self._fail(s, code or "StageFailed", f"stage {label} attempt {attempt} failed: {reason}; "
                              "retrying cannot help")
        if attempt >= fp.max_retries + 1:
            tries = f"after {attempt} attempts" if attempt > 1 else "(no retries allowed)"
            return self._fail(s, code or "StageFailed", f"stage {label} failed {tries}: {reason}")
        delay = fp.backoff_seconds * 2 ** (attempt - 1)  # = backoffSeconds·2^(next attempt − 2)
        s["nextAttemptTime"] = format_time(self.inp.now + timedelta(seconds=delay))
        if delay > 0:
            self.d.wake(self.inp.now + timedelta(seconds=delay))
        self._phase(s, "Running")
        s["message"] = retry_message(label, attempt, reason, result if isinstance(result, dict) else None,
                                     delay, self._next_lr(s))
        self._event("Warning", "StageRetrying", s["message"])
        self.degraded = s["message"]
        if delay <= 0 and not self.spec.suspend and self.inp.plan is not None:
            self._create(s, attempt + 1, self._next_lr(s))
        return WAIT
