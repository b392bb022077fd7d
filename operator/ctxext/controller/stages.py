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
from ctxext.controller.model import (
    CreateJob,
    Decision,
    Event,
    Inputs,
    SetSuspend,
    describe_reason,
    retry_message,
)
from ctxext.controller.observe import format_time, parse_time
from ctxext.decide import NextAttempt, Verdict, judge, next_attempt, stop_message
from ctxext.naming import pytorchjob_name

WAIT, ADVANCE, FAILED = "wait", "advance", "failed"


class StagePass:
    """Moves one stage forward; reports the job-level failure (if any) in :attr:`failure`."""

    def __init__(self, inp: Inputs, spec: ContextExtensionJobSpec, decision: Decision, total: int):
        self.inp, self.spec, self.d, self.total = inp, spec, decision, total
        self.now = format_time(inp.now)
        self.results: dict[str, Any] = inp.status.get("results") or {}
        self.failure: tuple[str, str] | None = None  # (reason, message)
        self.degraded: str | None = None
        self.baseline: dict[str, Any] | None = None
        """status.baseline (the base model's evaluation job), when the gates need one."""

    # -- helpers -------------------------------------------------------------------------------
    def _phase(self, s: dict[str, Any], phase: str) -> None:
        if s.get("phase") != phase:
            self.d.transitions.append((s.get("phase") or "Pending", phase))
            s["phase"] = phase

    def _event(self, kind: str, reason: str, message: str) -> None:
        self.d.events.append(Event(kind, reason, message))

    def _label(self, s: dict[str, Any]) -> str:
        return "baseline evaluation" if s["index"] == 0 else f"stage {s['index']}/{self.total}"

    def _baseline(self) -> dict[str, Any] | None:
        """The base model's evaluation recorded in status.baseline (None before it is)."""
        evaluation = ((self.baseline or {}).get("result") or {}).get("evaluation")
        return evaluation if isinstance(evaluation, dict) else None

    def _verdict_code(self, s: dict[str, Any], result: Any) -> str | None:
        """reasonCode of the failed attempt ``s['jobName']`` (re-judged: level-based, nothing stored)."""
        if isinstance(result, dict) and result.get("status") == "Succeeded" and s["index"] > 0:
            return self._judge(s, result).code
        return result.get("reasonCode") if isinstance(result, dict) else None

    def _next(self, s: dict[str, Any], code: str | None) -> NextAttempt:
        """The next attempt after the current one failed with ``code`` (:func:`ctxext.decide.next_attempt`)."""
        plan, index = self.inp.plan, s["index"]
        planned = plan.stages[index - 1].steps if plan is not None and index > 0 else int(s.get("steps") or 0)
        return next_attempt(code, attempt=int(s.get("attempts") or 1), policy=self.spec.failure_policy,
                            learning_rate=s.get("learningRate"), steps=s.get("steps"), planned_steps=planned)

    def _judge(self, s: dict[str, Any], result: Any) -> Verdict:
        return judge(result, gates=self.spec.evaluation.gates, stage_seq_len=s["seqLen"],
                     original_length=self._original_length(), baseline=self._baseline())

    def _create(self, s: dict[str, Any], attempt: int, lr: float | None, steps: int | None = None) -> None:
        name = pytorchjob_name(self.inp.name, s["index"], attempt)
        self.d.creates.append(CreateJob(s["index"], attempt, lr, steps if s["index"] > 0 else None))
        s.update(attempts=attempt, jobName=name, learningRate=lr, nextAttemptTime=None)
        if steps is not None:
            s["steps"] = steps
        s.setdefault("startTime", self.now)
        self._phase(s, "Running")
        s["message"] = f"{self._label(s)} attempt {attempt} started (PyTorchJob {name})"
        self._event("Normal", "StageStarted", s["message"])
        if attempt > 1 and self.degraded is None:
            self.degraded = f"{self._label(s)} is on attempt {attempt}"

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
            if found.steps is not None and index > 0:  # a gate retry's total, not the plan's
                s["steps"] = found.steps
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
            if attempt == 0:
                self._create(s, 1, plan.stages[index - 1].learning_rate if index > 0 else None)
            else:
                result = self.results.get(s.get("jobName") or "")
                n = self._next(s, self._verdict_code(s, result))
                self._create(s, attempt + 1, n.learning_rate, n.steps)
            return WAIT
        job = mine.get(attempt)
        result = self.results.get(s["jobName"])
        state = job.state if job else (result.get("status") if isinstance(result, dict) else None)
        if state is None:  # deleted before it finished: create it again under the same name
            if plan is not None:
                steps = s.get("steps") if index else None
                self.d.creates.append(CreateJob(index, attempt, s.get("learningRate"), steps))
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
        s["message"] = f"{self._label(s)} attempt {attempt}: PyTorchJob {s['jobName']} is {state}"
        if attempt > 1:
            self.degraded = f"{self._label(s)} is on attempt {attempt}"
        return WAIT

    def _succeeded(self, s: dict[str, Any], result: Any, finished: Any) -> str:
        label = self._label(s)
        if not isinstance(result, dict):
            deadline = (finished or self.inp.now) + timedelta(seconds=self.inp.result_grace_seconds)
            if deadline > self.inp.now:
                s["message"] = f"{label}: PyTorchJob {s['jobName']} succeeded; waiting for its stage result"
                self.d.wake(deadline)
                return WAIT
            result = None
        if s["index"] == 0:  # the base model's evaluation: no gates, it must have a result
            verdict = judge(result, gates=[], stage_seq_len=s["seqLen"], original_length=self._original_length(),
                            baseline=None)
        else:
            verdict = self._judge(s, result)
        if isinstance(result, dict) and verdict.gates:  # the outcomes beside the numbers, as `ctxext run` keeps them
            result = {**result, "gates": [o.to_dict() for o in verdict.gates]}
        if not verdict.passed:
            s["result"] = result
            return self._failed(s, verdict.reason or "", verdict.code, result)
        self._phase(s, "Succeeded")
        assert isinstance(result, dict)
        loss = result.get("finalLoss")
        s.update(completionTime=self.now, result=result,
                 message=f"{label} succeeded" + (f" (loss {loss:.4g})" if isinstance(loss, float) else ""))
        self._event("Normal", "StageSucceeded", s["message"])
        started = parse_time(s.get("startTime"))
        if started and s["index"] > 0:
            self.d.stage_durations.append(max(0.0, (self.inp.now - started).total_seconds()))
        return ADVANCE

    def _original_length(self) -> int:
        plan = self.inp.plan
        return plan.original_context_length if plan else int(self.spec.model.original_context_length or 0)

    def _failed(self, s: dict[str, Any], reason: str, code: str | None, result: Any) -> str:
        label, attempt = self._label(s), int(s["attempts"])
        n = self._next(s, code)
        if not n.retry:
            message = stop_message(label, attempt, reason, n.why_not)
            if s["index"] == 0:
                return self._fail(s, "BaselineFailed", f"the base model could not be evaluated, so no stage was "
                                  f"trained: {message}")
            return self._fail(s, code or "StageFailed", message)
        delay = n.delay_seconds  # = backoffSeconds·2^(next attempt − 2)
        s["nextAttemptTime"] = format_time(self.inp.now + timedelta(seconds=delay))
        if delay > 0:
            self.d.wake(self.inp.now + timedelta(seconds=delay))
        self._phase(s, "Running")
        s["message"] = retry_message(label, attempt, reason, result if isinstance(result, dict) else None,
                                     delay, n.learning_rate, n.steps if code == "GateFailed" else None)
        self._event("Warning", "StageRetrying", s["message"])
        self.degraded = s["message"]
        if delay <= 0 and not self.spec.suspend and self.inp.plan is not None:
            self._create(s, attempt + 1, n.learning_rate, n.steps)
        return WAIT
