"""How ``ctxext local-executor`` turns a TrainJob into local processes, and the status Trainer writes. Pure.

Processes (Kubeflow Trainer v2.3.0: ``pkg/runtime/framework/plugins/torch/torch.go``, ``plugins/jobset``):
the runtime's replicated job labelled ``trainer.kubeflow.org/trainjob-ancestor-step: trainer`` (else the one
called ``node``; initializer jobs are not run) runs ``numNodes`` processes ``node-0`` … ``node-<n-1>``, each
the container ``node`` with

* command and args from ``spec.trainer`` where set, else the runtime container's (``python`` is this
  interpreter: :func:`ctxext.controller.local_launch.resolve_command`);
* env: the runtime container's, then each runtime patch's ``node`` container's (upstream's webhook refuses
  those; taken anyway), then ``spec.trainer.env``, then — when the runtime has ``mlPolicy.torch`` — the
  torch plugin's ``PET_NNODES``, ``PET_NPROC_PER_NODE``, ``PET_NODE_RANK`` (the Job completion index),
  ``PET_MASTER_ADDR`` (upstream ``<trainjob>-node-0-0.<trainjob>``; here ``127.0.0.1``) and
  ``PET_MASTER_PORT`` (upstream 29500; here a free port, so that jobs can run side by side); none of these
  when the TrainJob has no ``spec.trainer`` (the plugin then finds no trainer container);
* volume mounts of the runtime container and of the patches, mapped to ``ROOT/<mountPath>`` as for
  PyTorchJobs (:func:`ctxext.controller.local_launch.local_mounts`).

``numNodes``: ``spec.trainer.numNodes``, else the runtime's ``mlPolicy.numNodes``, else 1 (for a job
without the trainer label: its ``parallelism``, as upstream).
``numProcPerNode``: ``spec.trainer.numProcPerNode``, else ``auto``. Trainer v2.3.0's torch policy has no
``numProcPerNode`` of its own. As the torch plugin does, ``auto`` with no GPU in ``resourcesPerNode``
(else the runtime container's resources) becomes max(1, CPUs requested (else limited), rounded up). With
GPUs upstream passes ``auto`` on, and torchrun starts one process per GPU of the pod; here that is the
number of GPUs requested, because torchrun's ``auto`` on this machine would count its GPUs or CPUs instead.

>>> cpu = {"spec": {"trainer": {"resourcesPerNode": {"requests": {"cpu": "1500m"}}}}}
>>> proc_per_node(cpu, {}), proc_per_node({"spec": {"trainer": {"numProcPerNode": 4}}}, {})
('2', '4')
>>> proc_per_node({"spec": {"trainer": {}}}, {"limits": {"nvidia.com/gpu": 8}})
'8'
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ctxext.controller.local_launch import ReplicaProcess, container_env, local_mounts, resolve_command

GROUP = "trainer.kubeflow.org"
NODE = "node"
ANCESTOR_LABEL, TRAINER_ANCESTOR = "trainer.kubeflow.org/trainjob-ancestor-step", "trainer"
RUNTIME_KINDS = {"ClusterTrainingRuntime": "clustertrainingruntimes", "TrainingRuntime": "trainingruntimes"}
#: The Kubernetes Job's default backoffLimit, and the pod restart policy JobSet's webhook defaults to.
DEFAULT_BACKOFF_LIMIT, DEFAULT_RESTART_POLICY = 6, "OnFailure"


@dataclass(frozen=True)
class NodePlan:
    """The ``node`` replicated job of a TrainJob as local processes, with the policies that judge them."""

    procs: list[ReplicaProcess]
    grace: float | None
    """terminationGracePeriodSeconds of the pod (runtime patches win over the runtime)."""
    failures_allowed: int
    """Process failures that fail the node Job: with restartPolicy OnFailure (JobSet's default) the Job
    fails once its pods' restarts reach backoffLimit (at least one), with Never once more pods than
    backoffLimit have failed (``pkg/controller/job``: pastBackoffLimitOnFailure, exceedsBackoffLimit)."""
    max_restarts: int | None
    """JobSet ``failurePolicy.maxRestarts`` (None: no failure policy; the first failed Job fails the JobSet)."""


def unsupported_runtime(trainjob: dict[str, Any]) -> str | None:
    """Upstream's message when the runtimeRef names no runtime kind Trainer knows, else None.

    >>> unsupported_runtime({"spec": {"runtimeRef": {"name": "x", "kind": "RayRuntime", "apiGroup": GROUP}}})
    'unsupported runtime: RayRuntime.trainer.kubeflow.org'
    """
    ref = trainjob["spec"]["runtimeRef"]
    kind, group = ref.get("kind", "ClusterTrainingRuntime"), ref.get("apiGroup", GROUP)
    if kind in RUNTIME_KINDS and group == GROUP:
        return None
    return f"unsupported runtime: {kind}.{group}" if group else f"unsupported runtime: {kind}"


def _quantity(value: Any) -> float:
    """A Kubernetes quantity as a number (``500m`` → 0.5, ``2`` → 2, ``1Gi`` → 2**30)."""
    m = re.fullmatch(r"([0-9.]+)([a-zA-Z]*)", str(value).strip())
    if not m:
        return 0.0
    scale = {"m": 1e-3, "": 1, "k": 1e3, "M": 1e6, "G": 1e9, "Ki": 2**10, "Mi": 2**20, "Gi": 2**30}
    return float(m.group(1)) * scale.get(m.group(2), 1)


def _gpus(resources: dict[str, Any]) -> int:
    for key in ("requests", "limits"):  # runtime.GetNumGPUPerNode: requests, else limits
        n = next((int(_quantity(v)) for k, v in (resources.get(key) or {}).items() if "gpu" in k.lower()), 0)
        if n:
            return n
    return 0


def proc_per_node(trainjob: dict[str, Any], runtime_resources: dict[str, Any]) -> str:
    """PET_NPROC_PER_NODE for this machine (see the module docstring)."""
    trainer = trainjob["spec"].get("trainer") or {}
    if trainer.get("numProcPerNode") is not None:
        return str(trainer["numProcPerNode"])
    resources = trainer.get("resourcesPerNode") or runtime_resources or {}
    if gpus := _gpus(resources):
        return str(gpus)
    cpu = (resources.get("requests") or {}).get("cpu") or (resources.get("limits") or {}).get("cpu") or 0
    return str(max(1, math.ceil(_quantity(cpu))))


def _is_trainer_step(rjob: dict[str, Any]) -> bool:
    labels = ((rjob.get("template") or {}).get("metadata") or {}).get("labels") or {}
    return bool(labels.get(ANCESTOR_LABEL) == TRAINER_ANCESTOR)


def _node_job(runtime: dict[str, Any]) -> dict[str, Any]:
    """The replicated job of the trainer step (labelled so), else the one called ``node``."""
    jobs = ((runtime.get("spec") or {}).get("template") or {}).get("spec", {}).get("replicatedJobs") or []
    found = [j for j in jobs if _is_trainer_step(j)] or [j for j in jobs if j.get("name") == NODE]
    if not found:
        raise ValueError(f"the runtime has no replicated job labelled {ANCESTOR_LABEL}: trainer, nor one "
                         f"called {NODE!r}")
    return dict(found[0])


def _pod_patches(trainjob: dict[str, Any], rjob_name: str) -> list[dict[str, Any]]:
    out = []
    for patch in trainjob["spec"].get("runtimePatches") or []:
        for rjob in (((patch.get("trainingRuntimeSpec") or {}).get("template") or {}).get("spec") or {}).get(
                "replicatedJobs") or []:
            if rjob.get("name") == rjob_name:
                out.append((((rjob.get("template") or {}).get("spec") or {}).get("template") or {}).get("spec") or {})
    return out


def _node_container(pod: dict[str, Any]) -> dict[str, Any]:
    return dict(next((c for c in pod.get("containers") or [] if c.get("name") == NODE), {}))


def _merge(items: list[dict[str, Any]], key: str) -> list[dict[str, Any]]:
    """Upsert by ``key`` in order (later wins), as Trainer's apply.Upsert* do."""
    merged: dict[str, dict[str, Any]] = {}
    for item in items:
        merged[item[key]] = item
    return list(merged.values())


def node_plan(trainjob: dict[str, Any], runtime: dict[str, Any], root: Path, master_port: int) -> NodePlan:
    """The processes of a TrainJob on ``runtime`` (the (Cluster)TrainingRuntime object), node 0 first."""
    spec, rspec = trainjob["spec"], runtime.get("spec") or {}
    trainer = spec.get("trainer") or {}
    rjob = _node_job(runtime)
    job_spec = (rjob.get("template") or {}).get("spec") or {}
    pod = (job_spec.get("template") or {}).get("spec") or {}
    base = _node_container(pod)
    patches = _pod_patches(trainjob, rjob["name"])
    patched = [_node_container(p) for p in patches]
    mounts = local_mounts(_merge([m for c in [base, *patched] for m in c.get("volumeMounts") or []], "mountPath"),
                          root)
    env = _merge([e for c in [base, *patched] for e in c.get("env") or []] + list(trainer.get("env") or []), "name")
    policy = rspec.get("mlPolicy") or {}
    trainer_step = _is_trainer_step(rjob)  # core/trainingruntime.go: only its count follows numNodes
    nodes = int((trainer.get("numNodes") or policy.get("numNodes") or 1) if trainer_step and "mlPolicy" in rspec
                else job_spec.get("parallelism") or 1)
    nproc = proc_per_node(trainjob, base.get("resources") or {})
    argv = resolve_command([*(trainer.get("command") or base.get("command") or []),
                            *(trainer.get("args") or base.get("args") or [])])
    procs = []
    for rank in range(nodes):
        node_env = container_env(env, mounts, root)
        if "torch" in policy and trainer_step and spec.get("trainer") is not None:  # torch.go: the trainer's only
            node_env.update({"PET_NNODES": str(nodes), "PET_NPROC_PER_NODE": nproc, "PET_NODE_RANK": str(rank),
                             "PET_MASTER_ADDR": "127.0.0.1", "PET_MASTER_PORT": str(master_port)})
        procs.append(ReplicaProcess(f"{NODE}-{rank}", argv, node_env, [local for _, local in mounts]))
    grace_key = "terminationGracePeriodSeconds"
    grace = next((p[grace_key] for p in reversed(patches) if grace_key in p), pod.get(grace_key))
    limit = int(job_spec.get("backoffLimit", DEFAULT_BACKOFF_LIMIT))
    on_failure = pod.get("restartPolicy", DEFAULT_RESTART_POLICY) == "OnFailure"
    failure_policy = (rspec.get("template") or {}).get("spec", {}).get("failurePolicy")
    return NodePlan(procs, float(grace) if isinstance(grace, int | float) else None,
                    max(1, limit) if on_failure else limit + 1,
                    int(failure_policy.get("maxRestarts", 0)) if failure_policy is not None else None)


# -- status, as Trainer v2.3.0 writes it (trainjob_controller.go, plugins/jobset Status, JobSet v0.12.0) -----
SUSPENDED_MESSAGE, RESUMED_MESSAGE = "TrainJob is suspended", "TrainJob is resumed"
DEADLINE_REASON, DEADLINE_MESSAGE = "DeadlineExceeded", "TrainJob exceeded its active deadline"
NOT_SUPPORTED_REASON = "TrainingRuntimeNotSupported"
COMPLETE_REASON, COMPLETE_MESSAGE = "AllJobsCompleted", "jobset completed successfully"
FAILED_JOBS_REASON, FAILED_JOBS_MESSAGE = "FailedJobs", "jobset failed due to one or more job failures"
MAX_RESTARTS_REASON, MAX_RESTARTS_MESSAGE = "ReachedMaxRestarts", "jobset failed due to reaching max number of restarts"


def failed_job_message(base: str, trainjob_name: str) -> str:
    """JobSet's failure message naming its first failed child Job (``<jobset>-<replicatedJob>-<index>``).

    >>> failed_job_message(FAILED_JOBS_MESSAGE, "j-s1-a1")
    'jobset failed due to one or more job failures (first failed job: j-s1-a1-node-0)'
    """
    return f"{base} (first failed job: {trainjob_name}-{NODE}-0)"


def set_condition(conditions: list[dict[str, Any]], kind: str, status: str, reason: str, message: str,
                  now: str) -> list[dict[str, Any]]:
    """``meta.SetStatusCondition``: a new condition, or the old one with reason and message replaced and
    ``lastTransitionTime`` moved only when its status changes.

    >>> c = set_condition([], "Suspended", "True", "Suspended", SUSPENDED_MESSAGE, "t1")
    >>> c = set_condition(c, "Suspended", "False", "Resumed", RESUMED_MESSAGE, "t2")
    >>> c == [{"type": "Suspended", "status": "False", "reason": "Resumed", "message": RESUMED_MESSAGE,
    ...        "lastTransitionTime": "t2"}]
    True
    """
    out = [dict(c) for c in conditions]
    old = next((c for c in out if c.get("type") == kind), None)
    if old is None:
        return [*out, {"type": kind, "status": status, "reason": reason, "message": message,
                       "lastTransitionTime": now}]
    if old.get("status") != status:
        old.update(status=status, lastTransitionTime=now)
    old.update(reason=reason, message=message)
    return out


def is_true(conditions: list[dict[str, Any]], kind: str) -> bool:
    return any(c.get("type") == kind and c.get("status") == "True" for c in conditions)


def jobs_status(*, active: bool = False, ready: bool = False, succeeded: bool = False, failed: bool = False,
                suspended: bool = False) -> list[dict[str, Any]]:
    """``status.jobsStatus`` of the torch runtime: one entry, ``node``, counting its one child Job (JobSet's
    calculateReplicatedJobStatuses: ready = all pods running or done)."""
    return [{"name": NODE, "active": int(active), "ready": int(ready), "succeeded": int(succeeded),
             "failed": int(failed), "suspended": int(suspended)}]
