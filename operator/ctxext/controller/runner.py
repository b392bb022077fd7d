"""``ctxext operator``: metrics and liveness endpoints, then kopf's run loop with our handlers."""

from __future__ import annotations

import logging

import kopf

from ctxext.config import OperatorConfig
from ctxext.controller import metrics
from ctxext.errors import SpecError


class QuietEventHandlers(logging.Filter):
    """Drops kopf's "Handler 'cej_event' succeeded." line: it comes once per watch event (13,000 lines for
    1,000 two-stage jobs) and says nothing; failures and everything else still get through.

    >>> import logging
    >>> QuietEventHandlers().filter(logging.makeLogRecord({"msg": "Handler 'pytorchjob_event' succeeded."}))
    False
    """

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return not (message.startswith("Handler '") and message.endswith("_event' succeeded."))


class QuietFailedProbes(logging.Filter):
    """Drops aiohttp's two-traceback "Error handling request" of a failed /healthz: kopf has already logged
    the probe's failure in one line ("Activity 'apiContact' failed permanently: no API request ...")."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        return not (exc is not None and type(exc).__name__ == "ActivityError")


def run(settings: OperatorConfig, *, verbose: bool = False) -> None:
    """Run the operator until interrupted."""
    kopf.configure(verbose=verbose, log_format=kopf.LogFormat[settings.log_format.upper()])
    logging.getLogger("kubernetes").setLevel(logging.WARNING)
    if not verbose:
        logging.getLogger("kopf.objects").addFilter(QuietEventHandlers())
    logging.getLogger("aiohttp.server").addFilter(QuietFailedProbes())
    from ctxext.controller import handlers  # noqa: F401 - registers the handlers

    metrics.serve(settings.metrics_port)
    liveness = f"http://0.0.0.0:{settings.health_port}/healthz" if settings.health_port else None
    try:
        kopf.run(standalone=True, clusterwide=not settings.namespaces, namespaces=settings.namespaces,
                 liveness_endpoint=liveness, memo=kopf.Memo(config=settings))
    except Exception as exc:
        # A start-up handler refused to start (kopf.PermanentError, e.g. the CRD check): its own words
        # as the command's one error, instead of kopf's "One or more handlers failed".
        if isinstance(exc.__cause__, kopf.PermanentError):
            raise SpecError([("", str(exc.__cause__))]) from None
        raise
