"""``ctxext operator``: metrics and liveness endpoints, then kopf's run loop with our handlers."""

from __future__ import annotations

import logging

import kopf

from ctxext.config import OperatorConfig
from ctxext.controller import metrics


def run(settings: OperatorConfig, *, verbose: bool = False) -> None:
    """Run the operator until interrupted."""
    kopf.configure(verbose=verbose, log_format=kopf.LogFormat[settings.log_format.upper()])
    logging.getLogger("kubernetes").setLevel(logging.WARNING)
    from ctxext.controller import handlers  # noqa: F401 - registers the handlers

    metrics.serve(settings.metrics_port)
    liveness = f"http://0.0.0.0:{settings.health_port}/healthz" if settings.health_port else None
    kopf.run(standalone=True, clusterwide=not settings.namespaces, namespaces=settings.namespaces,
             liveness_endpoint=liveness, memo=kopf.Memo(config=settings))
