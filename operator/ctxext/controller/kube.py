"""The controller's I/O: read a ContextExtensionJob and its PyTorchJobs, run the pure reconciler,
then carry out its decision — create/suspend PyTorchJobs first, status patch last.

That order is what makes a restart at any moment safe: a PyTorchJob is created under its
deterministic name before status mentions it (409 AlreadyExists → read and adopt it), and the
next pass re-derives everything from the PyTorchJobs that exist. Passes over the same job are
serialised by a per-job lock (the create/update handlers, the resync timer and PyTorchJob events
all call :meth:`Controller.reconcile`).
"""

from __future__ import annotations

import logging
import threading
from collections import defaultdict
from datetime import UTC, datetime
from typing import Any, cast

import kopf
from kubernetes import client

from ctxext.api.base import API_VERSION, GROUP, KIND, PLURAL, VERSION
from ctxext.api.job import ContextExtensionJob
from ctxext.config import OperatorConfig
from ctxext.controller import metrics
from ctxext.controller.builder import LABEL_JOB, build_pytorchjob
from ctxext.controller.model import Decision, Inputs
from ctxext.controller.observe import observe
from ctxext.controller.reconcile import reconcile
from ctxext.errors import SpecError
from ctxext.manifest import job_from_object
from ctxext.planner import Plan, plan_curriculum

PTJ = ("kubeflow.org", "v1", "pytorchjobs")
log = logging.getLogger("ctxext.controller")


class Controller:
    """Reconciles ContextExtensionJobs through the Kubernetes API."""

    def __init__(self, config: OperatorConfig, api: client.CustomObjectsApi):
        self.config, self.api = config, api
        self.phases = metrics.PhaseTracker()
        self._locks: defaultdict[str, threading.Lock] = defaultdict(threading.Lock)

    # -- reads ----------------------------------------------------------------------------------
    def read(self, namespace: str, name: str) -> dict[str, Any] | None:
        try:
            return cast(dict[str, Any], self.api.get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, name))
        except client.ApiException as exc:
            if exc.status == 404:
                return None
            raise

    def list_jobs(self, namespace: str, name: str) -> list[dict[str, Any]]:
        found = cast(dict[str, Any], self.api.list_namespaced_custom_object(
            *PTJ[:2], namespace, PTJ[2], label_selector=f"{LABEL_JOB}={name}"))
        return list(found.get("items") or [])

    # -- the pass --------------------------------------------------------------------------------
    def reconcile(self, namespace: str, name: str) -> Decision | None:
        """One pass over ``namespace/name``; None when the job no longer exists."""
        key = f"{namespace}/{name}"
        with self._locks[key], metrics.RECONCILE_SECONDS.time():
            obj = self.read(namespace, name)
            if obj is None:
                self.forget(key)
                return None
            job, plan, error = parse_and_plan(obj)
            status = obj.get("status") or {}
            inputs = Inputs(name=name, namespace=namespace, generation=obj["metadata"].get("generation"),
                            spec=job.spec if job else None, plan=plan, spec_error=error, status=status,
                            jobs=[observe(j) for j in self.list_jobs(namespace, name)],
                            now=datetime.now(UTC), result_grace_seconds=self.config.result_grace_seconds)
            decision = reconcile(inputs)
            if job is not None and plan is not None:
                for create in decision.creates:
                    body = build_pytorchjob(job, plan, create.stage, attempt=create.attempt,
                                            learning_rate=create.learning_rate, config=self.config)
                    kopf.adopt(body, owner=kopf.Body(cast(kopf.RawBody, obj)))
                    self.create_job(namespace, body)
            for change in decision.suspends:
                self.api.patch_namespaced_custom_object(*PTJ[:2], namespace, PTJ[2], change.name,
                                                        {"spec": {"runPolicy": {"suspend": change.suspend}}})
            patch = decision.status_patch(status)
            if patch:
                self.api.patch_namespaced_custom_object_status(GROUP, VERSION, namespace, PLURAL, name,
                                                               {"status": patch})
            self._record(key, obj, decision)
            return decision

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

    def forget(self, key: str) -> None:
        self.phases.forget(key)

    def _record(self, key: str, obj: dict[str, Any], decision: Decision) -> None:
        self.phases.set(key, decision.status.get("phase"))
        for before, after in decision.transitions:
            metrics.STAGE_TRANSITIONS.labels(**{"from": before, "to": after}).inc()
        for seconds in decision.stage_durations:
            metrics.STAGE_SECONDS.observe(seconds)
        for event in decision.events:
            log.info("%s: %s: %s", key, event.reason, event.message)
            if self.config.post_events:
                try:  # best effort: an API server without events must not stop reconciliation
                    kopf.event(kopf.Body(cast(kopf.RawBody, obj)), type=event.type, reason=event.reason,
                               message=event.message)
                except Exception as exc:
                    log.debug("event not posted: %s", exc)


def parse_and_plan(obj: dict[str, Any]) -> tuple[ContextExtensionJob | None, Plan | None, SpecError | None]:
    """The job's spec and plan, or the SpecError that says which field is wrong. Never raises for a bad spec."""
    wire = {"apiVersion": API_VERSION, "kind": KIND, "metadata": obj.get("metadata") or {}, "spec": obj.get("spec")}
    try:
        job = job_from_object(wire)
    except SpecError as exc:
        return None, None, exc
    try:
        return job, plan_curriculum(job.spec), None
    except SpecError as exc:
        return job, None, exc
    except (ValueError, OSError) as exc:  # anything else the planner trips on is still about the spec
        return job, None, SpecError([("spec", str(exc))])
