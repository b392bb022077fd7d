"""Does the trainer's identity exist where a job runs? Checked before a job's first PyTorchJob is created.

Kubernetes refuses to create the pods of a PyTorchJob whose ``serviceAccountName`` does not exist in its
namespace; nothing would run and the job would only time out. So before the first stage starts, the operator
reads the ServiceAccount (``CTXEXT_TRAINER_SERVICE_ACCOUNT``) in the job's namespace. Feature-detected and
best effort: where it cannot tell (no ``get`` right on serviceaccounts, an API server that serves none,
such as the test server), it goes on as before, and the cluster reports what is wrong on the PyTorchJob.

>>> print(missing_message("ctxext-trainer", "team-a"))
ServiceAccount ctxext-trainer does not exist in namespace team-a, so no trainer pod could start: add team-a to \
the chart's trainer.namespaces (helm upgrade <release> <chart> --reuse-values --set \
'trainer.namespaces={<namespaces>,team-a}'), or create the ServiceAccount and a RoleBinding to the \
ctxext trainer Role yourself; the job starts once it exists
"""

from __future__ import annotations

import json
import time
from typing import Any

#: Condition reason of a job whose namespace lacks the trainer ServiceAccount.
TRAINER_IDENTITY_MISSING = "TrainerIdentityMissing"


def missing_message(account: str, namespace: str) -> str:
    return (f"ServiceAccount {account} does not exist in namespace {namespace}, so no trainer pod could start: "
            f"add {namespace} to the chart's trainer.namespaces (helm upgrade <release> <chart> --reuse-values "
            f"--set 'trainer.namespaces={{<namespaces>,{namespace}}}'), or create the ServiceAccount and a "
            f"RoleBinding to the ctxext trainer Role yourself; the job starts once it exists")


def answer_of(exc: Any) -> bool | None:
    """An API error of reading a ServiceAccount → False (it does not exist) or None (cannot tell).

    Only a 404 whose Status names serviceaccounts means "no such ServiceAccount"; a 404 from a server
    that serves no serviceaccounts at all (a plain "404 page not found"), a 403 or anything else says
    nothing about it.

    >>> class E:
    ...     def __init__(self, status, body): self.status, self.body = status, body
    >>> gone = '{"kind": "Status", "reason": "NotFound", "details": {"name": "t", "kind": "serviceaccounts"}}'
    >>> answer_of(E(404, gone))
    False
    >>> answer_of(E(404, "404 page not found")), answer_of(E(403, '{"kind": "Status", "reason": "Forbidden"}'))
    (None, None)
    """
    if getattr(exc, "status", None) != 404:
        return None
    try:
        body = json.loads(getattr(exc, "body", None) or "")
    except (TypeError, ValueError):
        return None
    details = body.get("details") if isinstance(body, dict) else None
    if body.get("reason") == "NotFound" and isinstance(details, dict) and details.get("kind") == "serviceaccounts":
        return False
    return None


class IdentityCache:
    """Answers per namespace: a found ServiceAccount is believed for ``ttl`` seconds, a missing one is asked
    again on every check (so a job starts on the first pass after it was created)."""

    def __init__(self, ttl: float):
        self.ttl = ttl
        self._found: dict[str, float] = {}

    def fresh(self, namespace: str) -> bool:
        return time.monotonic() - self._found.get(namespace, -float("inf")) < self.ttl

    def record(self, namespace: str, exists: bool | None) -> None:
        if exists is False:
            self._found.pop(namespace, None)
        else:  # found, or cannot tell: do not ask on every pass
            self._found[namespace] = time.monotonic()
