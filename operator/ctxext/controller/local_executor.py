"""``ctxext local-executor``: runs PyTorchJobs and TrainJobs on this machine — a development stand-in for
the Kubeflow training-operator (v1.9) and Kubeflow Trainer (v2.3), not a replacement for them (no pods,
no scheduling, no isolation).

Every ``poll`` seconds it lists the PyTorchJobs and the TrainJobs, each kind only while the API server
serves its CRD (a 404 on the list is logged once, and the other kind runs on). TrainJobs are run by
:mod:`ctxext.controller.local_trainjob_runner`; the processes of both kinds, their process groups and
what makes a restart safe are :mod:`ctxext.controller.local_procs`.

PyTorchJobs get their status as training-operator v1.9 writes it
(``pkg/controller.v1/common/job.go``, ``pytorch/pytorchjob_controller.go``, ``pkg/util/status.go``),
with its reasons and messages:

* ``Created`` ("PyTorchJob NAME is created."); ``Running`` when it starts the replicas (processes,
  environment and the ``--root`` mapping: :mod:`ctxext.controller.local_launch`).
* ``Succeeded`` when the **Master** exits 0.
* ``Failed`` when a replica exits non-zero: under ``backoffLimit: 0`` (the operator's jobs) "Job NAME has
  failed because it has reached the specified backoff limit", every replica stopped; otherwise "PyTorchJob
  NAME is failed because 1 Worker replica(s) failed.". Past ``activeDeadlineSeconds``: "Job NAME has failed
  because it was active longer than specified deadline", every replica stopped. Exit code and last log line
  go to the executor's log (upstream has neither).
* A finished job's replicas still running are stopped unless ``cleanPodPolicy`` is ``None`` (the default).
* ``runPolicy.suspend: true`` stops the processes (SIGTERM, so the trainer checkpoints, then SIGKILL after
  the pod's ``terminationGracePeriodSeconds``, else ``stop_grace``), sets ``Suspended`` and ``Running``
  False ("PyTorchJob NAME is suspended."); un-suspending sets ``Suspended`` False ("... is resumed."),
  resets ``startTime`` and starts them again (the trainer resumes from its checkpoint).
* Nothing changes a job once it has a ``Failed`` condition.

Restart-safe: finished jobs (a Succeeded/Failed condition) are never run again; processes die with
the executor, and those an executor that was SIGKILLed left are killed before a job that still says
Running is started again (:mod:`ctxext.controller.local_procs`).
"""

from __future__ import annotations

import logging
import signal
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, cast

import urllib3
from kubernetes import client

from ctxext.controller.backends import trainjob as tj
from ctxext.controller.local_launch import pod_grace_seconds, replica_processes
from ctxext.controller.local_procs import ProcessTable, free_port, last_line
from ctxext.controller.local_trainjob_runner import KEY_PREFIX, TrainJobRunner
from ctxext.controller.observe import TERMINAL, parse_time

PTJ = ("kubeflow.org", "v1", "pytorchjobs")
TRAINJOB = (tj.GROUP, tj.VERSION, tj.PLURAL)
log = logging.getLogger("ctxext.local_executor")


def _true(job: dict[str, Any], kind: str) -> bool:
    return any(c.get("type") == kind and c.get("status") == "True"
               for c in (job.get("status") or {}).get("conditions") or [])


def _run_policy(job: dict[str, Any]) -> dict[str, Any]:
    return dict((job.get("spec") or {}).get("runPolicy") or {})


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _is_pytorchjob(key: str) -> bool:
    return not key.startswith(KEY_PREFIX)


