"""kopf handlers: decorators only; every body calls into :class:`ctxext.controller.engine.Engine`.

Event-driven and level-based: kopf keeps an index of the owned PyTorchJobs (one small
:class:`~ctxext.controller.registry.Owned` per job, filled before any handler runs, also after a
restart); every watch event of a ContextExtensionJob or of an owned PyTorchJob goes to the engine,
which runs a pass only when something a pass acts on changed (:mod:`ctxext.controller.changes`).
Handlers are async: nothing here waits on a thread pool of kopf's.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import kopf

from ctxext.api.base import GROUP, PLURAL, VERSION
from ctxext.controller.builder import LABEL_JOB
from ctxext.controller.observe import observe
from ctxext.controller.registry import Owned, resource_version
from ctxext.controller.startup import configure

CEJ = (GROUP, VERSION, PLURAL)
PTJ = ("kubeflow.org", "v1", "pytorchjobs")
OWNED = {LABEL_JOB: kopf.PRESENT}


@kopf.on.startup()
def startup(settings: kopf.OperatorSettings, memo: kopf.Memo, logger: Any, **_: Any) -> None:
    configure(settings, memo, logger)


@kopf.on.probe(id="apiContact", errors=kopf.ErrorsMode.PERMANENT)
async def api_contact(memo: Any, **_: Any) -> dict[str, Any]:
    """/healthz: 500 once the operator has lost the API server for CTXEXT_HEALTH_STALE_SECONDS (see health.py)."""
    healthy, report = await memo.api_contact.probe()
    if not healthy:
        raise kopf.PermanentError(f"no API request succeeded for {report['apiContactSecondsAgo']} s "
                                  f"({report.get('lastError', 'no answer')})")
    return report


@kopf.on.cleanup()
def cleanup(memo: Any, **_: Any) -> None:
    memo.engine.close()


@kopf.index(*PTJ, labels=OWNED)
def owned_pytorchjobs(namespace: str | None, labels: Mapping[str, str], body: kopf.Body,
                      **_: Any) -> dict[tuple[str, str], Owned]:
    return {(namespace or "default", labels[LABEL_JOB]): Owned(resource_version(body) or 0, observe(dict(body)))}


# The index reaches handlers as a keyword argument named after it (kopf's convention).
@kopf.on.event(*CEJ)
async def cej_event(type: str, body: kopf.Body, memo: Any, **kwargs: Any) -> None:
    await memo.engine.cej_event(type, body, kwargs["owned_pytorchjobs"])


@kopf.on.event(*PTJ, labels=OWNED)
async def pytorchjob_event(type: str, namespace: str | None, name: str, labels: Mapping[str, str],
                           body: kopf.Body, memo: Any, **kwargs: Any) -> None:
    await memo.engine.job_event(type, namespace, name, labels[LABEL_JOB], body, kwargs["owned_pytorchjobs"])
