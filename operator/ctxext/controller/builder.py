"""The PyTorchJob of one stage attempt: a pure function from (job, plan, stage, attempt) to a dict.

Shape (``ctxext render examples/tiny-cpu.yaml`` prints a complete one)::

    apiVersion: kubeflow.org/v1
    kind: PyTorchJob
    metadata: {name: <cej>-s<stage>-a<attempt>, labels: {ctxext.dev/job, ctxext.dev/stage, ...}}
    spec:
      nprocPerNode: "8"                 # a string in the CRD; GPUs per node (processes on CPU)
      runPolicy: {backoffLimit: 0, ...} # retries are the operator's (new attempt, from checkpoint)
      pytorchReplicaSpecs:
        Master: {replicas: 1, restartPolicy: Never, template: <pod>}
        Worker: {replicas: nodes - 1, ...}   # only for multi-node stages

The pod runs ``python -m ctxext_trainer.launch --module ctxext_trainer`` (torchrun that exits with the
trainer's exit code; the operator's ``CTXEXT_TRAINER_COMMAND``), which starts ``nprocPerNode`` processes
of ``python -m ctxext_trainer``, with the
stage config as JSON in ``CTXEXT_STAGE_CONFIG`` — no ConfigMap. Volumes follow
:mod:`ctxext.controller.paths`. Secret values never appear here: credentials come in through
``envFrom.secretRef``.
"""

from __future__ import annotations

from typing import Any

from ctxext.api.job import ContextExtensionJob
from ctxext.config import OperatorConfig
from ctxext.controller.paths import pod_storage, stage_model_path, stage_output_dir
from ctxext.naming import pytorchjob_name
from ctxext.planner import Plan
from ctxext.stage_config import ENV_VAR, ReportTarget, build_stage_config
from ctxext.step_time import SHUTDOWN_TIMEOUT_ENV, agent_shutdown_seconds

API_VERSION = "kubeflow.org/v1"
KIND = "PyTorchJob"
LABEL_JOB = "ctxext.dev/job"
LABEL_STAGE = "ctxext.dev/stage"
LABEL_ATTEMPT = "ctxext.dev/attempt"
ANNOTATION_LR = "ctxext.dev/learning-rate"
ANNOTATION_STEPS = "ctxext.dev/steps"
QUEUE_LABEL = "kueue.x-k8s.io/queue-name"
MASTER_PORT = 23456
#: uid and gid of the trainer image's user (trainer_image/Dockerfile: USER 10001:10001, HOME owned by it);
#: tests/chart/test_images.py checks that the two agree.
RUN_AS_USER = 10001
ANNOTATION_RESULT_KEY = "ctxext.dev/result-key"
#: Name of local rank r's metrics port (IANA service name: at most 15 characters); the chart's PodMonitor
#: scrapes every container port whose name matches ``metrics-[0-9]+``.
METRICS_PORT_NAME = "metrics-{rank}"


def job_labels(cej: str, stage: int, attempt: int) -> dict[str, str]:
    """Labels of a stage attempt's PyTorchJob and its pods (all values ≤ 63 characters)."""
    return {
        LABEL_JOB: cej, LABEL_STAGE: str(stage), LABEL_ATTEMPT: str(attempt),
        "app.kubernetes.io/name": "ctxext-trainer", "app.kubernetes.io/instance": cej,
        "app.kubernetes.io/component": "stage", "app.kubernetes.io/part-of": "ctxext",
        "app.kubernetes.io/managed-by": "ctxext-operator",
    }