class LocalExecutor:
    """Runs PyTorchJobs and TrainJobs as local processes; see the module docstring."""

    def __init__(self, api: client.CustomObjectsApi, root: Path, *, namespaces: list[str] | None = None,
                 poll: float = 1.0, stop_grace: float = 30.0):
        self.api, self.root, self.namespaces = api, root.resolve(), namespaces or []
        self.poll = poll
        self.procs = ProcessTable(self.root, stop_grace=stop_grace)
        self.trainjobs = TrainJobRunner(api, self.procs)
        self.served: dict[str, bool] = {}

    # -- API ------------------------------------------------------------------------------------
    def list_objects(self, resource: tuple[str, str, str]) -> list[dict[str, Any]] | None:
        """The objects of ``resource`` in the watched namespaces; None when its CRD is not served (404),
        which is logged once (and again once it is served)."""
        group, version, plural = resource
        try:
            if not self.namespaces:
                items = cast(dict[str, Any], self.api.list_cluster_custom_object(group, version, plural))["items"]
            else:
                items = [j for ns in self.namespaces for j in cast(
                    dict[str, Any], self.api.list_namespaced_custom_object(group, version, ns, plural))["items"]]
        except client.ApiException as exc:
            if exc.status != 404:
                raise
            if self.served.get(plural, True):
                log.info("%s.%s is not served by the API server (404): not running any until it is", plural, group)
            self.served[plural] = False
            return None
        if not self.served.get(plural, True):
            log.info("%s.%s is served now", plural, group)
        self.served[plural] = True
        return list(items)

    def set_condition(self, job: dict[str, Any], kind: str, reason: str, message: str, *,
                      status: str = "True", extra: dict[str, Any] | None = None) -> None:
        """Set condition ``kind`` as training-operator v1.9's ``setCondition`` does: nothing changes once the
        job has Failed; Succeeded/Failed turn Running False; Running and Restarting replace each other."""
        now = _now()
        if _true(job, "Failed"):
            return
        conds = [dict(c) for c in (job.get("status") or {}).get("conditions") or []]
        old = next((c for c in conds if c.get("type") == kind), None)
        if old is not None and old.get("status") == status and old.get("reason") == reason and not extra:
            return
        since = old.get("lastTransitionTime", now) if old is not None and old.get("status") == status else now
        kept = []
        for c in conds:
            if c.get("type") == kind or {c.get("type"), kind} == {"Running", "Restarting"}:
                continue
            if kind in TERMINAL and c.get("type") == "Running":
                c["status"] = "False"
            kept.append(c)
        kept.append({"type": kind, "status": status, "reason": reason, "message": message,
                     "lastTransitionTime": since, "lastUpdateTime": now})
        body: dict[str, Any] = {"conditions": kept, **(extra or {})}
        if kind == "Running" and status == "True" and not (job.get("status") or {}).get("startTime"):
            body["startTime"] = now
        if kind in TERMINAL and not (job.get("status") or {}).get("completionTime"):
            body["completionTime"] = now
        meta = job["metadata"]
        updated: Any = self.api.patch_namespaced_custom_object_status(PTJ[0], PTJ[1], meta["namespace"], PTJ[2],
                                                                 meta["name"], {"status": body})
        job["status"] = updated.get("status")
        log.info("%s/%s: %s=%s (%s)", meta["namespace"], meta["name"], kind, status, message)

    # -- one pass ----------------------------------------------------------------------------------
    def tick(self) -> None:
        kinds: list[tuple[tuple[str, str, str], Callable[[dict[str, Any]], str], Callable[[str], bool],
                          Callable[[str, dict[str, Any]], None]]] = [
            (PTJ, lambda j: f"{j['metadata']['namespace']}/{j['metadata']['name']}", _is_pytorchjob, self.handle),
            (TRAINJOB, self.trainjobs.key, lambda k: not _is_pytorchjob(k), self.trainjobs.handle),
        ]
        for resource, key_of, mine, handle in kinds:
            jobs = self.list_objects(resource)
            if jobs is None:
                continue
            seen = set()
            for job in jobs:
                key = key_of(job)
                seen.add(key)
                try:
                    handle(key, job)
                except client.ApiException as exc:
                    log.warning("%s: %s", key, exc.reason)
            self.procs.forget_deleted(seen, mine)  # deleted: nothing to report to, pods garbage-collected

    def handle(self, key: str, job: dict[str, Any]) -> None:
        name = job["metadata"]["name"]
        if any(_true(job, t) for t in TERMINAL):
            if key in self.procs.running:
                self.procs.stop(key)
            self.procs.reap(key)
            return
        if not _true(job, "Created"):
            self.set_condition(job, "Created", "PyTorchJobCreated", f"PyTorchJob {name} is created.")
        if _run_policy(job).get("suspend"):
            if key in self.procs.running:
                self.procs.stop(key)
            message = f"PyTorchJob {name} is suspended."
            if _true(job, "Running"):
                self.set_condition(job, "Running", "PyTorchJobSuspended", message, status="False")
            if not _true(job, "Suspended"):
                self.set_condition(job, "Suspended", "PyTorchJobSuspended", message)
            return
        if _true(job, "Suspended"):
            self.set_condition(job, "Suspended", "PyTorchJobResumed", f"PyTorchJob {name} is resumed.",
                               status="False", extra={"startTime": _now()})
        if key in self.procs.running:
            self.check(key, job)
            return
        self.start(key, job)

    def start(self, key: str, job: dict[str, Any]) -> None:
        meta = job["metadata"]
        self.procs.start(key, meta["namespace"], meta["name"], replica_processes(job, self.root, free_port()),
                         grace=pod_grace_seconds(job))
        self.set_condition(job, "Running", "PyTorchJobRunning", f"PyTorchJob {meta['name']} is running.")

    def check(self, key: str, job: dict[str, Any]) -> None:
        run, name, policy = self.procs.running[key], job["metadata"]["name"], _run_policy(job)
        codes = run.codes()
        failed = {r: c for r, c in codes.items() if c not in (None, 0)}
        deadline = policy.get("activeDeadlineSeconds")
        started = parse_time((job.get("status") or {}).get("startTime"))
        if failed:
            for replica, code in failed.items():
                log.info("%s: replica %s exited with code %s: %s", key, replica, code, last_line(run.logs[replica]))
            if policy.get("backoffLimit") == 0:  # common/job.go: a new failure past the limit deletes every pod
                self.procs.stop(key)
                message = f"Job {name} has failed because it has reached the specified backoff limit"
            else:  # pytorchjob_controller.go UpdateJobStatus (restartPolicy Never)
                kind = next(iter(failed)).split("-")[0]
                count = sum(1 for r in failed if r.split("-")[0] == kind)
                message = f"PyTorchJob {name} is failed because {count} {kind} replica(s) failed."
                self._clean_pods(key, policy)
            self.set_condition(job, "Failed", "PyTorchJobFailed", message)
        elif codes.get("Master") == 0:  # the Master decides (pytorchjob_controller.go UpdateJobStatus)
            self.set_condition(job, "Succeeded", "PyTorchJobSucceeded", f"PyTorchJob {name} is successfully completed.")
            self._clean_pods(key, policy)
        elif isinstance(deadline, int | float) and started is not None and \
                (datetime.now(UTC) - started).total_seconds() > deadline:
            self.procs.stop(key)
            self.set_condition(job, "Failed", "PyTorchJobFailed",
                               f"Job {name} has failed because it was active longer than specified deadline")

    def _clean_pods(self, key: str, policy: dict[str, Any]) -> None:
        """A finished job's pods still running are deleted unless cleanPodPolicy is None, upstream's default
        (common/job.go DeletePodsAndServices; pytorch_defaults.go)."""
        if policy.get("cleanPodPolicy", "None") == "None":
            self.procs.linger(key)
        else:
            self.procs.stop(key)

    def run_forever(self) -> None:
        stopping = False

        def _stop(*_: Any) -> None:
            nonlocal stopping
            stopping = True

        signal.signal(signal.SIGTERM, _stop)
        signal.signal(signal.SIGINT, _stop)
        log.info("local executor: running PyTorchJobs and TrainJobs under %s (namespaces: %s)", self.root,
                 ", ".join(self.namespaces) or "all")
        try:
            while not stopping:
                try:
                    self.tick()
                except (client.ApiException, OSError, urllib3.exceptions.HTTPError) as exc:
                    # The API server may be restarting: keep the processes, try again next poll.
                    log.warning("listing PyTorchJobs or TrainJobs failed: %s", exc)
                time.sleep(self.poll)
        finally:
            self.procs.stop_all()
