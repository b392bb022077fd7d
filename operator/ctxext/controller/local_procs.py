"""The processes of ``ctxext local-executor``, for every kind of job it runs (PyTorchJob, TrainJob).

One :class:`ProcessTable` holds, per job key, the local processes that stand for its pods
(:class:`ctxext.controller.local_launch.ReplicaProcess`, one per replica or node). Each process runs
in a process group of its own (``start_new_session``) so that stopping a job reaches torchrun's
workers too, and dies with the executor (``PR_SET_PDEATHSIG``). Stopping sends SIGTERM to every group
(the trainer checkpoints), then SIGKILL after the pods' ``terminationGracePeriodSeconds`` (else the
executor's ``stop_grace``). The groups of a running job are recorded in ``ROOT/.executor/pids/<key>``;
an executor that was SIGKILLed leaves that file behind, and the groups in it are killed before the job
is started again (:meth:`ProcessTable.kill_stale`), so a restart never runs a job twice. Each
process appends its output to ``ROOT/.executor/logs/<namespace>/<name>-<replica>.log``.
"""

from __future__ import annotations

import ctypes
import json
import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from ctxext.controller.local_launch import ReplicaProcess


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _die_with_parent() -> None:  # pragma: no cover - runs in the child
    ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def last_line(path: Path) -> str:
    """The last non-blank line of a log (at most 300 characters), for the executor's own log."""
    try:
        lines = [ln for ln in path.read_text(errors="replace").splitlines() if ln.strip()]
    except FileNotFoundError:
        return ""
    return lines[-1][-300:] if lines else ""


@dataclass
class Running:
    procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    logs: dict[str, Path] = field(default_factory=dict)
    specs: dict[str, ReplicaProcess] = field(default_factory=dict)
    """What each process was started from, to start one again (a container restarted in its pod)."""
    grace: float | None = None
    """The pods' terminationGracePeriodSeconds (SIGTERM → SIGKILL), as Kubernetes would give them."""

    def codes(self) -> dict[str, int | None]:
        """Exit code of each process; None while it runs."""
        return {name: p.poll() for name, p in self.procs.items()}


class ProcessTable:
    """The running processes of every job, by key (see the module docstring)."""

    def __init__(self, root: Path, *, stop_grace: float = 30.0):
        self.root, self.stop_grace = root, stop_grace
        self.state_dir = root / ".executor"
        self.running: dict[str, Running] = {}
        self.lingering: dict[str, Running] = {}  # processes of finished jobs left to run (cleanPodPolicy None)

    def _pid_file(self, key: str) -> Path:
        return self.state_dir / "pids" / key.replace("/", "_")

    def start(self, key: str, namespace: str, name: str, procs: list[ReplicaProcess], *,
              grace: float | None) -> Running:
        """Start the processes of a job (after killing what a previous executor left of it)."""
        self.kill_stale(key)
        run = Running(grace=grace)
        self.running[key] = run
        for proc in procs:
            run.logs[proc.replica] = self.state_dir / "logs" / namespace / f"{name}-{proc.replica.lower()}.log"
            self._spawn(run, proc)
        self._write_pids(key, run)
        return run

    def respawn(self, key: str, replica: str) -> None:
        """Start one process of a running job again, with the same command and environment."""
        run = self.running[key]
        self._spawn(run, run.specs[replica])
        self._write_pids(key, run)

    def _spawn(self, run: Running, proc: ReplicaProcess) -> None:
        for d in proc.mkdirs:
            d.mkdir(parents=True, exist_ok=True)
        path = run.logs[proc.replica]
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "ab") as out:
            run.procs[proc.replica] = subprocess.Popen(
                proc.argv, env={**os.environ, **proc.env}, stdout=out, stderr=subprocess.STDOUT,
                cwd=self.root, start_new_session=True, preexec_fn=_die_with_parent)
        run.specs[proc.replica] = proc

    def stop(self, key: str) -> None:
        """SIGTERM every process group of the job, SIGKILL after the grace period; forget the job."""
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
        self._pid_file(key).unlink(missing_ok=True)

    def linger(self, key: str) -> None:
        """A finished job whose processes keep running (their pods are not deleted)."""
        self.lingering[key] = self.running.pop(key)

    def reap(self, key: str) -> None:
        """Forget the lingering processes of a finished job once they have all exited."""
        run = self.lingering.get(key)
        if run is not None and all(code is not None for code in run.codes().values()):
            del self.lingering[key]
            self._pid_file(key).unlink(missing_ok=True)

    def forget_deleted(self, keys: set[str], mine: Callable[[str], bool]) -> None:
        """Stop the processes of the jobs that ``mine`` selects and that are gone (not in ``keys``): their
        pods would be garbage-collected."""
        for table in (self.running, self.lingering):
            for key in [k for k in table if mine(k) and k not in keys]:
                self.running[key] = table.pop(key)
                self.stop(key)

    def stop_all(self) -> None:
        self.running.update(self.lingering)
        self.lingering.clear()
        for key in list(self.running):
            self.stop(key)

    def _write_pids(self, key: str, run: Running) -> None:
        path = self._pid_file(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps({name: p.pid for name, p in run.procs.items()}))

    def kill_stale(self, key: str) -> None:
        """Kill process groups a previous (SIGKILLed) executor left for this job."""
        path = self._pid_file(key)
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
