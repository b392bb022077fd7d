"""How ``ctxext local-executor`` turns a PyTorchJob into local processes. Pure (no I/O).

The volume mapping and the container's command and environment (:func:`local_mounts`,
:func:`container_env`, :func:`resolve_command`) are shared with TrainJobs
(:mod:`ctxext.controller.local_trainjob`).

A stand-in for the Kubeflow training-operator on one machine: each replica (Master, then Workers)
becomes one process running the container's command with the environment training-operator v1.9
injects (``pkg/controller.v1/pytorch/envvar.go``) — ``PYTHONUNBUFFERED=1``, ``MASTER_ADDR=127.0.0.1``,
``MASTER_PORT``, ``WORLD_SIZE`` (replicas × ``nprocPerNode``; 1 per replica when that is not a number),
``RANK`` and ``PET_NODE_RANK`` (replica index: Master 0, Worker i → i + 1), ``PET_MASTER_ADDR``/
``PET_MASTER_PORT``, ``PET_NNODES`` (replicas) and ``PET_NPROC_PER_NODE`` (when set; what ``torchrun``
reads) — plus the container's ``env``.

Volumes: every ``volumeMounts[].mountPath`` P of the pod (except /dev/shm) becomes the local
directory ``ROOT/P`` (``/ckpt`` → ``ROOT/ckpt``, ``/models/models`` → ``ROOT/models/models``), and
every environment value and stage-config string under P is rewritten the same way. A
``pvc://claim/path`` data source becomes ``file://ROOT/data/claim/path``. ``file://`` paths and
``builtin://`` sources are left alone. ``envFrom`` secrets are not available locally.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ctxext.controller.paths import DATA_ROOT, split_pvc
from ctxext.stage_config import ENV_VAR

SHM = "/dev/shm"


@dataclass(frozen=True)
class ReplicaProcess:
    """One replica of a PyTorchJob as a local process."""

    replica: str
    """Master or Worker-<i> (PyTorchJob); node-<i> (TrainJob)."""
    argv: list[str]
    env: dict[str, str]
    mkdirs: list[Path]
    """Local directories that stand for the pod's volumes (created before start)."""


def _rewrite(value: Any, mounts: list[tuple[str, Path]]) -> Any:
    """Rewrite strings under a mount path to the local directory, recursively through JSON values."""
    if isinstance(value, str):
        for mount, local in mounts:
            if value == mount or value.startswith(mount.rstrip("/") + "/"):
                return str(local) + value[len(mount.rstrip("/")):]
        return value
    if isinstance(value, list):
        return [_rewrite(v, mounts) for v in value]
    if isinstance(value, dict):
        return {k: _rewrite(v, mounts) for k, v in value.items()}
    return value


def _stage_config(text: str, mounts: list[tuple[str, Path]], root: Path) -> str:
    config = _rewrite(json.loads(text), mounts)
    data = config.get("data") or {}
    if str(data.get("source", "")).startswith("pvc://"):
        claim, path = split_pvc(data["source"])
        data["source"] = "file://" + str(root / DATA_ROOT.lstrip("/") / claim / path)
    return json.dumps(config, separators=(",", ":"), sort_keys=True)


def local_mounts(volume_mounts: list[dict[str, Any]], root: Path) -> list[tuple[str, Path]]:
    """(mount path, local directory) of a container's volume mounts, the most specific first (no /dev/shm).

    >>> local_mounts([{"mountPath": "/models"}, {"mountPath": "/models/m"}, {"mountPath": SHM}], Path("/r"))
    [('/models/m', PosixPath('/r/models/m')), ('/models', PosixPath('/r/models'))]
    """
    mounts = [(m["mountPath"], root / m["mountPath"].lstrip("/")) for m in volume_mounts if m["mountPath"] != SHM]
    return sorted(mounts, key=lambda m: -len(m[0]))  # the longest (most specific) mount path wins


def container_env(env: list[dict[str, Any]], mounts: list[tuple[str, Path]], root: Path) -> dict[str, str]:
    """A container's ``env`` values with paths under its mounts made local (``valueFrom`` is not available
    locally), plus the executor's own ``CTXEXT_METRICS_LINGER_SECONDS`` (default 0: nothing scrapes here on a
    schedule, so nothing should hold a stage open for a scraper)."""
    out: dict[str, str] = {}
    for e in env:
        if "value" in e:
            out[e["name"]] = (_stage_config(e["value"], mounts, root) if e["name"] == ENV_VAR
                              else _rewrite(e["value"], mounts))
    out["CTXEXT_METRICS_LINGER_SECONDS"] = os.environ.get("CTXEXT_METRICS_LINGER_SECONDS", "0")
    return out


def resolve_command(argv: list[str]) -> list[str]:
    """``python``/``torchrun``/... from this environment first (the venv that runs the executor)."""
    if not argv:
        return [sys.executable, "-m", "ctxext_trainer"]
    head = argv[0]
    if head in ("python", "python3"):
        return [sys.executable, *argv[1:]]
    local = Path(sys.executable).with_name(head)
    if "/" not in head and local.exists():
        return [str(local), *argv[1:]]
    return [shutil.which(head) or head, *argv[1:]]


def replica_processes(job: dict[str, Any], root: Path, master_port: int) -> list[ReplicaProcess]:
    """The processes of a PyTorchJob (Master first), each with its Kubeflow-style environment."""
    spec = job["spec"]
    replicas = spec["pytorchReplicaSpecs"]
    order = [("Master", replicas.get("Master")), ("Worker", replicas.get("Worker"))]
    nodes = sum(int(r.get("replicas", 1)) for _, r in order if r)
    nproc = spec.get("nprocPerNode")
    world = nodes * (int(nproc) if str(nproc).isdigit() else 1)
    out: list[ReplicaProcess] = []
    rank = 0
    for kind, rs in order:
        if not rs:
            continue
        pod = rs["template"]["spec"]
        container = next((c for c in pod["containers"] if c["name"] == "pytorch"), pod["containers"][0])
        mounts = local_mounts(container.get("volumeMounts") or [], root)
        for i in range(int(rs.get("replicas", 1))):
            env = container_env(container.get("env") or [], mounts, root)
            env.update({
                "PYTHONUNBUFFERED": "1",
                "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(master_port), "WORLD_SIZE": str(world),
                "RANK": str(rank), "PET_MASTER_ADDR": "127.0.0.1", "PET_MASTER_PORT": str(master_port),
                "PET_NNODES": str(nodes), "PET_NODE_RANK": str(rank),
                **({"PET_NPROC_PER_NODE": str(nproc)} if nproc is not None else {}),
            })
            argv = resolve_command([*container.get("command", []), *container.get("args", [])])
            out.append(ReplicaProcess(kind if kind == "Master" else f"Worker-{i}", argv, env,
                                      [local for _, local in mounts]))
            rank += 1
    return out


def pod_grace_seconds(job: dict[str, Any]) -> float | None:
    """terminationGracePeriodSeconds of the Master pod template, if set.

    >>> pod_grace_seconds({"spec": {"pytorchReplicaSpecs": {"Master": {"template": {"spec": {
    ...     "terminationGracePeriodSeconds": 240}}}}}})
    240.0
    """
    master = ((job.get("spec") or {}).get("pytorchReplicaSpecs") or {}).get("Master") or {}
    value = ((master.get("template") or {}).get("spec") or {}).get("terminationGracePeriodSeconds")
    return float(value) if isinstance(value, int | float) else None