def _omp_threads(cpu: str | None, procs: int) -> str:
    """CPU cores per process (at least 1); 1 when no CPU quantity is given."""
    if not cpu:
        return "1"
    cores = float(cpu[:-1]) / 1000 if cpu.endswith("m") else float(cpu)
    return str(max(1, int(cores // procs)))


def _resources(job: ContextExtensionJob) -> dict[str, Any]:
    res = job.spec.resources
    amounts: dict[str, str] = {}
    if res.cpu:
        amounts["cpu"] = res.cpu
    if res.memory:
        amounts["memory"] = res.memory
    limits = dict(amounts)
    if res.gpus_per_node > 0:
        limits["nvidia.com/gpu"] = str(res.gpus_per_node)
    # Extended resources (rdma/..., ...) cannot be overcommitted: request and limit are the same.
    amounts.update(res.extra_resources)
    limits.update(res.extra_resources)
    out: dict[str, Any] = {}
    if amounts:
        out["requests"] = amounts
    if limits:
        out["limits"] = limits
    return out


def _allocator_env(job: ContextExtensionJob) -> list[dict[str, str]]:
    """On GPUs, PyTorch's caching allocator with expandable segments, unless ``spec.env`` sets it.

    ZeRO-3 gathers and frees every parameter of every module on every step, and long-context stages free
    and allocate activations of many sizes: a fixed-segment caching allocator keeps such freed blocks as
    fragments the next, larger request cannot use, so a stage the planner fits by live memory can still run
    out. ``bench/planner_memory.py --heap both`` shows the same effect in glibc on CPU: ZeRO 3's step growth
    is 0.57–0.75 of the estimate where freed memory is retained, 1.00–1.44 where it is handed back.
    Expandable segments grow one mapping instead of adding segments, which is PyTorch's remedy for this.
    """
    if job.spec.resources.gpus_per_node == 0 or any(e.name == "PYTORCH_CUDA_ALLOC_CONF" for e in job.spec.env):
        return []
    return [{"name": "PYTORCH_CUDA_ALLOC_CONF", "value": "expandable_segments:True"}]


def build_pytorchjob(job: ContextExtensionJob, plan: Plan, stage: int, *, attempt: int = 1,
                     learning_rate: float | None = None, config: OperatorConfig | None = None,
                     suspend: bool | None = None, steps: int | None = None,
                     result_key: str | None = None) -> dict[str, Any]:
    """The PyTorchJob for ``stage`` (1-based) attempt ``attempt``; ``learning_rate`` and ``steps`` override
    the plan's. Stage 0 is the base model's evaluation: stage 1's pods, no training.

    ``result_key`` (a random secret per attempt, chosen by the operator) goes to the trainer in its stage
    config and onto the PyTorchJob as an annotation: rank 0 signs its stage result with it, and the operator
    ignores results that another job's trainer wrote (:func:`ctxext.results.verify`)."""
    config = config or OperatorConfig()
    spec = job.spec
    name = str(job.metadata.get("name", "local"))
    namespace = str(job.metadata.get("namespace") or "default")
    planned = plan.stages[max(stage, 1) - 1]
    job_name = pytorchjob_name(name, stage, attempt)
    stage_config = build_stage_config(
        job, plan, stage, attempt=attempt, job_name=job_name,
        model_path=stage_model_path(spec, namespace, name, stage),
        output_dir=stage_output_dir(spec, namespace, name, stage),
        device="cuda" if spec.resources.gpus_per_node > 0 else "cpu", learning_rate=learning_rate, steps=steps,
        report=ReportTarget(kind="kubernetes", namespace=namespace, name=name, result_key=result_key))
    storage = pod_storage(spec, hf_cache_claim=config.hf_cache_claim)
    labels = job_labels(name, stage, attempt)
    env = [
        {"name": ENV_VAR, "value": stage_config.dumps()},
        {"name": "OMP_NUM_THREADS", "value": _omp_threads(spec.resources.cpu, planned.processes_per_node)},
        # Keep /metrics up for two scrape intervals after the stage so the final evaluation is scraped.
        {"name": "CTXEXT_METRICS_LINGER_SECONDS", "value": "60"},
        # torchrun (PID 1) SIGKILLs its workers this long after SIGTERM: let them use the grace period
        {"name": SHUTDOWN_TIMEOUT_ENV,
         "value": str(agent_shutdown_seconds(planned.termination_grace_period_seconds))},
        *storage.env,
        *_allocator_env(job),
        *({"name": e.name, "value": e.value} for e in spec.env),
    ]
    container: dict[str, Any] = {
        "name": "pytorch", "image": spec.resources.image, "imagePullPolicy": config.image_pull_policy,
        "command": list(config.trainer_command), "env": env,
        # One named port per local rank (rank r serves /metrics on metrics.port + r): the PodMonitor keeps
        # exactly these, so a 1-process CPU pod has one target and an 8-GPU pod eight.
        "ports": [{"name": "pytorchjob-port", "containerPort": MASTER_PORT, "protocol": "TCP"},
                  *({"name": METRICS_PORT_NAME.format(rank=r), "containerPort": spec.metrics.port + r,
                     "protocol": "TCP"} for r in range(planned.processes_per_node))],
        "volumeMounts": [{"name": "dshm", "mountPath": "/dev/shm"}, *storage.mounts],
        "securityContext": {"allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]},
                            "runAsNonRoot": True},
    }
    if spec.pod.capabilities:
        container["securityContext"]["capabilities"]["add"] = list(spec.pod.capabilities)
    if spec.model.credentials_secret_ref:
        container["envFrom"] = [{"secretRef": {"name": spec.model.credentials_secret_ref.name}}]
    if resources := _resources(job):
        container["resources"] = resources
    sched = spec.scheduling
    pod: dict[str, Any] = {
        "containers": [container],
        "volumes": [{"name": "dshm", "emptyDir": {"medium": "Memory",
                                                  "sizeLimit": f"{spec.resources.shared_memory_gib}Gi"}},
                    *storage.volumes],
        "securityContext": {"runAsNonRoot": True, "runAsUser": RUN_AS_USER, "runAsGroup": RUN_AS_USER,
                            "fsGroup": RUN_AS_USER, "seccompProfile": {"type": "RuntimeDefault"}},
        # SIGTERM → finish the micro-batch, checkpoint, exit; the planner sizes this (ctxext.step_time)
        "terminationGracePeriodSeconds": planned.termination_grace_period_seconds,
    }
    if config.trainer_service_account:
        pod["serviceAccountName"] = config.trainer_service_account
    if pull_secrets := list(dict.fromkeys([*config.trainer_image_pull_secrets, *spec.pod.image_pull_secrets])):
        pod["imagePullSecrets"] = [{"name": n} for n in pull_secrets]
    if spec.pod.runtime_class_name:
        pod["runtimeClassName"] = spec.pod.runtime_class_name
    if sched.priority_class_name:
        pod["priorityClassName"] = sched.priority_class_name
    if sched.node_selector:
        pod["nodeSelector"] = dict(sched.node_selector)
    if sched.tolerations:
        pod["tolerations"] = [t.to_wire() for t in sched.tolerations]
    if sched.affinity:
        pod["affinity"] = sched.affinity
    pod_meta: dict[str, Any] = {"labels": {**spec.pod.labels, **labels}}
    if spec.pod.annotations:
        pod_meta["annotations"] = dict(spec.pod.annotations)
    template = {"metadata": pod_meta, "spec": pod}
    replicas: dict[str, Any] = {"Master": {"replicas": 1, "restartPolicy": "Never", "template": template}}
    if planned.nodes > 1:
        # Only global rank 0 (in the Master pod) reports to the API server: worker pods get no token.
        worker = {"metadata": pod_meta, "spec": {**pod, "automountServiceAccountToken": False}}
        replicas["Worker"] = {"replicas": planned.nodes - 1, "restartPolicy": "Never", "template": worker}
    run_policy: dict[str, Any] = {
        "backoffLimit": 0,  # a failed attempt is retried by the operator, from the latest checkpoint
        # No pod of a finished attempt may keep running (and writing the stage's checkpoints) while the next
        # attempt resumes from them: "None" would keep a successful job's still-running Workers.
        "cleanPodPolicy": "All" if spec.run_policy.clean_pod_policy == "All" else "Running",
        # With a Kueue queue the job starts suspended and Kueue resumes it on admission (as its webhook does).
        "suspend": (spec.suspend or bool(spec.scheduling.queue_name)) if suspend is None else suspend,
    }
    if spec.run_policy.ttl_seconds_after_finished is not None:
        run_policy["ttlSecondsAfterFinished"] = spec.run_policy.ttl_seconds_after_finished
    if spec.run_policy.active_deadline_seconds is not None:
        run_policy["activeDeadlineSeconds"] = spec.run_policy.active_deadline_seconds
    metadata: dict[str, Any] = {"name": job_name, "namespace": namespace, "labels": dict(labels),
                                "annotations": {ANNOTATION_LR: repr(stage_config.learning_rate),
                                                ANNOTATION_STEPS: str(stage_config.steps)}}
    if sched.queue_name:
        metadata["labels"][QUEUE_LABEL] = sched.queue_name
    if result_key:
        metadata["annotations"][ANNOTATION_RESULT_KEY] = result_key
    return {
        "apiVersion": API_VERSION, "kind": KIND, "metadata": metadata,
        "spec": {"nprocPerNode": str(planned.processes_per_node), "runPolicy": run_policy,
                 "pytorchReplicaSpecs": replicas},
    }
