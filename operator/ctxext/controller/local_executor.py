"""``ctxext local-executor``: runs PyTorchJobs on this machine — a development stand-in for the
Kubeflow training-operator, not a replacement for it (no pods, no scheduling, no isolation).

Every ``poll`` seconds it lists PyTorchJobs and, like the training-operator, writes their
conditions: ``Created`` and ``Running`` when it starts the replicas (see
:mod:`ctxext.controller.local_launch` for the processes, environment and the ``--root`` directory
mapping), ``Succeeded`` when every replica exits 0, ``Failed`` (with the exit code and the last log
line) when one does not. ``spec.runPolicy.suspend: true`` stops the processes (SIGTERM, so the
trainer checkpoints, then SIGKILL after the pod template's ``terminationGracePeriodSeconds``, else
``stop_grace``) and sets ``Suspended``; un-suspending starts them again (the trainer resumes from
its checkpoint).

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

from ctxext.controller.local_launch import replica_processes
from ctxext.controller.observe import TERMINAL

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


def pod_grace_seconds(job: dict[str, Any]) -> float | None:
    """terminationGracePeriodSeconds of the Master pod template, if set.

    >>> pod_grace_seconds({"spec": {"pytorchReplicaSpecs": {"Master": {"template": {"spec": {
    ...     "terminationGracePeriodSeconds": 240}}}}}})
    240.0
    """
    master = ((job.get("spec") or {}).get("pytorchReplicaSpecs") or {}).get("Master") or {}
    value = ((master.get("template") or {}).get("spec") or {}).get("terminationGracePeriodSeconds")
    return float(value) if isinstance(value, int | float) else None


def _true(job: dict[str, Any], kind: str) -> bool:
    return any(c.get("type") == kind and c.get("status") == "True"
               for c in (job.get("status") or {}).get("conditions") or [])


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

    # -- API ------------------------------------------------------------------------------------
    def list_jobs(self) -> list[dict[str, Any]]:
        if not self.namespaces:
            return list(cast(dict[str, Any], self.api.list_cluster_custom_object(*PTJ))["items"])
        return [j for ns in self.namespaces for j in cast(dict[str, Any], self.api.list_namespaced_custom_object(
            PTJ[0], PTJ[1], ns, PTJ[2]))["items"]]

    def set_condition(self, job: dict[str, Any], kind: str, reason: str, message: str) -> None:
        """Set condition ``kind`` True (Running/Suspended turned False as the training-operator does)."""
        now = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        conds = [dict(c) for c in (job.get("status") or {}).get("conditions") or [] if c.get("type") != kind]
        off = {"Running": ["Suspended"], "Suspended": ["Running"], "Succeeded": ["Running"], "Failed": ["Running"]}
        for c in conds:
            if c.get("type") in off.get(kind, []) and c.get("status") == "True":
                c.update(status="False", lastTransitionTime=now, lastUpdateTime=now)
        conds.append({"type": kind, "status": "True", "reason": reason, "message": message,
                      "lastTransitionTime": now, "lastUpdateTime": now})
        status: dict[str, Any] = {"conditions": conds}
        if kind == "Running" and not (job.get("status") or {}).get("startTime"):
            status["startTime"] = now
        if kind in TERMINAL:
            status["completionTime"] = now
        meta = job["metadata"]
        updated: Any = self.api.patch_namespaced_custom_object_status(PTJ[0], PTJ[1], meta["namespace"], PTJ[2],
                                                                 meta["name"], {"status": status})
        job["status"] = updated.get("status")
        log.info("%s/%s: %s (%s)", meta["namespace"], meta["name"], kind, message)

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

    def handle(self, key: str, job: dict[str, Any]) -> None:
        if any(_true(job, t) for t in TERMINAL):
            if key in self.running:
                self.stop(key)
            return
        if ((job.get("spec") or {}).get("runPolicy") or {}).get("suspend"):
            if key in self.running:
                self.stop(key)
            if not _true(job, "Suspended"):
                self.set_condition(job, "Suspended", "JobSuspended", "suspended: local processes stopped")
            return
        if key in self.running:
            self.check(key, job)
            return
        self.start(key, job)

    def start(self, key: str, job: dict[str, Any]) -> None:
        self._kill_stale(key)
        if not _true(job, "Created"):
            self.set_condition(job, "Created", "JobCreated", "PyTorchJob created (local executor)")
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
        self.set_condition(job, "Running", "JobRunning", f"{len(run.procs)} replica(s) running locally")

    def check(self, key: str, job: dict[str, Any]) -> None:
        run = self.running[key]
        codes = {name: p.poll() for name, p in run.procs.items()}
        failed = {n: c for n, c in codes.items() if c not in (None, 0)}
        if failed:
            name, code = next(iter(failed.items()))
            self.stop(key)
            self.set_condition(job, "Failed", "JobFailed",
                               f"replica {name} exited with code {code}: {_last_line(run.logs[name])}")
        elif all(c == 0 for c in codes.values()):
            self.stop(key)
            self.set_condition(job, "Succeeded", "JobSucceeded", "all replicas exited 0")

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
