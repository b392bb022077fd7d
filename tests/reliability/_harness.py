"""Shared pieces of the reliability tests: the smallest curricula, and the operator + local executor rig.

Every scenario runs the real ``ctxext operator`` and ``ctxext local-executor`` subprocesses (see
tests/integration/operator_harness.py) and the real trainer (tiny Llama, CPU, gloo) against a real
API server; faults are injected from outside (signals, truncated files, a stopped server) or through
the trainer's documented fault-injection variables (``CTXEXT_INJECT_*``).
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kubernetes import client, config

from tests.integration.operator_harness import Cluster, OperatorProcess, Proc, free_port, wait_for
from tests.unit.helpers import example

TERMINAL = ("Succeeded", "Failed")


def base_model(directory: Path) -> Path:
    """A freshly initialised tiny model (the architecture of examples/tiny-cpu.yaml)."""
    from ctxext_trainer.tiny.model import new_tiny_model, save_tiny

    if not (directory / "config.json").exists():
        save_tiny(new_tiny_model(0), directory)
    return directory


def tiny_manifest(name: str, base: Path, *, lengths: list[int], steps: int = 4, interval: int = 2,
                  procs: int = 1, max_retries: int = 1, env: dict[str, str] | None = None,
                  failure_policy: dict[str, Any] | None = None, suspend: bool = False) -> dict[str, Any]:
    """A tiny CPU curriculum: a few steps per stage, no evaluation, ``procs`` trainer processes."""
    obj = example("tiny-cpu.yaml")
    obj["metadata"] = {"name": name}
    spec = obj["spec"]
    spec["model"]["source"] = f"file://{base}"
    spec["targetContextLength"] = lengths[-1]
    spec["curriculum"]["stages"] = [{"seqLen": n, "steps": steps} for n in lengths]
    spec["curriculum"]["stageDefaults"].update(warmupSteps=1, batchSize=1, variableLength=False)
    spec["resources"]["processesPerNode"] = procs
    spec["checkpoint"] = {"intervalSteps": interval}
    spec["evaluation"] = {"enabled": False, "gates": []}
    spec["failurePolicy"] = {"maxRetries": max_retries, "backoffSeconds": 0, **(failure_policy or {})}
    spec["metrics"] = {"port": free_port()}
    if env:
        spec["env"] = [{"name": k, "value": v} for k, v in env.items()]
    if suspend:
        spec["suspend"] = True
    return obj


@dataclass
class Rig:
    """Operator + local executor for one namespace; ``root`` stands for the pod volumes."""

    kubeconfig: str
    namespace: str
    tmp: Path
    executor_env: dict[str, str] = field(default_factory=dict)
    operator_env: dict[str, str] = field(default_factory=dict)
    backend: str = "pytorchjob"
    """Kubeflow API the operator runs the stages on (PyTorchJob or TrainJob; the executor runs both)."""
    operator: OperatorProcess | None = None
    executor: Proc | None = None

    def __post_init__(self) -> None:
        config.load_kube_config(config_file=self.kubeconfig)
        self.cluster = Cluster(client.CustomObjectsApi(), self.namespace, self.backend)
        self.root = self.tmp / "root"

    def start_operator(self) -> OperatorProcess:
        self.operator = OperatorProcess(self.kubeconfig, self.tmp / "operator.log", self.backend,
                                        **self.operator_env).start()
        return self.operator

    def start_executor(self) -> Proc:
        env = {**os.environ, "KUBECONFIG": self.kubeconfig, "OMP_NUM_THREADS": "1", **self.executor_env}
        self.executor = Proc(["local-executor", "--root", str(self.root), "-n", self.namespace, "--poll", "0.5",
                              "--stop-grace", "60"], self.tmp / "executor.log", env).start()
        return self.executor

    def __enter__(self) -> Rig:
        self.start_operator()
        self.start_executor()
        return self

    def __exit__(self, *_: Any) -> None:
        for proc in (self.executor, self.operator):
            if proc is not None:
                proc.stop()

    def logs(self) -> str:
        return "\n--- operator ---\n" + (self.operator.tail(60) if self.operator else "") + \
            "\n--- executor ---\n" + (self.executor.tail(30) if self.executor else "")

    def wait_finished(self, name: str, timeout: float = 300) -> dict[str, Any]:
        return dict(wait_for(lambda: (s := self.cluster.status(name)).get("phase") in TERMINAL and s,
                             what=f"{name} to finish", timeout=timeout, proc=self.executor))

    def stage_dir(self, name: str, stage: int = 1) -> Path:
        return self.root / "ckpt" / self.namespace / name / f"stage-{stage}"

    def train_log(self, name: str, stage: int = 1) -> list[dict[str, Any]]:
        path = self.stage_dir(name, stage) / "train_log.jsonl"
        return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []

    def executor_log(self, job: str, replica: str = "master") -> str:
        path = self.root / ".executor" / "logs" / self.namespace / f"{job}-{replica}.log"
        return path.read_text(errors="replace") if path.exists() else ""


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process (from /proc/PID/stat)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def descendants(pid: int) -> list[int]:
    """Every live descendant of ``pid`` (from /proc/*/stat parent links)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry.name))
    out, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            out.append(child)
            todo.append(child)
    return out


def process_env(pid: int) -> dict[str, str]:
    try:
        raw = Path(f"/proc/{pid}/environ").read_bytes()
    except OSError:
        return {}
    return dict(item.split("=", 1) for item in raw.decode(errors="replace").split("\0") if "=" in item)


def trainer_ranks(executor_root: Path, namespace: str, job: str) -> dict[int, int]:
    """RANK → pid of the trainer processes of a running PyTorchJob (children of the executor's torchrun)."""
    pids_file = executor_root / ".executor" / "pids" / f"{namespace}_{job}"
    leaders = json.loads(pids_file.read_text()).values() if pids_file.exists() else []
    ranks: dict[int, int] = {}
    for leader in leaders:
        for pid in descendants(int(leader)):
            env = process_env(pid)
            try:
                cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
            except OSError:
                continue
            if b"ctxext_trainer" in cmdline and b"torch.distributed.run" not in cmdline and \
                    b"torchrun" not in cmdline and "LOCAL_RANK" in env:
                ranks[int(env["RANK"])] = pid
    return ranks


def sleep_until(deadline: float) -> None:
    time.sleep(max(0.0, deadline - time.monotonic()))
