"""``ctxext local-executor``: runs PyTorchJobs on this machine — a development stand-in for the
Kubeflow training-operator, not a replacement for it (no pods, no scheduling, no isolation).

Every ``poll`` seconds it lists PyTorchJobs and writes their status as training-operator v1.9 does
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

Restart-safe: finished jobs (a Succeeded/Failed condition) are never run again. Processes die with
the executor (``PR_SET_PDEATHSIG``); process groups recorded in ``ROOT/.executor/`` by an executor
that was SIGKILLed are killed before a job that still says Running is started again.
"""

from __future__ import annotations

import ctypes
import json
import logging
import os
import signal
import socket
import subprocess
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, cast

import urllib3
from kubernetes import client

from ctxext.controller.local_launch import pod_grace_seconds, replica_processes
from ctxext.controller.observe import TERMINAL, parse_time

PTJ = ("kubeflow.org", "v1", "pytorchjobs")
log = logging.getLogger("ctxext.local_executor")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _die_with_parent() -> None:  # pragma: no cover - runs in the child
    ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


@dataclass
class Running:
    procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    logs: dict[str, Path] = field(default_factory=dict)
    grace: float | None = None
    """The pods' terminationGracePeriodSeconds (SIGTERM → SIGKILL), as Kubernetes would give them."""


def _true(job: dict[str, Any], kind: str) -> bool:
    return any(c.get("type") == kind and c.get("status") == "True"
               for c in (job.get("status") or {}).get("conditions") or [])


def _run_policy(job: dict[str, Any]) -> dict[str, Any]:
    return dict((job.get("spec") or {}).get("runPolicy") or {})


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _last_line(path: Path) -> str:
    try:
        lines = [ln for ln in path.read_text(errors="replace").splitlines() if ln.strip()]
    except FileNotFoundError:
        return ""
    return lines[-1][-300:] if lines else ""


