"""kopf handlers: decorators only; every body calls into :class:`ctxext.controller.engine.Engine`.

Event-driven and level-based: kopf keeps an index of the owned PyTorchJobs and one of the owned TrainJobs
(one small :class:`~ctxext.controller.registry.Owned` per job, filled before any handler runs, also after
a restart; an API the cluster does not serve is not watched, and kopf warns once that it cannot serve it);
every watch event of a ContextExtensionJob or of an owned PyTorchJob or TrainJob goes to the engine,
which runs a pass only when something a pass acts on changed (:mod:`ctxext.controller.changes`).
Handlers are async: nothing here waits on a thread pool of kopf's.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import kopf

from ctxext.api.base import GROUP, PLURAL, VERSION
from ctxext.controller.backends.pytorchjob import PYTORCHJOB
from ctxext.controller.backends.trainjob import TRAINJOB
from ctxext.controller.builder import LABEL_JOB
from ctxext.controller.engine import OwnedIndexes
from ctxext.controller.registry import Owned, resource_version
from ctxext.controller.startup import configure

CEJ = (GROUP, VERSION, PLURAL)
PTJ = PYTORCHJOB.resource
TJ = TRAINJOB.resource
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
    return {(namespace or "default", labels[LABEL_JOB]):
            Owned(resource_version(body) or 0, PYTORCHJOB.observe({"kind": PYTORCHJOB.kind, **body}))}


@kopf.index(*TJ, labels=OWNED)
def owned_trainjobs(namespace: str | None, labels: Mapping[str, str], body: kopf.Body,
                    **_: Any) -> dict[tuple[str, str], Owned]:
    return {(namespace or "default", labels[LABEL_JOB]):
            Owned(resource_version(body) or 0, TRAINJOB.observe({"kind": TRAINJOB.kind, **body}))}


def _indexes(kwargs: Mapping[str, Any]) -> OwnedIndexes:
    """Both indexes, as kopf passes them to every handler (keyword arguments named after them)."""
    return (kwargs["owned_pytorchjobs"], kwargs["owned_trainjobs"])


@kopf.on.event(*CEJ)
async def cej_event(type: str, body: kopf.Body, memo: Any, **kwargs: Any) -> None:
    await memo.engine.cej_event(type, body, _indexes(kwargs))


@kopf.on.event(*PTJ, labels=OWNED)
async def pytorchjob_event(type: str, namespace: str | None, name: str, labels: Mapping[str, str],
                           body: kopf.Body, memo: Any, **kwargs: Any) -> None:
    await memo.engine.job_event(type, namespace, name, labels[LABEL_JOB], {"kind": PYTORCHJOB.kind, **body},
                                _indexes(kwargs))


@kopf.on.event(*TJ, labels=OWNED)
async def trainjob_event(type: str, namespace: str | None, name: str, labels: Mapping[str, str],
                         body: kopf.Body, memo: Any, **kwargs: Any) -> None:
    await memo.engine.job_event(type, namespace, name, labels[LABEL_JOB], {"kind": TRAINJOB.kind, **body},
                                _indexes(kwargs))
