"""One stage of one reconcile pass: start, watch, succeed (gates), retry or fail. Pure.

State kept in ``status.stages[i]`` (camelCase): ``attempts`` is the newest attempt created;
``nextAttemptTime`` set means that attempt failed and attempt ``attempts + 1`` starts then. Anything
the status may have missed (an operator killed between creating a training job and writing status)
is re-derived from the training jobs (PyTorchJobs or TrainJobs) themselves: the highest attempt found wins.

Only training jobs whose controlling owner is this ContextExtensionJob (by UID) count: a same-named
predecessor's jobs awaiting garbage collection, or ones made by ``ctxext render``, are never adopted;
while one holds the name of the next attempt, nothing is created and the stage says why.

Cluster realities the state machine allows for:

* Kueue (``scheduling.queueName``): the job is created suspended and Kueue resumes it on admission;
  the operator only ever suspends (``spec.suspend``), never resumes. A suspended job of an unsuspended
  CEJ is *queued* (stage phase ``Queued``).
* A job that is gone without a stage result (``kubectl delete``, ``ttlSecondsAfterFinished``) is a
  failed attempt: it counts against ``maxRetries`` and waits out the backoff.
* Preemption (the trainer's ``reasonCode: Preempted``) is not the job's fault: the next attempt resumes
  at once without spending a retry (at most :data:`MAX_PREEMPTIONS` per stage).
* Pods of a finished attempt may still run while they terminate (SIGTERM → checkpoint → exit), so the
  next attempt of the same stage, which resumes from the same checkpoint directory, starts no earlier
  than the pods' ``terminationGracePeriodSeconds`` after the attempt ended, unless the trainer's own
  result shows a single-node attempt already exited.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from ctxext.api.job import ContextExtensionJobSpec
from ctxext.controller.builder import LABEL_ATTEMPT, LABEL_JOB, LABEL_STAGE
from ctxext.controller.model import (
    CreateJob,
    Decision,
    Event,
    Inputs,
    SetSuspend,
    describe_reason,
    retry_message,
)
from ctxext.controller.observe import ObservedJob, format_time, parse_time
from ctxext.decide import NextAttempt, Verdict, judge, next_attempt, stop_message
from ctxext.naming import pytorchjob_name
from ctxext.results import trusted_results

WAIT, ADVANCE, FAILED = "wait", "advance", "failed"
#: Preemptions of one stage that are resumed without spending a retry; more count as failures.
MAX_PREEMPTIONS = 20


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
        self.degraded_reason = "Retrying"
        self.queued: str | None = None  # why the current stage waits for Kueue
        self.active = False  # the current stage has a training job that has not finished
        self.foreign = {j.name: j for j in inp.jobs if j.owner_uid != inp.uid}
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
                            learning_rate=s.get("learningRate"), steps=s.get("steps"), planned_steps=planned,
                            preemptions=int(s.get("preemptions") or 0))

    def _judge(self, s: dict[str, Any], result: Any) -> Verdict:
        return judge(result, gates=self.spec.evaluation.gates, stage_seq_len=s["seqLen"],
                     original_length=self._original_length(), baseline=self._baseline())

    def _create(self, s: dict[str, Any], attempt: int, lr: float | None, steps: int | None = None) -> None:
        name = pytorchjob_name(self.inp.name, s["index"], attempt)
        if name in self.foreign:  # never adopt it: wait until it is deleted (its deletion starts a pass)
            s["message"] = (f"{self._label(s)} attempt {attempt} waits: {self.inp.job_kind} {name} already exists but "
                            "belongs to another ContextExtensionJob (a deleted one of the same name) or to none "
                            "(made by `ctxext render`); delete it to go on")
            self.degraded, self.degraded_reason = s["message"], "NameTaken"
            return
        self.d.creates.append(CreateJob(s["index"], attempt, lr, steps if s["index"] > 0 else None))
        s.update(attempts=attempt, jobName=name, learningRate=lr, nextAttemptTime=None)
        if steps is not None:
            s["steps"] = steps
        s.setdefault("startTime", self.now)
        self._phase(s, "Running")
        s["message"] = f"{self._label(s)} attempt {attempt} started ({self.inp.job_kind} {name})"
        self._event("Normal", "StageStarted", s["message"])
        if self.spec.scheduling.queue_name and not self.spec.suspend:  # created suspended: Kueue admits it
            self._phase(s, "Queued")
            s["message"] = self.queued = (f"{self._label(s)} attempt {attempt} is queued: {self.inp.job_kind} {name} "
                                          f"waits for admission by Kueue LocalQueue {self.spec.scheduling.queue_name}")
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
        mine = {j.attempt: j for j in self.inp.jobs if j.stage == index and j.owner_uid == self.inp.uid}
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
                self.degraded_reason = "Preempted" if " was preempted: " in str(self.degraded) else "Retrying"
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
        if state is None:  # gone without a result (deleted, or a TTL of 0): a failed attempt
            return self._failed(s, f"{self.inp.job_kind} {s['jobName']} was deleted before it reported a result", None,
                                None, None)
        if state == "Succeeded" and isinstance(result, dict) and result.get("status") == "Failed":
            state = "Failed"  # the pod exited 0 but the trainer says the stage failed: believe the trainer
        if state == "Succeeded":
            return self._succeeded(s, result, job.finished_at if job else None)
        if state == "Failed":
            code = result.get("reasonCode") if isinstance(result, dict) else None
            return self._failed(s, describe_reason(result, job.message if job else None), code, result,
                                job.finished_at if job else None)
        self.active = job is not None
        if attempt > 1:
            self.degraded = f"{self._label(s)} is on attempt {attempt}"
        if job is not None:
            self._watch(s, job)
        return WAIT

    def _watch(self, s: dict[str, Any], job: ObservedJob) -> None:
        """A training job that has not finished: suspend it if asked (never resume one that a queue holds),
        show it as queued while Kueue holds it, and say so when it does not start in time."""
        queue, label = self.spec.scheduling.queue_name, self._label(s)
        if job.suspended != self.spec.suspend and (self.spec.suspend or not queue):
            self.d.suspends.append(SetSuspend(job.name, self.spec.suspend))
        if job.suspended and not self.spec.suspend and queue:
            self._phase(s, "Queued")
            s["message"] = self.queued = (f"{label} attempt {s['attempts']} is queued: {job.kind} {job.name} "
                                          f"waits for admission by Kueue LocalQueue {queue}")
            return
        self._phase(s, "Running")
        s["message"] = f"{label} attempt {s['attempts']}: {job.kind} {job.name} is {job.state}"
        if job.state not in ("Pending", "Created") or job.suspended or job.waiting_since is None:
            return
        deadline = job.waiting_since + timedelta(seconds=self.inp.start_deadline_seconds)
        if deadline > self.inp.now:
            self.d.wake(deadline)
            return
        waited = int((self.inp.now - job.waiting_since).total_seconds())
        s["message"] = (f"{label} attempt {s['attempts']}: {job.kind} {job.name} has not started running "
                        f"{waited} s after it was created (it is {job.state}): its pods may be unschedulable, "
                        f"unable to pull the image or waiting for a volume; see `kubectl describe pods -l "
                        f"{LABEL_JOB}={self.inp.name},{LABEL_STAGE}={job.stage},{LABEL_ATTEMPT}={job.attempt}`")
        self.degraded, self.degraded_reason = s["message"], "NotStarted"

    def _succeeded(self, s: dict[str, Any], result: Any, finished: Any) -> str:
        label = self._label(s)
        if not isinstance(result, dict):
            deadline = (finished or self.inp.now) + timedelta(seconds=self.inp.result_grace_seconds)
            if deadline > self.inp.now:
                s["message"] = f"{label}: {self.inp.job_kind} {s['jobName']} succeeded; waiting for its stage result"
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
            return self._failed(s, verdict.reason or "", verdict.code, result, finished, exited=True)
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

    def _failed(self, s: dict[str, Any], reason: str, code: str | None, result: Any,
                finished: datetime | None, *, exited: bool = False) -> str:
        """``exited``: the job succeeded (every pod has exited) but the attempt failed its judgement."""
        label, attempt = self._label(s), int(s["attempts"])
        if code == "Preempted" and int(s.get("preemptions") or 0) < MAX_PREEMPTIONS:
            s["preemptions"] = int(s.get("preemptions") or 0) + 1
            return self._retry(s, attempt, reason, result, 0.0, finished, s.get("learningRate"), s.get("steps"),
                               preempted=True, exited=exited)
        n = self._next(s, code)
        if not n.retry:
            message = stop_message(label, attempt, reason, n.why_not)
            if s["index"] == 0:
                return self._fail(s, "BaselineFailed", f"the base model could not be evaluated, so no stage was "
                                  f"trained: {message}")
            return self._fail(s, code or "StageFailed", message)
        # = backoffSeconds·2^(failed attempts − 1); preemptions spend no retries
        return self._retry(s, attempt, reason, result, n.delay_seconds, finished, n.learning_rate, n.steps,
                           gate=code == "GateFailed", exited=exited)

    def _pods_gone_at(self, s: dict[str, Any], result: Any, finished: datetime | None, exited: bool) -> datetime:
        """When no pod of the attempt that just ended can still write to the stage's checkpoints.

        The training-operator deletes the pods of a failed job; a deleted pod gets SIGTERM and up to
        ``terminationGracePeriodSeconds`` to exit (the trainer checkpoints then). A single-node attempt whose
        trainer wrote its result has exited already. (The baseline evaluation runs on stage 1's processes.)
        """
        plan = self.inp.plan
        planned = plan.stages[max(int(s["index"]), 1) - 1] if plan is not None and plan.stages else None
        if exited or planned is None or (isinstance(result, dict) and result.get("status") and planned.nodes == 1):
            return self.inp.now
        return (finished or self.inp.now) + timedelta(seconds=planned.termination_grace_period_seconds)

    def _retry(self, s: dict[str, Any], attempt: int, reason: str, result: Any, delay: float,
               finished: datetime | None, lr: float | None, steps: int | None, *, preempted: bool = False,
               gate: bool = False, exited: bool = False) -> str:
        label = self._label(s)
        due = max(self.inp.now + timedelta(seconds=delay), self._pods_gone_at(s, result, finished, exited))
        delay = max(0.0, (due - self.inp.now).total_seconds())
        s["nextAttemptTime"] = format_time(due)
        if due > self.inp.now:
            self.d.wake(due)
        self._phase(s, "Running")
        message = retry_message(label, attempt, reason, result if isinstance(result, dict) else None,
                                delay, lr, steps if gate else None)
        if preempted:
            message = message.replace(" failed: ", " was preempted: ", 1) + \
                f" (preemption {s['preemptions']}; preemptions do not count against maxRetries)"
        s["message"] = message
        self._event("Normal" if preempted else "Warning", "StagePreempted" if preempted else "StageRetrying", message)
        self.degraded, self.degraded_reason = message, "Preempted" if preempted else "Retrying"
        if due <= self.inp.now and not self.spec.suspend and self.inp.plan is not None:
            self._create(s, attempt + 1, lr, steps)
        return WAIT
