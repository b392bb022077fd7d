"""kopf handlers: decorators only; every body calls into :mod:`ctxext.controller.runner`.

Level-based: creation, resumption (operator restart), spec updates, the resync timer and every
change of an owned PyTorchJob all trigger the same idempotent pass, which re-derives the state
from the PyTorchJobs that exist. Sync handlers run in kopf's thread pool.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import kopf

from ctxext.api.base import GROUP, PLURAL, VERSION
from ctxext.controller import runner
from ctxext.controller.builder import LABEL_JOB

CEJ = (GROUP, VERSION, PLURAL)


@kopf.on.startup()
def startup(settings: kopf.OperatorSettings, memo: kopf.Memo, logger: Any, **_: Any) -> None:
    runner.configure(settings, memo, logger)


# backoff: a pass that failed on an API error is retried after 10 s (kopf's default is 60 s).
@kopf.on.resume(*CEJ, backoff=10)
@kopf.on.create(*CEJ, backoff=10)
@kopf.on.update(*CEJ, field="spec", backoff=10)
def changed(namespace: str | None, name: str, memo: Any, **_: Any) -> None:
    runner.reconcile(memo, namespace, name)


@kopf.timer(*CEJ, interval=runner.CONFIG.resync_seconds)
def resync(namespace: str | None, name: str, memo: Any, **_: Any) -> None:
    runner.reconcile(memo, namespace, name)


@kopf.on.event("kubeflow.org", "v1", "pytorchjobs", labels={LABEL_JOB: kopf.PRESENT})
def pytorchjob_event(namespace: str | None, name: str, labels: Mapping[str, str], body: Mapping[str, Any],
                     memo: Any, **_: Any) -> None:
    runner.pytorchjob_changed(memo, namespace, name, labels[LABEL_JOB], body)


@kopf.on.delete(*CEJ, optional=True)
def deleted(namespace: str | None, name: str, memo: Any, **_: Any) -> None:
    runner.forget(memo, namespace, name)
