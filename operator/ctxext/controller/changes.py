"""Which watch events need a reconcile pass. Pure.

After every pass the controller remembers what that pass looked at (:class:`Seen`): the spec
generation, the trainer's ``status.results`` and ``status.progress``, and every owned PyTorchJob
as :class:`~ctxext.controller.observe.ObservedJob`. An event is then one of three kinds:

* :data:`PASS` — something the state machine acts on changed: a new generation (spec edit), a new
  or changed stage result, a PyTorchJob that appeared, disappeared, reached Succeeded/Failed or
  changed ``runPolicy.suspend``. The pass runs at once.
* :data:`REFRESH` — only what status *shows* changed: the trainer's live loss, a PyTorchJob going
  Created → Running → Restarting. Nothing is decided on it, so it is written later, coalesced
  (``CTXEXT_STATUS_REFRESH_SECONDS``), unless a :data:`PASS` comes first and takes it along.
* :data:`NONE` — nothing a pass reads: the echo of our own status patch, the ADDED event of the
  PyTorchJob we just created, a label edit, a watch re-list.

Worked example (the bench's two-stage job): create → PASS (stage 1 created); its ADDED → NONE;
Created, Running → REFRESH; Succeeded → PASS (stage 2 created; a refresh still pending is taken
along); stage 2's ADDED → NONE, Created/Running → REFRESH, Succeeded → PASS. Three passes for two
stages — four when a stage runs longer than the refresh window, whose pass then writes "Running".

>>> from ctxext.controller.observe import ObservedJob
>>> running = ObservedJob(name="j-s1-a1", stage=1, attempt=1, state="Running")
>>> seen = Seen(generation=1, results=digest(None), progress=(None, None), jobs={"j-s1-a1": running})
>>> classify_job(seen, "j-s1-a1", running) == NONE
True
>>> classify_job(seen, "j-s1-a1", ObservedJob(name="j-s1-a1", stage=1, attempt=1, state="Restarting"))
'refresh'
>>> classify_job(seen, "j-s1-a1", ObservedJob(name="j-s1-a1", stage=1, attempt=1, state="Succeeded"))
'pass'
>>> classify_job(seen, "j-s1-a1", None)  # deleted
'pass'
>>> classify_cej(seen, {"metadata": {"generation": 2}})  # spec edited
'pass'
>>> classify_cej(seen, {"metadata": {"generation": 1}, "status": {"progress": {"loss": 2.5}}})
'refresh'
>>> classify_cej(seen, {"metadata": {"generation": 1, "uid": "new"}})  # deleted and re-applied at once
'pass'
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from ctxext.controller.observe import ObservedJob

PASS, REFRESH, NONE = "pass", "refresh", "none"


def digest(value: Any) -> str:
    """A short, order-independent fingerprint of a JSON value (``status.results``).

    >>> digest({"a": 1, "b": 2}) == digest({"b": 2, "a": 1}) != digest({"a": 1})
    True
    """
    raw = json.dumps(value, sort_keys=True, separators=(",", ":"), default=str).encode()
    return hashlib.blake2b(raw, digest_size=12).hexdigest()


def progress_of(status: Mapping[str, Any] | None) -> tuple[Any, Any]:
    """What status mirrors of the trainer's live progress: (loss, perplexity)."""
    progress = (status or {}).get("progress") or {}
    if not isinstance(progress, Mapping):
        return None, None
    return progress.get("loss"), progress.get("perplexity")


def decisive(job: ObservedJob) -> tuple[Any, ...]:
    """The part of a PyTorchJob the state machine branches on (not the live non-terminal state).

    >>> a = ObservedJob(name="j", stage=1, attempt=1, state="Created")
    >>> decisive(a) == decisive(ObservedJob(name="j", stage=1, attempt=1, state="Running"))
    True
    """
    return (job.state if job.terminal else "active", job.suspended, job.learning_rate, job.stage, job.attempt,
            job.finished_at, job.message if job.terminal else None)


@dataclass(frozen=True, kw_only=True)
class Seen:
    """What the last pass over a ContextExtensionJob read."""

    generation: int | None
    results: str
    """:func:`digest` of ``status.results``."""
    progress: tuple[Any, Any]
    jobs: dict[str, ObservedJob] = field(default_factory=dict)
    """Every owned training job by name, as observed (or, for one it created, as created)."""
    uid: str | None = None
    """metadata.uid: a job deleted and re-applied under the same name is another job (its generation is 1 again)."""

    @classmethod
    def of(cls, body: Mapping[str, Any], jobs: dict[str, ObservedJob]) -> Seen:
        status = body.get("status") or {}
        meta = body.get("metadata") or {}
        return cls(generation=meta.get("generation"), results=digest(status.get("results")),
                   progress=progress_of(status), jobs=jobs, uid=meta.get("uid"))


def classify_cej(seen: Seen | None, body: Mapping[str, Any]) -> str:
    """PASS, REFRESH or NONE for the newest known state of a ContextExtensionJob (see the module doc)."""
    if seen is None:  # never reconciled by this process: created, or listed after a restart
        return PASS
    status = body.get("status") or {}
    meta = body.get("metadata") or {}
    if meta.get("generation") != seen.generation or digest(status.get("results")) != seen.results or \
            meta.get("uid") != seen.uid:
        return PASS
    return REFRESH if progress_of(status) != seen.progress else NONE


def classify_job(seen: Seen | None, name: str, job: ObservedJob | None, *,
                 expected: ObservedJob | None = None) -> str:
    """PASS, REFRESH or NONE for a PyTorchJob event (``job`` None: it was deleted).

    ``expected`` is what the controller itself just created or patched (it counts as seen even
    before the pass that made it has finished). A CEJ that no pass has read yet is left to the pass
    its own event starts, which reads every owned PyTorchJob from the index.
    """
    if seen is None:
        return NONE
    before = expected if expected is not None else seen.jobs.get(name)
    if before == job:
        return NONE
    if before is None or job is None or decisive(before) != decisive(job):
        return PASS
    return REFRESH
