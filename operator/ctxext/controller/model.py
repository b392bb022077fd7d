"""Inputs and outputs of the pure reconciler (:mod:`ctxext.controller.reconcile`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from ctxext.api.job import ContextExtensionJobSpec
from ctxext.controller.observe import ObservedJob
from ctxext.errors import SpecError
from ctxext.planner import Plan

#: status fields the operator owns; progress and results belong to the trainer and are never written.
OPERATOR_FIELDS = ("phase", "stage", "currentStage", "seqLen", "ropeTheta", "loss", "perplexity", "stages",
                   "warnings", "conditions", "finalModelPath", "observedGeneration")
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
    """Every PyTorchJob labelled ``ctxext.dev/job=<name>``."""
    now: datetime
    result_grace_seconds: float = 30.0


@dataclass(frozen=True)
class CreateJob:
    """Create (or, on 409, adopt) the PyTorchJob of a stage attempt."""

    stage: int
    attempt: int
    learning_rate: float | None


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

    def status_patch(self, current: dict[str, Any]) -> dict[str, Any]:
        """The merge patch that brings ``current`` to :attr:`status` (empty when nothing changed)."""
        return {k: v for k, v in self.status.items() if current.get(k) != v}
