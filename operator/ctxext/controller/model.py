"""Inputs and outputs of the pure reconciler (:mod:`ctxext.controller.reconcile`), and the conditions
and plain-words messages it writes."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from ctxext.api.job import ContextExtensionJobSpec
from ctxext.controller.observe import ObservedJob
from ctxext.errors import SpecError
from ctxext.planner import Plan

#: status fields the operator owns; progress and results belong to the trainer and are never written.
OPERATOR_FIELDS = ("phase", "stage", "currentStage", "seqLen", "ropeTheta", "loss", "perplexity", "effectiveLength",
                   "baseline", "stages", "warnings", "conditions", "finalModelPath", "observedGeneration",
                   "backend")
NUMERIC_FAULTS = ("NonFiniteGradients", "LossSpikes")


@dataclass(frozen=True, kw_only=True)
class Inputs:
    """Everything one reconcile pass looks at."""

    name: str
    namespace: str
    generation: int | None
    spec: ContextExtensionJobSpec | None
    """None when the spec does not even parse (then ``spec_error`` says why)."""
    plan: Plan | None
    """The curriculum, or None when the planner rejected the spec (then ``spec_error`` says why)."""
    spec_error: SpecError | None
    status: dict[str, Any]
    """The ContextExtensionJob's status as read (camelCase), including the trainer's fields."""
    jobs: list[ObservedJob]
    """Every PyTorchJob labelled ``ctxext.dev/job=<name>``; only those whose controlling owner has ``uid``
    are this job's own (the others: a deleted predecessor's awaiting garbage collection, ``ctxext render``'s)."""
    now: datetime
    uid: str | None = None
    """metadata.uid of the ContextExtensionJob."""
    result_grace_seconds: float = 30.0
    start_deadline_seconds: float = 900.0
    """A PyTorchJob still Pending/Created this long after it was created (or resumed) gets a plain
    condition saying it has not started (unschedulable pods, an image that cannot be pulled, a missing volume)."""
    backend: str | None = None
    """Kind of the training jobs this job runs on (PyTorchJob or TrainJob; None: not chosen yet), recorded in
    status.backend with its first job and named in messages: the state machine is the same for both
    (:mod:`ctxext.controller.backends`)."""
    blocked: tuple[str, str] | None = None
    """(reason, message) of what keeps the first stage from starting at all, e.g. the trainer
    ServiceAccount missing in the job's namespace; the job fails with it until it is mended."""

    @property
    def job_kind(self) -> str:
        """The kind messages name (PyTorchJob until one is chosen)."""
        return self.backend or "PyTorchJob"


@dataclass(frozen=True)
class CreateJob:
    """Create (or, on 409, adopt) the PyTorchJob of a stage attempt."""

    stage: int
    """1-based stage; 0 is the base model's evaluation (no training)."""
    attempt: int
    learning_rate: float | None
    steps: int | None = None
    """Total optimizer steps of the attempt, when not the plan's (a gate retry trains further)."""


@dataclass(frozen=True)
class SetSuspend:
    """Set ``spec.runPolicy.suspend`` of a PyTorchJob."""

    name: str
    suspend: bool


@dataclass(frozen=True)
class Event:
    """A Kubernetes Event on the ContextExtensionJob (posted best effort)."""

    type: str
    reason: str
    message: str


@dataclass
class Decision:
    """What to do: create/suspend PyTorchJobs first, then write ``status`` (operator fields only)."""

    status: dict[str, Any] = field(default_factory=dict)
    creates: list[CreateJob] = field(default_factory=list)
    suspends: list[SetSuspend] = field(default_factory=list)
    events: list[Event] = field(default_factory=list)
    transitions: list[tuple[str, str]] = field(default_factory=list)
    """Stage phase transitions (from, to), for ctxext_stage_transitions_total."""
    stage_durations: list[float] = field(default_factory=list)
    """Seconds each stage that finished in this pass took."""
    wake_at: datetime | None = None
    """The next moment the state changes by itself (a retry's backoff ends, the wait for a stage
    result runs out): the controller runs a pass then, without waiting for the resync."""

    def wake(self, at: datetime) -> None:
        """Ask for a pass at ``at`` (the earliest request wins)."""
        if self.wake_at is None or at < self.wake_at:
            self.wake_at = at

    def status_patch(self, current: dict[str, Any]) -> dict[str, Any]:
        """The merge patch that brings ``current`` to :attr:`status` (empty when nothing changed)."""
        return {k: v for k, v in self.status.items() if current.get(k) != v}