class LocalExecutor:
    """Runs PyTorchJobs as local processes; see the module docstring."""

    def __init__(self, api: client.CustomObjectsApi, root: Path, *, namespaces: list[str] | None = None,
                 poll: float = 1.0, stop_grace: float = 30.0):
        self.api, self.root, self.namespaces = api, root.resolve(), namespaces or []
        self.poll, self.stop_grace = poll, stop_grace
        self.state_dir = self.root / ".executor"
        self.running: dict[str, Running] = {}
        self.lingering: dict[str, Running] = {}  # replicas of finished jobs with cleanPodPolicy None

    # -- API ------------------------------------------------------------------------------------
    def list_jobs(self) -> list[dict[str, Any]]:
        if not self.namespaces:
            return list(cast(dict[str, Any], self.api.list_cluster_custom_object(*PTJ))["items"])
        return [j for ns in self.namespaces for j in cast(dict[str, Any], self.api.list_namespaced_custom_object(
            PTJ[0], PTJ[1], ns, PTJ[2]))["items"]]

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
        seen = set()
        for job in self.list_jobs():
            key = f"{job['metadata']['namespace']}/{job['metadata']['name']}"
            seen.add(key)
            try:
                self.handle(key, job)
            except client.ApiException as exc:
                log.warning("%s: %s", key, exc.reason)
        for key in list(self.running):
            if key not in seen:  # deleted: nothing to report to
                self.stop(key)
        for key in list(self.lingering):
            if key not in seen:  # a deleted job's pods are garbage-collected
                self.running[key] = self.lingering.pop(key)
                self.stop(key)

    def handle(self, key: str, job: dict[str, Any]) -> None:
        name = job["metadata"]["name"]
        if any(_true(job, t) for t in TERMINAL):
            if key in self.running:
                self.stop(key)
            self._reap(key, job)
            return
        if not _true(job, "Created"):
            self.set_condition(job, "Created", "PyTorchJobCreated", f"PyTorchJob {name} is created.")
        if _run_policy(job).get("suspend"):
            if key in self.running:
                self.stop(key)
            message = f"PyTorchJob {name} is suspended."
            if _true(job, "Running"):
                self.set_condition(job, "Running", "PyTorchJobSuspended", message, status="False")
            if not _true(job, "Suspended"):
                self.set_condition(job, "Suspended", "PyTorchJobSuspended", message)
            return
        if _true(job, "Suspended"):
            self.set_condition(job, "Suspended", "PyTorchJobResumed", f"PyTorchJob {name} is resumed.",
                               status="False", extra={"startTime": _now()})
        if key in self.running:
            self.check(key, job)
            return
        self.start(key, job)

    def start(self, key: str, job: dict[str, Any]) -> None:
        self._kill_stale(key)
        run = Running(grace=pod_grace_seconds(job))
        logs = self.state_dir / "logs" / job["metadata"]["namespace"]
        logs.mkdir(parents=True, exist_ok=True)
        for proc in replica_processes(job, self.root, _free_port()):
            for d in proc.mkdirs:
                d.mkdir(parents=True, exist_ok=True)
            path = logs / f"{job['metadata']['name']}-{proc.replica.lower()}.log"
            with open(path, "ab") as out:
                run.procs[proc.replica] = subprocess.Popen(
                    proc.argv, env={**os.environ, **proc.env}, stdout=out, stderr=subprocess.STDOUT,
                    cwd=self.root, start_new_session=True, preexec_fn=_die_with_parent)
            run.logs[proc.replica] = path
        self.running[key] = run
        self._write_pids(key, run)
        name = job["metadata"]["name"]
        self.set_condition(job, "Running", "PyTorchJobRunning", f"PyTorchJob {name} is running.")

    def check(self, key: str, job: dict[str, Any]) -> None:
        run, name, policy = self.running[key], job["metadata"]["name"], _run_policy(job)
        codes = {replica: p.poll() for replica, p in run.procs.items()}
        failed = {r: c for r, c in codes.items() if c not in (None, 0)}
        deadline = policy.get("activeDeadlineSeconds")
        started = parse_time((job.get("status") or {}).get("startTime"))
        if failed:
            for replica, code in failed.items():
                log.info("%s: replica %s exited with code %s: %s", key, replica, code, _last_line(run.logs[replica]))
            if policy.get("backoffLimit") == 0:  # common/job.go: a new failure past the limit deletes every pod
                self.stop(key)
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
            self.stop(key)
            self.set_condition(job, "Failed", "PyTorchJobFailed",
                               f"Job {name} has failed because it was active longer than specified deadline")

    def _clean_pods(self, key: str, policy: dict[str, Any]) -> None:
        """A finished job's pods still running are deleted unless cleanPodPolicy is None, upstream's default
        (common/job.go DeletePodsAndServices; pytorch_defaults.go)."""
        if policy.get("cleanPodPolicy", "None") == "None":
            self.lingering[key] = self.running.pop(key)
        else:
            self.stop(key)

    def _reap(self, key: str, job: dict[str, Any]) -> None:
        """Forget the processes a finished job left running under cleanPodPolicy None, once they exit."""
        run = self.lingering.get(key)
        if run is not None and all(p.poll() is not None for p in run.procs.values()):
            del self.lingering[key]
            (self.state_dir / "pids" / key.replace("/", "_")).unlink(missing_ok=True)

    # -- processes ---------------------------------------------------------------------------------
    def stop(self, key: str) -> None:
        run = self.running.pop(key, None)
        if run is None:
            return
        for p in run.procs.values():
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGTERM)
        deadline = time.monotonic() + (run.grace if run.grace is not None else self.stop_grace)
        for p in run.procs.values():
            try:
                p.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait()
        (self.state_dir / "pids" / key.replace("/", "_")).unlink(missing_ok=True)

    def stop_all(self) -> None:
        self.running.update(self.lingering)
        self.lingering.clear()
        for key in list(self.running):
            self.stop(key)

    def _write_pids(self, key: str, run: Running) -> None:
        path = self.state_dir / "pids" / key.replace("/", "_")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps({name: p.pid for name, p in run.procs.items()}))

    def _kill_stale(self, key: str) -> None:
        """Kill process groups a previous (SIGKILLed) executor left for this job."""
        path = self.state_dir / "pids" / key.replace("/", "_")
        try:
            pids = json.loads(path.read_text())
        except (FileNotFoundError, ValueError):
            return
        for pid in pids.values():
            try:
                if os.getpgid(pid) == pid:  # still the group leader we started
                    os.killpg(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        path.unlink(missing_ok=True)

    def run_forever(self) -> None:
        stopping = False

        def _stop(*_: Any) -> None:
            nonlocal stopping
            stopping = True

        signal.signal(signal.SIGTERM, _stop)
        signal.signal(signal.SIGINT, _stop)
        log.info("local executor: running PyTorchJobs under %s (namespaces: %s)", self.root,
                 ", ".join(self.namespaces) or "all")
        try:
            while not stopping:
                try:
                    self.tick()
                except (client.ApiException, OSError, urllib3.exceptions.HTTPError) as exc:
                    # The API server may be restarting: keep the processes, try again next poll.
                    log.warning("listing PyTorchJobs failed: %s", exc)
                time.sleep(self.poll)
        finally:
            self.stop_all()
