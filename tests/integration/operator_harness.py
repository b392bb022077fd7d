"""Run ``ctxext operator`` as a subprocess against the test API server, and play the training-operator.

Used by tests/integration/test_operator_*.py and tests/e2e/test_operator_e2e.py. The test API server
has no events resource, so event posting is off (CTXEXT_POST_EVENTS=0). It serves both Kubeflow APIs
(PyTorchJob and TrainJob, with the torch-distributed runtime), where the operator's default would choose
TrainJob: so the operator runs with CTXEXT_BACKEND=pytorchjob unless a test names its backend (the tests of
#22 item 5 run on both, through the ``backend`` fixture of tests/conftest.py).
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

from kubernetes import client
from kubernetes.client import ApiException

from ctxext.api.base import GROUP, PLURAL, VERSION
from ctxext.controller.builder import ANNOTATION_RESULT_KEY
from ctxext.results import SIGNATURE
from ctxext.results import sign as sign_result

CTXEXT = str(Path(sys.executable).with_name("ctxext"))
PTJ = ("kubeflow.org", "v1")
TJ = ("trainer.kubeflow.org", "v1alpha1")
#: (group, version, plural) of each backend's training jobs.
RESOURCES = {"pytorchjob": (*PTJ, "pytorchjobs"), "trainjob": (*TJ, "trainjobs")}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Proc:
    """A long-running ctxext subprocess with its log in a file."""

    def __init__(self, args: list[str], log: Path, env: dict[str, str]):
        self.args, self.log_path, self.env = args, log, env
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> Proc:
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen([CTXEXT, *self.args], env=self.env, stdout=log, stderr=subprocess.STDOUT,
                                         start_new_session=True)
        return self

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill(self) -> None:
        """SIGKILL: no chance to clean up, as in a node failure."""
        if self.alive():
            assert self.proc is not None
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()

    def stop(self) -> None:
        if self.alive():
            assert self.proc is not None
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.kill()

    def tail(self, n: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])
        except FileNotFoundError:
            return ""


#: The operator's timing settings run at their shipped defaults (resync 300 s, status refresh 30 s, result grace
#: 30 s): a test that passes only because a 2 s resync papered over a lost watch event or a stale kopf index
#: would hide the bug. A test may still pass its own value (say why where it does).
SHIPPED_TIMING = ("CTXEXT_RESYNC_SECONDS", "CTXEXT_STATUS_REFRESH_SECONDS", "CTXEXT_RESULT_GRACE_SECONDS")


class OperatorProcess(Proc):
    """``ctxext operator`` at the shipped timing defaults, no event posting (the test API server has no
    events), and free ports for /healthz and /metrics."""

    def __init__(self, kubeconfig: str, log: Path, backend: str = "pytorchjob", **extra_env: str):
        self.health_port, self.metrics_port = free_port(), free_port()
        inherited = {k: v for k, v in os.environ.items() if k not in SHIPPED_TIMING}
        env = {**inherited, "KUBECONFIG": kubeconfig, "OMP_NUM_THREADS": "1", "CTXEXT_POST_EVENTS": "0",
               "CTXEXT_BACKEND": backend,
               "CTXEXT_HEALTH_PORT": str(self.health_port), "CTXEXT_METRICS_PORT": str(self.metrics_port),
               **extra_env}
        super().__init__(["operator", "--kubeconfig", kubeconfig], log, env)

    def start(self) -> OperatorProcess:
        super().start()
        wait_for(lambda: self.get("/healthz", self.health_port) is not None, what="operator /healthz", proc=self)
        return self

    def get(self, path: str, port: int | None = None) -> str | None:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port or self.metrics_port}{path}", timeout=2) as r:
                return str(r.read().decode())
        except OSError:
            return None


def local_executor(kubeconfig: str, root: Path, namespace: str, log: Path, *, poll: str = "0.3",
                   stop_grace: str = "5") -> Proc:
    """``ctxext local-executor`` for one namespace, started (stop it with ``.stop()``)."""
    env = {**os.environ, "KUBECONFIG": kubeconfig, "OMP_NUM_THREADS": "1"}
    return Proc(["local-executor", "--root", str(root), "-n", namespace, "--poll", poll, "--stop-grace", stop_grace],
                log, env).start()


def wait_for(fn: Callable[[], Any], *, what: str, timeout: float = 90, proc: Proc | None = None) -> Any:
    """Poll ``fn`` until it returns something truthy; fail with the operator's log otherwise."""
    deadline, last = time.monotonic() + timeout, None
    while time.monotonic() < deadline:
        try:
            last = fn()
        except client.ApiException as exc:
            if exc.status != 404:
                raise
            last = None
        if last:
            return last
        if proc is not None and not proc.alive():
            raise AssertionError(f"{proc.args[0]} exited while waiting for {what}:\n{proc.tail()}")
        time.sleep(0.2)
    raise AssertionError(f"gave up waiting for {what} (last: {last!r})\n{proc.tail() if proc else ''}")


