"""``ctxext local-executor`` for TrainJobs: a stand-in for Kubeflow Trainer v2.3.0 + JobSet v0.12.0 + the Job
controller on one machine. The processes are :mod:`ctxext.controller.local_trainjob`'s; status is written
as ``pkg/controller/trainjob_controller.go`` writes it, from what JobSet would report:

* The runtime (``spec.runtimeRef``: a ClusterTrainingRuntime, or a TrainingRuntime in the TrainJob's
  namespace) is read once and kept in ``ROOT/.executor/runtimes/`` (upstream's runtime snapshot), so a
  runtime changed later does not change a TrainJob that has started. A kind Trainer does not know →
  ``Failed``, reason ``TrainingRuntimeNotSupported``, "unsupported runtime: KIND.GROUP". A runtime that
  does not exist: upstream's webhook refuses such a TrainJob; the controller, when it gets one, records
  only a warning event and retries, writing no condition. So does this (the warning goes to the log, once).
* ``spec.suspend: true`` → ``Suspended`` True (reason ``Suspended``, "TrainJob is suspended"), every process
  stopped (SIGTERM, SIGKILL after the pod's ``terminationGracePeriodSeconds``), ``jobsStatus`` suspended 1.
  ``false`` after that → ``Suspended`` False (reason ``Resumed``, "TrainJob is resumed") and the processes
  start again (the trainer resumes from its checkpoint).
* Every node exits 0 → ``Complete`` (reason ``AllJobsCompleted``, "jobset completed successfully"): JobSet's
  default success policy (All) over the one ``node`` Job, which completes when every index has.
* A node exits non-zero → it is started again (its container restarts, restartPolicy OnFailure) until
  the Job's backoffLimit is reached (runtime's, default 6; :class:`~.local_trainjob.NodePlan`); then the
  Job has failed, the other nodes are stopped and the TrainJob is ``Failed`` with JobSet's reason
  ``FailedJobs``, "jobset failed due to one or more job failures (first failed job: NAME-node-0)". With a
  runtime ``failurePolicy.maxRestarts`` every node is restarted first, up to that many times, and then
  ``ReachedMaxRestarts``. Not mimicked: failure-policy rules, podFailurePolicy, backoffLimitPerIndex, the
  kubelet's crash-loop back-off (a node restarts at the next poll) and counts across an executor restart.
* ``activeDeadlineSeconds`` past the creation time (or the last resume) while not suspended → ``Failed``,
  reason ``DeadlineExceeded``, "TrainJob exceeded its active deadline", processes stopped.
* ``jobsStatus``: ``[{name: node, active, ready, succeeded, failed, suspended}]``, counts of the one child Job
  (ready: every node running or done). Upstream leaves it as it was after a deadline (the JobSet is deleted).
* Finished (``Complete`` or ``Failed``) TrainJobs are never run again; ``spec.managedBy`` other than
  Trainer's own → left alone.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from kubernetes import client

from ctxext.controller import local_trainjob as lt
from ctxext.controller.local_procs import ProcessTable, free_port, last_line
from ctxext.controller.observe import parse_time

KEY_PREFIX = "TrainJob:"
VERSION, PLURAL = "v1alpha1", "trainjobs"
CONTROLLER = "trainer.kubeflow.org/trainjob-controller"
log = logging.getLogger("ctxext.local_executor")


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass
class _Attempt:
    plan: lt.NodePlan
    failures: int = 0
    restarts: int = 0


class TrainJobRunner:
    """Runs TrainJobs through a :class:`ProcessTable` (see the module docstring)."""

    def __init__(self, api: client.CustomObjectsApi, procs: ProcessTable):
        self.api, self.procs, self.root = api, procs, procs.root
        self.attempts: dict[str, _Attempt] = {}
        self.warned: set[tuple[str, str]] = set()

    @staticmethod
    def key(trainjob: dict[str, Any]) -> str:
        return f"{KEY_PREFIX}{trainjob['metadata']['namespace']}/{trainjob['metadata']['name']}"

    def _warn_once(self, key: str, message: str) -> None:
        if (key, message) not in self.warned:
            self.warned.add((key, message))
            log.warning("%s: %s", key, message)

    def _stop(self, key: str) -> None:
        self.procs.stop(key)
        self.attempts.pop(key, None)

    # -- runtime -----------------------------------------------------------------------------------
    def runtime(self, key: str, tj: dict[str, Any]) -> dict[str, Any] | None:
        """The TrainJob's runtime: its snapshot, else read (and snapshotted); None when it does not exist."""
        meta, ref = tj["metadata"], tj["spec"]["runtimeRef"]
        path = self.procs.state_dir / "runtimes" / f"{meta['namespace']}_{meta['name']}.json"
        try:
            snap = json.loads(path.read_text())
            if snap.get("uid") == meta.get("uid"):
                return dict(snap["runtime"])
        except (FileNotFoundError, ValueError):
            pass
        kind = ref.get("kind", "ClusterTrainingRuntime")
        try:
            if kind == "TrainingRuntime":
                obj: Any = self.api.get_namespaced_custom_object(lt.GROUP, VERSION, meta["namespace"],
                                                                 lt.RUNTIME_KINDS[kind], ref["name"])
            else:
                obj = self.api.get_cluster_custom_object(lt.GROUP, VERSION, lt.RUNTIME_KINDS[kind], ref["name"])
        except client.ApiException as exc:
            if exc.status != 404:
                raise
            what = ("not found ClusterTrainingRuntime specified in TrainJob" if kind != "TrainingRuntime"
                    else "TrainingRuntime specified in TrainJob is not found")
            self._warn_once(key, f"TrainJob resources reconciliation failed: {what}: {lt.RUNTIME_KINDS[kind]}."
                            f"{lt.GROUP} {ref['name']!r} not found (no condition is written, as upstream; retrying)")
            return None
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps({"uid": meta.get("uid"), "runtime": obj}))
        return dict(obj)

    # -- one pass ----------------------------------------------------------------------------------
    def handle(self, key: str, tj: dict[str, Any]) -> None:
        spec, status = tj["spec"], dict(tj.get("status") or {})
        if spec.get("managedBy", CONTROLLER) != CONTROLLER:  # trainjob.IsManagedByExternalController
            self._warn_once(key, f"managed by {spec['managedBy']}: left alone")
            return
        conds: list[dict[str, Any]] = list(status.get("conditions") or [])
        if lt.is_true(conds, "Complete") or lt.is_true(conds, "Failed"):
            self._stop(key)
            return
        now, jobs = _now(), status.get("jobsStatus")
        if message := lt.unsupported_runtime(tj):
            self._write(tj, lt.set_condition(conds, "Failed", "True", lt.NOT_SUPPORTED_REASON, message, now), jobs)
            return
        runtime = self.runtime(key, tj)
        if spec.get("suspend"):
            self._stop(key)
            if runtime is not None:  # the JobSet exists, its Job is suspended
                jobs = lt.jobs_status(suspended=True)
            conds = lt.set_condition(conds, "Suspended", "True", "Suspended", lt.SUSPENDED_MESSAGE, now)
        else:
            if lt.is_true(conds, "Suspended"):
                conds = lt.set_condition(conds, "Suspended", "False", "Resumed", lt.RESUMED_MESSAGE, now)
            if runtime is not None:
                conds, jobs = self._run(key, tj, runtime, conds, jobs, now)
        self._write(tj, self._deadline(key, tj, conds, now), jobs)

    def _start(self, key: str, tj: dict[str, Any], runtime: dict[str, Any], restarts: int = 0) -> bool:
        meta = tj["metadata"]
        try:
            plan = lt.node_plan(tj, runtime, self.root, free_port())
        except ValueError as exc:
            self._warn_once(key, f"cannot run on runtime {tj['spec']['runtimeRef']['name']}: {exc}")
            return False
        self.procs.start(key, meta["namespace"], meta["name"], plan.procs, grace=plan.grace)
        self.attempts[key] = _Attempt(plan, restarts=restarts)
        log.info("%s: started %d node(s)", key, len(plan.procs))
        return True

    def _run(self, key: str, tj: dict[str, Any], runtime: dict[str, Any], conds: list[dict[str, Any]],
             jobs: Any, now: str) -> tuple[list[dict[str, Any]], Any]:
        if (key not in self.procs.running or key not in self.attempts) and not self._start(key, tj, runtime):
            return conds, jobs
        run, attempt, name = self.procs.running[key], self.attempts[key], tj["metadata"]["name"]
        failed = [r for r, c in run.codes().items() if c not in (None, 0)]
        for replica in failed:
            attempt.failures += 1
            log.info("%s: %s exited with code %s: %s", key, replica, run.procs[replica].returncode,
                     last_line(run.logs[replica]))
        if failed and attempt.failures >= attempt.plan.failures_allowed:  # the node Job has failed
            self._stop(key)
            max_restarts = attempt.plan.max_restarts
            if max_restarts is not None and attempt.restarts < max_restarts:  # JobSet recreates its Jobs
                log.info("%s: restarting every node (JobSet restart %d of %d)", key, attempt.restarts + 1, max_restarts)
                self._start(key, tj, runtime, restarts=attempt.restarts + 1)
                return conds, lt.jobs_status(active=True, ready=True)
            reason, base = ((lt.FAILED_JOBS_REASON, lt.FAILED_JOBS_MESSAGE) if max_restarts is None
                            else (lt.MAX_RESTARTS_REASON, lt.MAX_RESTARTS_MESSAGE))
            conds = lt.set_condition(conds, "Failed", "True", reason, lt.failed_job_message(base, name), now)
            return conds, lt.jobs_status(failed=True)
        for replica in failed:  # restartPolicy OnFailure: the container starts again in its pod
            self.procs.respawn(key, replica)
        codes = run.codes()
        if all(c == 0 for c in codes.values()):
            self._stop(key)
            return lt.set_condition(conds, "Complete", "True", lt.COMPLETE_REASON, lt.COMPLETE_MESSAGE, now), \
                lt.jobs_status(succeeded=True)
        running = sum(1 for c in codes.values() if c is None)
        return conds, lt.jobs_status(active=running > 0, ready=running + sum(1 for c in codes.values() if c == 0)
                                     >= len(codes))

    def _deadline(self, key: str, tj: dict[str, Any], conds: list[dict[str, Any]], now: str) -> list[dict[str, Any]]:
        """trainjob_controller.go reconcileDeadline: from creation, or from the last resume."""
        seconds = tj["spec"].get("activeDeadlineSeconds")
        if not seconds or tj["spec"].get("suspend") or lt.is_true(conds, "Complete") or lt.is_true(conds, "Failed"):
            return conds
        resumed = next((c for c in conds if c.get("type") == "Suspended" and c.get("status") == "False"), None)
        start = parse_time((resumed or {}).get("lastTransitionTime") or tj["metadata"].get("creationTimestamp"))
        if start is None or datetime.now(UTC) <= start + timedelta(seconds=int(seconds)):
            return conds
        self._stop(key)
        return lt.set_condition(conds, "Failed", "True", lt.DEADLINE_REASON, lt.DEADLINE_MESSAGE, now)

    def _write(self, tj: dict[str, Any], conds: list[dict[str, Any]], jobs: Any) -> None:
        status = tj.get("status") or {}
        body: dict[str, Any] = {}
        if conds != (status.get("conditions") or []):
            body["conditions"] = conds
        if jobs is not None and jobs != status.get("jobsStatus"):
            body["jobsStatus"] = jobs
        if not body:
            return
        meta = tj["metadata"]
        updated: Any = self.api.patch_namespaced_custom_object_status(lt.GROUP, VERSION, meta["namespace"], PLURAL,
                                                                 meta["name"], {"status": body})
        tj["status"] = updated.get("status")
        old = {c["type"]: (c.get("status"), c.get("reason")) for c in status.get("conditions") or []}
        for c in conds:
            if old.get(c["type"]) != (c.get("status"), c.get("reason")):
                log.info("%s/%s: %s=%s %s (%s)", meta["namespace"], meta["name"], c["type"], c["status"],
                         c.get("reason"), c.get("message"))
