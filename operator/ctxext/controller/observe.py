"""What a PyTorchJob says about itself, reduced to what the reconciler needs. Pure.

(A TrainJob is reduced to the same :class:`ObservedJob` by :mod:`ctxext.controller.backends.trainjob_status`.)

Kubeflow's training-operator keeps a list of conditions (Created, Running, Restarting, Suspended,
Succeeded, Failed); several can be True over time, the terminal ones win. A job without
conditions has just been created and is ``Pending``.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from ctxext.controller.builder import (
    ANNOTATION_LR,
    ANNOTATION_RESULT_KEY,
    ANNOTATION_STEPS,
    LABEL_ATTEMPT,
    LABEL_STAGE,
)

#: Kind of the owner whose UID decides which PyTorchJobs are a ContextExtensionJob's own.
OWNER_KIND = "ContextExtensionJob"
#: Condition types in the order they win when several are True.
PRIORITY = ("Succeeded", "Failed", "Suspended", "Restarting", "Running", "Created")
TERMINAL = ("Succeeded", "Failed")


@dataclass(frozen=True, kw_only=True)
class ObservedJob:
    """One PyTorchJob of a ContextExtensionJob, as observed."""

    name: str
    stage: int
    attempt: int
    state: str
    """Pending, Created, Running, Restarting, Suspended, Succeeded or Failed."""
    message: str | None = None
    """The message of the condition that decided ``state``."""
    suspended: bool = False
    """spec.runPolicy.suspend."""
    learning_rate: float | None = None
    """Peak learning rate it was created with (annotation)."""
    finished_at: datetime | None = None
    """lastTransitionTime of its terminal condition."""
    owner_uid: str | None = None
    """UID of the ContextExtensionJob that controls it (ownerReferences); only its own jobs are adopted."""
    waiting_since: datetime | None = None
    """Since when it has been waiting to run: its creation, or the last time it was suspended or resumed."""
    result_key: str | None = None
    """The secret its trainer signs the stage result with (annotation ctxext.dev/result-key)."""
    steps: int | None = None
    """Total optimizer steps it was created with (annotation; more than planned after a gate retry)."""
    kind: str = "PyTorchJob"
    """Its kind: PyTorchJob, or TrainJob (:mod:`ctxext.controller.backends`)."""

    @property
    def terminal(self) -> bool:
        return self.state in TERMINAL


def parse_time(value: str | None) -> datetime | None:
    """RFC 3339 → aware datetime (None when absent or unreadable)."""
    if not value:
        return None
    try:
        return datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None


def format_time(value: datetime) -> str:
    """Aware datetime → ``2026-01-02T03:04:05Z``."""
    return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _int(value: Any) -> int:
    try:
        return int(value)
    except (TypeError, ValueError):
        return 0


def observe(obj: dict[str, Any]) -> ObservedJob:
    """Reduce a PyTorchJob object (a dict as the API returns it) to an :class:`ObservedJob`."""
    meta = obj.get("metadata") or {}
    labels = meta.get("labels") or {}
    conditions = [c for c in (obj.get("status") or {}).get("conditions") or [] if c.get("status") == "True"]
    state, message, finished = "Pending", None, None
    for kind in PRIORITY:
        found = [c for c in conditions if c.get("type") == kind]
        if found:
            state, message = kind, found[-1].get("message")
            if kind in TERMINAL:
                finished = parse_time(found[-1].get("lastTransitionTime"))
            break
    try:
        lr: float | None = float((meta.get("annotations") or {})[ANNOTATION_LR])
    except (KeyError, TypeError, ValueError):
        lr = None
    steps = _int((meta.get("annotations") or {}).get(ANNOTATION_STEPS)) or None
    run_policy = (obj.get("spec") or {}).get("runPolicy") or {}
    owner = next((r.get("uid") for r in meta.get("ownerReferences") or []
                  if r.get("controller") and r.get("kind") == OWNER_KIND), None)
    marks = [parse_time(meta.get("creationTimestamp"))] + [
        parse_time(c.get("lastTransitionTime")) for c in (obj.get("status") or {}).get("conditions") or []
        if c.get("type") == "Suspended"]
    since = max((m for m in marks if m is not None), default=None)
    return ObservedJob(name=meta.get("name", ""), stage=_int(labels.get(LABEL_STAGE)),
                       attempt=_int(labels.get(LABEL_ATTEMPT)), state=state, message=message,
                       suspended=bool(run_policy.get("suspend")), learning_rate=lr, finished_at=finished,
                       owner_uid=owner, waiting_since=since,
                       result_key=(meta.get("annotations") or {}).get(ANNOTATION_RESULT_KEY), steps=steps,
                       kind=str(obj.get("kind") or "PyTorchJob"))