class Cluster:
    """Reads and writes the test API server the way users, the trainer and the training-operator do."""

    def __init__(self, api: client.CustomObjectsApi, namespace: str, backend: str = "pytorchjob"):
        self.api, self.ns, self.backend = api, namespace, backend

    def create(self, obj: dict[str, Any]) -> dict[str, Any]:
        obj = {**obj, "metadata": {**obj["metadata"], "namespace": self.ns}}
        return dict(self.api.create_namespaced_custom_object(GROUP, VERSION, self.ns, PLURAL, obj,
                                                             field_validation="Strict"))

    def cej(self, name: str) -> dict[str, Any]:
        return dict(self.api.get_namespaced_custom_object(GROUP, VERSION, self.ns, PLURAL, name))

    def status(self, name: str) -> dict[str, Any]:
        return self.cej(name).get("status") or {}

    def patch_spec(self, name: str, spec: dict[str, Any]) -> None:
        self.api.patch_namespaced_custom_object(GROUP, VERSION, self.ns, PLURAL, name, {"spec": spec})

    def trainer_reports(self, name: str, status: dict[str, Any], *, sign: bool = True) -> None:
        """What trainer rank 0 does: merge-patch status.progress / status.results, each result signed with
        the key of the training job it names (as the trainer does with its stage config's resultKey)."""
        results = status.get("results")
        if sign and isinstance(results, dict):
            signed = {}
            for job_name, entry in results.items():
                try:
                    key = (self.job(job_name)["metadata"].get("annotations") or {}).get(ANNOTATION_RESULT_KEY)
                except ApiException:
                    key = None
                signed[job_name] = {**entry, SIGNATURE: sign_result(entry, key)} if key and entry else entry
            status = {**status, "results": signed}
        self.api.patch_namespaced_custom_object_status(GROUP, VERSION, self.ns, PLURAL, name, {"status": status})

    def pytorchjobs(self, cej: str) -> dict[str, dict[str, Any]]:
        items = self.api.list_namespaced_custom_object(*PTJ, self.ns, "pytorchjobs",
                                                       label_selector=f"ctxext.dev/job={cej}")["items"]
        return {j["metadata"]["name"]: j for j in items}

    def pytorchjob(self, name: str) -> dict[str, Any]:
        return dict(self.api.get_namespaced_custom_object(*PTJ, self.ns, "pytorchjobs", name))

    def jobs(self, cej: str) -> dict[str, dict[str, Any]]:
        """The CEJ's training jobs of this cluster's backend (PyTorchJobs or TrainJobs), by name."""
        group, version, plural = RESOURCES[self.backend]
        items = self.api.list_namespaced_custom_object(group, version, self.ns, plural,
                                                       label_selector=f"ctxext.dev/job={cej}")["items"]
        return {j["metadata"]["name"]: j for j in items}

    def job(self, name: str) -> dict[str, Any]:
        group, version, plural = RESOURCES[self.backend]
        return dict(self.api.get_namespaced_custom_object(group, version, self.ns, plural, name))

    def suspended(self, job: dict[str, Any]) -> bool:
        """Is this training job suspended (``spec.runPolicy.suspend`` or a TrainJob's ``spec.suspend``)?"""
        spec = job.get("spec") or {}
        return bool(spec.get("suspend") if self.backend == "trainjob" else (spec.get("runPolicy") or {}).get("suspend"))

    def set_suspend(self, name: str, suspend: bool) -> None:
        """Play Kueue: suspend or resume a training job."""
        group, version, plural = RESOURCES[self.backend]
        patch = {"spec": {"suspend": suspend}} if self.backend == "trainjob" else \
            {"spec": {"runPolicy": {"suspend": suspend}}}
        self.api.patch_namespaced_custom_object(group, version, self.ns, plural, name, patch)

    def delete_job(self, name: str) -> None:
        group, version, plural = RESOURCES[self.backend]
        self.api.delete_namespaced_custom_object(group, version, self.ns, plural, name)

    def set_conditions(self, name: str, *types: str, message: str = "") -> None:
        """Play the training-operator: conditions Created, Running, ... each True (the last one wins); on the
        trainjob backend, play Kubeflow Trainer v2.3.0 instead: Created/Running as jobsStatus of replicated job
        ``node``, Succeeded as ``Complete``, Failed and Suspended as themselves."""
        now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        if self.backend == "trainjob":
            self._trainjob_status(name, types, message, now)
            return
        conds = [{"type": t, "status": "True", "reason": f"PyTorchJob{t}", "message": message or f"job {t.lower()}",
                  "lastTransitionTime": now, "lastUpdateTime": now} for t in types]
        self.api.patch_namespaced_custom_object_status(*PTJ, self.ns, "pytorchjobs", name,
                                                       {"status": {"conditions": conds}})

    def _trainjob_status(self, name: str, types: tuple[str, ...], message: str, now: str) -> None:
        ready = int("Running" in types)
        done = {"Succeeded": ("Complete", "JobSetCompleted"), "Failed": ("Failed", "FailedJobs"),
                "Suspended": ("Suspended", "Suspended")}
        conds = [{"type": done[t][0], "status": "True", "reason": done[t][1], "message": message or f"job {t.lower()}",
                  "lastTransitionTime": now} for t in types if t in done]
        status: dict[str, Any] = {"conditions": conds, "jobsStatus": [{
            "name": "node", "active": 0 if conds else 1, "ready": 0 if conds else ready,
            "succeeded": int("Succeeded" in types), "failed": int("Failed" in types), "suspended": 0}]}
        self.api.patch_namespaced_custom_object_status(*TJ, self.ns, "trainjobs", name, {"status": status})

    def condition(self, name: str, kind: str) -> dict[str, Any]:
        conds = self.status(name).get("conditions") or []
        return next((c for c in conds if c["type"] == kind), {})
