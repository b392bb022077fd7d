"""The controller's API calls (the synchronous ``kubernetes`` client), each one request.

:class:`KubeApi` is what :mod:`ctxext.controller.engine` runs in its thread pool: read a
ContextExtensionJob, create a PyTorchJob (409 AlreadyExists → read the existing one back: names
are deterministic, so it is the same attempt), set a PyTorchJob's ``runPolicy.suspend``, and
merge-patch the CEJ's status. Event-driven passes make no list call (the owned PyTorchJobs come from
kopf's index); only the resync lists a job's PyTorchJobs, to correct an index that a watch restart left
stale (kopf's re-list after 410 Gone adds objects but never drops the ones deleted meanwhile).
"""

from __future__ import annotations

import logging
from typing import Any, cast

from kubernetes import client

from ctxext.api.base import GROUP, PLURAL, VERSION
from ctxext.controller import metrics
from ctxext.controller.builder import LABEL_JOB
from ctxext.controller.identity import answer_of

PTJ = ("kubeflow.org", "v1", "pytorchjobs")
log = logging.getLogger("ctxext.controller")


def missing(exc: BaseException) -> bool:
    """True for the API's 404 Not Found."""
    return isinstance(exc, client.ApiException) and exc.status == 404


class KubeApi:
    """The requests a pass makes (see the module docstring)."""

    def __init__(self, api: client.CustomObjectsApi, core: client.CoreV1Api | None = None):
        self.api, self.core = api, core

    def service_account_exists(self, namespace: str, name: str) -> bool | None:
        """True / False, or None when this API server or our rights cannot tell (:mod:`.identity`)."""
        if self.core is None:
            return None
        try:
            self.core.read_namespaced_service_account(name, namespace)
            return True
        except client.ApiException as exc:
            answer = answer_of(exc)
            if answer is None:
                log.debug("cannot tell whether ServiceAccount %s/%s exists: %s", namespace, name, exc.status)
            return answer

    def read(self, namespace: str, name: str) -> dict[str, Any] | None:
        """The CEJ, or None when it no longer exists."""
        try:
            return cast(dict[str, Any], self.api.get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, name))
        except client.ApiException as exc:
            if missing(exc):
                return None
            raise

    def list_jobs(self, namespace: str, name: str) -> list[dict[str, Any]]:
        """The PyTorchJobs labelled as the CEJ's (resync passes only)."""
        found = cast(dict[str, Any], self.api.list_namespaced_custom_object(
            *PTJ[:2], namespace, PTJ[2], label_selector=f"{LABEL_JOB}={name}"))
        return list(found.get("items") or [])

    def create_job(self, namespace: str, body: dict[str, Any]) -> dict[str, Any]:
        """Create a PyTorchJob; one that already exists (409) is read back instead."""
        name = body["metadata"]["name"]
        try:
            created = self.api.create_namespaced_custom_object(*PTJ[:2], namespace, PTJ[2], body,
                                                               field_validation="Strict")
            metrics.PYTORCHJOBS_CREATED.inc()
            log.info("created PyTorchJob %s/%s", namespace, name)
            return cast(dict[str, Any], created)
        except client.ApiException as exc:
            if exc.status != 409:
                raise
            return cast(dict[str, Any], self.api.get_namespaced_custom_object(*PTJ[:2], namespace, PTJ[2], name))

    def set_suspend(self, namespace: str, name: str, suspend: bool) -> dict[str, Any]:
        return cast(dict[str, Any], self.api.patch_namespaced_custom_object(
            *PTJ[:2], namespace, PTJ[2], name, {"spec": {"runPolicy": {"suspend": suspend}}}))

    def patch_status(self, namespace: str, name: str, patch: dict[str, Any]) -> dict[str, Any]:
        """Merge-patch the operator's status fields; returns the CEJ as it is now."""
        return cast(dict[str, Any], self.api.patch_namespaced_custom_object_status(
            GROUP, VERSION, namespace, PLURAL, name, {"status": patch}))
