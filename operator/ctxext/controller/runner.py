"""Start-up of ``ctxext operator``: kopf settings, Kubernetes client, metrics, and the run loop."""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from typing import Any

import kopf
from kubernetes import client, config

from ctxext.config import OperatorConfig
from ctxext.controller import metrics
from ctxext.controller.kube import Controller

#: The settings the handlers module reads at import time (the timer interval); :func:`run` sets it.
CONFIG = OperatorConfig.from_env()
PREFIX = "ctxext.dev"


def configure(settings: kopf.OperatorSettings, memo: kopf.Memo, logger: Any) -> None:
    """The one startup handler: every kopf setting we change, and why."""
    # Watches: ask the API server to end each watch after watch_timeout_seconds and give the client
    # a minute more; a connection that died silently (NAT, load balancer) is then replaced within
    # minutes instead of hanging forever. The resync timer covers whatever a lost watch missed.
    settings.watching.server_timeout = CONFIG.watch_timeout_seconds
    settings.watching.client_timeout = CONFIG.watch_timeout_seconds + 60
    settings.watching.connect_timeout = 30
    # Progress and diff-base under our own API group, in annotations: status belongs to us and the
    # trainer (kopf would otherwise write status.kopf), and ctxext.dev/... is obviously ours.
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=PREFIX)
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix=PREFIX, key="last-handled-configuration")
    # Finalizer name under our group. kopf only adds it for non-optional deletion handlers; we have
    # none (PyTorchJobs are owned through ownerReferences and go with the garbage collector).
    settings.persistence.finalizer = f"{PREFIX}/finalizer"
    # Events: posted for explicit transitions only (not for every log line). Off on API servers
    # without an events resource (the test server), where kopf would queue them forever.
    settings.posting.enabled = CONFIG.post_events
    settings.posting.loggers = False
    # Handlers are synchronous (kubernetes client); a small pool is plenty for one reconcile per job.
    settings.execution.max_workers = 8
    if CONFIG.namespaces:
        # Watch exactly the namespaces given, without listing namespaces (no cluster-wide RBAC).
        settings.scanning.disabled = True
    try:
        config.load_incluster_config()
        where = "in-cluster service account"
    except config.ConfigException:
        config.load_kube_config()
        where = f"kubeconfig {os.environ.get('KUBECONFIG', '~/.kube/config')}"
    memo.controller = Controller(CONFIG, client.CustomObjectsApi())
    logger.info("ctxext operator configured (%s; namespaces: %s; resync every %gs)", where,
                ", ".join(CONFIG.namespaces) or "all", CONFIG.resync_seconds)


def reconcile(memo: Any, namespace: str | None, name: str) -> None:
    memo.controller.reconcile(namespace or "default", name)


def pytorchjob_signature(body: Mapping[str, Any]) -> tuple[Any, ...] | None:
    """What of a PyTorchJob a reconcile acts on; None for a job with nothing to act on yet.

    A job without conditions is one this operator just created (the pass that created it already
    accounted for it) or one the resume handler re-reads after a restart, so its ADDED event needs
    no pass of its own.

    >>> pytorchjob_signature({"status": {}}) is None
    True
    >>> pytorchjob_signature({"status": {"conditions": [{"type": "Running", "status": "True"}]}})
    ((('Running', 'True'),), False, False)
    """
    conditions = tuple((c.get("type"), c.get("status")) for c in (body.get("status") or {}).get("conditions") or [])
    suspended = bool(((body.get("spec") or {}).get("runPolicy") or {}).get("suspend"))
    deleting = bool((body.get("metadata") or {}).get("deletionTimestamp"))
    if not conditions and not deleting:
        return None
    return conditions, suspended, deleting


def pytorchjob_changed(memo: Any, namespace: str | None, name: str, cej: str, body: Mapping[str, Any]) -> None:
    """Reconcile the owning CEJ when a PyTorchJob's conditions, suspension or deletion changed.

    Events that change nothing a reconcile reads (the ADDED event of a job just created, a label
    edit) are skipped: at scale they were half of all passes (bench/operator_scale.py). The resync
    timer still re-derives everything periodically.
    """
    signature = pytorchjob_signature(body)
    key = f"{namespace or 'default'}/{name}"
    seen: dict[str, Any] = memo.setdefault("pytorchjob_seen", {})
    if signature is None or seen.get(key) == signature:
        return
    seen[key] = signature
    reconcile(memo, namespace, cej)


def forget(memo: Any, namespace: str | None, name: str) -> None:
    memo.controller.forget(f"{namespace or 'default'}/{name}")


def run(settings: OperatorConfig, *, verbose: bool = False) -> None:
    """Run the operator until interrupted."""
    global CONFIG
    CONFIG = settings
    kopf.configure(verbose=verbose, log_format=kopf.LogFormat[settings.log_format.upper()])
    logging.getLogger("kubernetes").setLevel(logging.WARNING)
    from ctxext.controller import handlers  # noqa: F401 - registers the handlers (reads CONFIG)

    metrics.serve(settings.metrics_port)
    liveness = f"http://0.0.0.0:{settings.health_port}/healthz" if settings.health_port else None
    kopf.run(standalone=True, clusterwide=not settings.namespaces, namespaces=settings.namespaces,
             liveness_endpoint=liveness)
