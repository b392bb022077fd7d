"""The operator's start-up: every kopf setting we change (and why), the API client, the engine.

Called by the one ``@kopf.on.startup`` handler in :mod:`ctxext.controller.handlers`; the settings
object comes from :func:`ctxext.controller.runner.run` through kopf's memo (``memo.config``).
"""

from __future__ import annotations

import functools
import json
import os
from typing import Any

import kopf
from kubernetes import client, config

from ctxext.api.base import GROUP, PLURAL, VERSION
from ctxext.config import OperatorConfig
from ctxext.controller.crdcheck import CRD_NAME, check_served_crd
from ctxext.controller.engine import API_THREADS, Engine
from ctxext.controller.health import ApiContact
from ctxext.controller.kube import KubeApi

PREFIX = "ctxext.dev"


def configure(settings: kopf.OperatorSettings, memo: Any, logger: Any) -> None:
    """Set kopf up and put the :class:`~ctxext.controller.engine.Engine` into ``memo.engine``."""
    cfg: OperatorConfig = memo.config
    # Watches: ask the API server to end each watch after watch_timeout_seconds and give the client
    # a minute more; a connection that died silently (NAT, load balancer) is then replaced within
    # minutes instead of hanging forever. The resync covers whatever a lost watch missed.
    settings.watching.server_timeout = cfg.watch_timeout_seconds
    settings.watching.client_timeout = cfg.watch_timeout_seconds + 60
    settings.watching.connect_timeout = 30
    # Progress and diff-base under our own API group, in annotations, should a change handler ever
    # need them: status belongs to us and the trainer (kopf would otherwise write status.kopf). The
    # event handlers we use store nothing on the objects.
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=PREFIX)
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix=PREFIX, key="last-handled-configuration")
    # Finalizer name under our group. kopf only adds it for non-optional deletion handlers; we have
    # none (PyTorchJobs are owned through ownerReferences and go with the garbage collector).
    settings.persistence.finalizer = f"{PREFIX}/finalizer"
    # Events: posted for explicit transitions only (not for every log line). Off on API servers
    # without an events resource (the test server), where kopf would queue them forever.
    settings.posting.enabled = cfg.post_events
    settings.posting.loggers = False
    if cfg.namespaces:
        # Watch exactly the namespaces given, without listing namespaces (no cluster-wide RBAC).
        settings.scanning.disabled = True
    try:
        config.load_incluster_config()
        where = "in-cluster service account"
    except config.ConfigException:
        config.load_kube_config()
        where = f"kubeconfig {os.environ.get('KUBECONFIG', '~/.kube/config')}"
    # One HTTP connection per API thread, so that no request waits for a connection (or drops one).
    api_config = client.Configuration.get_default_copy()
    api_config.connection_pool_maxsize = API_THREADS
    api_client = client.ApiClient(api_config)
    if cfg.crd_check and not cfg.namespaces:
        _check_crd(client.ApiextensionsV1Api(api_client), logger)
    elif cfg.crd_check:  # watching a list of namespaces, the operator has no cluster-wide rights: no request
        logger.info("CRD check skipped (reading CustomResourceDefinitions needs cluster-wide rights): make sure "
                    "the served %s is this release's (kubectl apply --server-side -f crds/)", CRD_NAME)
    custom = client.CustomObjectsApi(api_client)
    memo.engine = Engine(cfg, KubeApi(custom, core=client.CoreV1Api(api_client)))
    memo.api_contact = ApiContact(functools.partial(_list_one_job, custom, cfg.namespaces[:1]),
                                  cfg.health_stale_seconds, interval=min(10.0, cfg.health_stale_seconds / 3))
    logger.info("ctxext operator configured (%s; namespaces: %s; resync every %gs)", where,
                ", ".join(cfg.namespaces) or "all", cfg.resync_seconds)


def _list_one_job(custom: client.CustomObjectsApi, namespaces: list[str]) -> None:
    """The liveness probe's API request: cheap, and inside the operator's RBAC in both modes."""
    if namespaces:
        custom.list_namespaced_custom_object(GROUP, VERSION, namespaces[0], PLURAL, limit=1, _request_timeout=10)
    else:
        custom.list_cluster_custom_object(GROUP, VERSION, PLURAL, limit=1, _request_timeout=10)


def _check_crd(ext: client.ApiextensionsV1Api, logger: Any) -> None:
    """Stop (kopf.PermanentError: the operator exits) when the served CRD is not ours; see crdcheck."""
    def read(name: str) -> Any:
        response: Any = ext.read_custom_resource_definition(name, _preload_content=False)  # raw: no model classes
        return json.loads(response.data)

    try:
        error = check_served_crd(read)
    except client.ApiException as exc:
        if exc.status != 403:
            raise
        logger.warning("cannot read CustomResourceDefinition %s (no get right on customresourcedefinitions): make "
                       "sure it is this release's (kubectl apply --server-side -f crds/)", CRD_NAME)
        return
    if error:
        raise kopf.PermanentError(error)  # kopf logs it and stops; runner.run reports it as the one error
