"""The controller's API calls (the synchronous ``kubernetes`` client), each one request.

:class:`KubeApi` is what :mod:`ctxext.controller.engine` runs in its thread pool: read a
ContextExtensionJob, create a training job — a PyTorchJob or a TrainJob, by the manifest's kind
(:mod:`ctxext.controller.backends`) — (409 AlreadyExists → read the existing one back: names are
deterministic, so it is the same attempt), suspend or resume one, and merge-patch the CEJ's status.
Event-driven passes make no list call (the owned jobs come from kopf's indexes); only the resync lists
a job's training jobs of both kinds, to correct an index that a watch restart left stale (kopf's
re-list after 410 Gone adds objects but never drops the ones deleted meanwhile). :meth:`KubeApi.served`
asks discovery which of the two APIs the cluster serves, before a job's first attempt.
"""

from __future__ import annotations

import logging
from typing import Any, cast

from kubernetes import client

from ctxext.api.base import GROUP, PLURAL, VERSION
from ctxext.controller import metrics
from ctxext.controller.backends import BACKENDS, by_kind
from ctxext.controller.backends.choice import Served
from ctxext.controller.backends.trainjob import GROUP as TRAINER_GROUP
from ctxext.controller.backends.trainjob import VERSION as TRAINER_VERSION
from ctxext.controller.builder import LABEL_JOB
from ctxext.controller.identity import answer_of

RUNTIMES = (TRAINER_GROUP, TRAINER_VERSION, "clustertrainingruntimes")
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
        """The PyTorchJobs and TrainJobs labelled as the CEJ's (resync passes only); an API not served is skipped."""
        out: list[dict[str, Any]] = []
        for backend in BACKENDS.values():
            group, version, plural = backend.resource
            try:
                found = cast(dict[str, Any], self.api.list_namespaced_custom_object(
                    group, version, namespace, plural, label_selector=f"{LABEL_JOB}={name}"))
            except client.ApiException as exc:
                if missing(exc):  # the cluster does not serve this API
                    continue
                raise
            out += [{"kind": backend.kind, **item} for item in found.get("items") or []]
        return out

    def served(self, runtime: str) -> Served:
        """Which training APIs the cluster serves (discovery), and whether ClusterTrainingRuntime ``runtime``
        exists; None where it cannot tell (a 403 on the runtime: the operator may not read it)."""
        answers = {name: self._serves(*backend.resource) for name, backend in BACKENDS.items()}
        exists: bool | None = None
        if answers["trainjob"]:
            try:
                self.api.get_cluster_custom_object(*RUNTIMES, runtime)
                exists = True
            except client.ApiException as exc:
                if not missing(exc) and exc.status != 403:
                    raise
                exists = False if missing(exc) else None
                if exists is None:
                    log.warning("cannot read ClusterTrainingRuntime %s (%s): not assuming it exists", runtime,
                                exc.status)
        return Served(pytorchjob=answers["pytorchjob"], trainjob=answers["trainjob"], runtime=exists)

    def _serves(self, group: str, version: str, plural: str) -> bool:
        """Does discovery list ``plural`` under ``/apis/group/version``? (404: the group version is not served.)"""
        try:
            found = self.api.get_api_resources(group, version)
        except client.ApiException as exc:
            if missing(exc):
                return False
            raise
        return any(r.name == plural for r in found.resources or [])

    def create_job(self, namespace: str, body: dict[str, Any]) -> dict[str, Any]:
        """Create a PyTorchJob or TrainJob (by ``body``'s kind); one that already exists (409) is read back."""
        name, kind = body["metadata"]["name"], body["kind"]
        group, version, plural = by_kind(kind).resource
        try:
            created = self.api.create_namespaced_custom_object(group, version, namespace, plural, body,
                                                               field_validation="Strict")
            (metrics.PYTORCHJOBS_CREATED if kind == "PyTorchJob" else metrics.TRAINJOBS_CREATED).inc()
            log.info("created %s %s/%s", kind, namespace, name)
            return cast(dict[str, Any], created)
        except client.ApiException as exc:
            if exc.status != 409:
                raise
            return cast(dict[str, Any], self.api.get_namespaced_custom_object(group, version, namespace, plural, name))

    def set_suspend(self, namespace: str, name: str, suspend: bool, kind: str = "PyTorchJob") -> dict[str, Any]:
        backend = by_kind(kind)
        group, version, plural = backend.resource
        return cast(dict[str, Any], self.api.patch_namespaced_custom_object(
            group, version, namespace, plural, name, backend.suspend_patch(suspend)))

    def patch_status(self, namespace: str, name: str, patch: dict[str, Any], *, uid: str | None = None,
                     current: dict[str, Any] | None = None, resource_version: str | None = None) -> dict[str, Any]:
        """Patch the operator's status fields; returns the CEJ as it is now.

        With ``uid``, only the ContextExtensionJob with that UID is patched: a JSON patch whose first operation
        tests ``/metadata/uid``, so a pass over a job deleted meanwhile cannot write its status onto a new job of
        the same name (the API server refuses it; the pass is retried with a fresh read). ``current`` is the
        status the patch was computed from (None: the job has none yet, and ``resource_version`` is the one read:
        see :func:`status_json_patch`). Without ``uid``, a merge patch.
        """
        if uid is None:
            return cast(dict[str, Any], self.api.patch_namespaced_custom_object_status(
                GROUP, VERSION, namespace, PLURAL, name, {"status": patch}))
        return cast(dict[str, Any], self.api.patch_namespaced_custom_object_status(
            GROUP, VERSION, namespace, PLURAL, name, status_json_patch(patch, uid, current, resource_version),
            _content_type="application/json-patch+json"))


def status_json_patch(patch: dict[str, Any], uid: str, current: dict[str, Any] | None,
                      resource_version: str | None = None) -> list[dict[str, Any]]:
    """The JSON patch (RFC 6902) that applies the merge patch ``patch`` to ``status`` of the object with ``uid``.

    Each operator field is added (replaced) or removed on its own, so the trainer's fields are never touched.
    A job without status yet gets its whole ``/status`` at once, and only if nothing has changed since it was
    read (``resource_version``): had the trainer written its first progress meanwhile, replacing ``/status``
    would drop it, so the server refuses and the pass is retried with a fresh read.

    >>> status_json_patch({"phase": "Running", "warnings": None}, "u1", {"warnings": ["w"]})
    [{'op': 'test', 'path': '/metadata/uid', 'value': 'u1'}, {'op': 'add', 'path': '/status/phase', \
'value': 'Running'}, {'op': 'remove', 'path': '/status/warnings'}]
    >>> status_json_patch({"phase": "Pending", "stage": None}, "u1", None, "41")[1:]
    [{'op': 'test', 'path': '/metadata/resourceVersion', 'value': '41'}, {'op': 'add', 'path': '/status', \
'value': {'phase': 'Pending'}}]
    """
    ops: list[dict[str, Any]] = [{"op": "test", "path": "/metadata/uid", "value": uid}]
    if current is None:
        if resource_version is not None:
            ops.append({"op": "test", "path": "/metadata/resourceVersion", "value": resource_version})
        return [*ops, {"op": "add", "path": "/status", "value": {k: v for k, v in patch.items() if v is not None}}]
    for key, value in patch.items():
        path = "/status/" + key.replace("~", "~0").replace("/", "~1")
        if value is not None:
            ops.append({"op": "add", "path": path, "value": value})  # add replaces a member that exists
        elif key in current:
            ops.append({"op": "remove", "path": path})
    return ops