READY, PROGRESSING, DEGRADED, FAILED, INVALID_SPEC = "Ready", "Progressing", "Degraded", "Failed", "InvalidSpec"
ALL = (READY, PROGRESSING, DEGRADED, FAILED, INVALID_SPEC)


class Conditions:
    """status.conditions keyed by type; ``set`` keeps lastTransitionTime while the status stays."""

    def __init__(self, current: list[dict[str, Any]] | None, *, now: str, generation: int | None):
        self._now, self._generation = now, generation
        self._by_type: dict[str, dict[str, Any]] = {c["type"]: dict(c) for c in current or [] if "type" in c}

    def set(self, kind: str, status: bool, reason: str, message: str) -> bool:
        """Set a condition; True when its status changed (a transition worth an event)."""
        value = "True" if status else "False"
        old = self._by_type.get(kind)
        changed = old is None or old.get("status") != value
        cond = {"type": kind, "status": value, "reason": reason, "message": message,
                "lastTransitionTime": self._now if changed or not old else old.get("lastTransitionTime", self._now)}
        if self._generation is not None:
            cond["observedGeneration"] = self._generation
        self._by_type[kind] = cond
        return changed

    def get(self, kind: str) -> dict[str, Any] | None:
        return self._by_type.get(kind)

    def is_true(self, kind: str) -> bool:
        return (self._by_type.get(kind) or {}).get("status") == "True"

    def to_list(self) -> list[dict[str, Any]]:
        order = {k: i for i, k in enumerate(ALL)}
        return sorted(self._by_type.values(), key=lambda c: order.get(c["type"], len(order)))


def describe_reason(result: dict[str, Any] | None, fallback: str | None) -> str:
    """The failure reason in plain words, from the stage result or else the PyTorchJob condition.

    The trainer reports every failure it can name; without a result it was killed or never started, and the
    training-operator's condition alone would not say so:

    >>> describe_reason({"reason": "non-finite gradients at step 113"}, "Job t-s1-a1 has failed ...")
    'non-finite gradients at step 113'
    >>> describe_reason(None, "Job t-s1-a1 has failed because it has reached the specified backoff limit")
    'the trainer ended without reporting a result (killed, e.g. out of memory or evicted, or it failed before \
it started; see its pod logs and events); the training-operator says: Job t-s1-a1 has failed because it has \
reached the specified backoff limit'
    """
    if result and result.get("reason"):
        return str(result["reason"])
    if result and result.get("reasonCode"):
        return str(result["reasonCode"])
    why = ("the trainer ended without reporting a result (killed, e.g. out of memory or evicted, or it failed "
           "before it started; see its pod logs and events)")
    return f"{why}; the training-operator says: {fallback}" if fallback else why


def checkpoint_step(result: dict[str, Any] | None) -> int | None:
    """Step of the latest checkpoint named in a result (``.../checkpoints/step-100`` → 100).

    >>> checkpoint_step({"checkpoint": "/ckpt/ns/j/stage-2/checkpoints/step-100"})
    100
    """
    path = str((result or {}).get("checkpoint") or "")
    tail = path.rstrip("/").rsplit("/", 1)[-1]
    digits = tail.removeprefix("step-").removeprefix("step_")
    return int(digits) if digits.isdigit() else None


def retry_message(stage: str, attempt: int, reason: str, result: dict[str, Any] | None, delay: float,
                  learning_rate: float | None, steps: int | None = None) -> str:
    """``stage 2/4 attempt 2 failed: non-finite gradients at step 113; retrying from checkpoint step 100 in 60 s``
    (``stage``: 'stage 2/4' or 'baseline evaluation'; ``steps``: a gate retry trains on to that step)."""
    step = checkpoint_step(result)
    start = f"from checkpoint step {step}" if step else "from the latest checkpoint"
    lr = f" with learning rate {learning_rate:g}" if learning_rate is not None else ""
    more = f", training on to step {steps}" if steps is not None else ""
    return f"{stage} attempt {attempt} failed: {reason}; retrying {start}{lr}{more} in {delay:g} s"
