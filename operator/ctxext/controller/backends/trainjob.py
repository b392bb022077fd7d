"""The TrainJob backend (Kubeflow Trainer v2, ``trainer.kubeflow.org/v1alpha1``): build a stage attempt.

The TrainJob is derived from the PyTorchJob that :func:`ctxext.controller.builder.build_pytorchjob`
builds for the same inputs, so both backends run the same pod (image, command, stage config,
volumes, security context, scheduling) and cannot drift apart. Shape (``ctxext render --backend
trainjob examples/tiny-cpu.yaml`` prints a complete one)::

    apiVersion: trainer.kubeflow.org/v1alpha1
    kind: TrainJob
    metadata: {name: <cej>-s<stage>-a<attempt>, labels: <as the PyTorchJob's>, annotations: <same>}
    spec:
      runtimeRef: {name: torch-distributed, kind: ClusterTrainingRuntime, apiGroup: trainer.kubeflow.org}
      suspend: false                    # true under a Kueue queue (Kueue resumes it on admission)
      activeDeadlineSeconds: ...        # spec.runPolicy.activeDeadlineSeconds, when set
      trainer: {image, command, env, numNodes, numProcPerNode, resourcesPerNode}
      runtimePatches:                   # pod-level settings, on the runtime's replicated job "node"
      - manager: ctxext.dev/operator
        trainingRuntimeSpec: {template: {spec: {replicatedJobs: [{name: node, template: {spec:
          {template: {metadata: {labels, annotations}, spec: {volumes, securityContext, ...,
           containers: [{name: node, volumeMounts, securityContext}]}}}}}]}}}

No ``PET_*`` variable is set here: Trainer's torch plugin injects ``PET_NNODES``,
``PET_NPROC_PER_NODE``, ``PET_NODE_RANK``, ``PET_MASTER_ADDR`` and ``PET_MASTER_PORT`` into the
``node`` container and refuses a TrainJob that sets one. The trainer command
(``python -m ctxext_trainer.launch``, i.e. torchrun) reads exactly these: torchrun takes each of its
options from ``PET_<OPTION>`` (``torch.distributed.argparse_util.env``).

What a TrainJob cannot carry is refused, each problem naming its manifest field (one
:class:`SpecError`), never dropped: a runtime patch may set only env, volumeMounts and
securityContext of a container and no priorityClassName or runtimeClassName of a pod; the
TrainJob API has no ttlSecondsAfterFinished and no cleanPodPolicy (a finished attempt's Job stops
its running pods, as cleanPodPolicy Running does), and no imagePullPolicy.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

from ctxext.api.job import ContextExtensionJob
from ctxext.config import OperatorConfig
from ctxext.controller.backends import trainjob_status
from ctxext.controller.builder import METRICS_PORT_NAME, build_pytorchjob
from ctxext.controller.observe import ObservedJob
from ctxext.errors import SpecError
from ctxext.planner import Plan
from ctxext.stage_config import CREDENTIALS_DIR, CREDENTIALS_ENV_VAR, TRAINJOB_ENV_VAR

GROUP = "trainer.kubeflow.org"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"
KIND = "TrainJob"
PLURAL = "trainjobs"
RUNTIME_KIND = "ClusterTrainingRuntime"
#: Name of the torch runtime's replicated job and of its trainer container (Trainer's ``constants.Node``).
NODE = "node"
#: Owner of our runtime patch (runtimePatches is a list keyed by manager).
PATCH_MANAGER = "ctxext.dev/operator"
#: Variables the torch plugin injects and refuses from a TrainJob (``constants.TorchRunReservedEnvNames``).
RESERVED_ENV = ("PET_NNODES", "PET_NPROC_PER_NODE", "PET_NODE_RANK", "PET_MASTER_ADDR", "PET_MASTER_PORT")
#: Volume of the model credentials Secret (``spec.model.credentialsSecretRef``), mounted as files.
CREDENTIALS_VOLUME = "ctxext-credentials"
#: The image pull policy Kubernetes gives a container without one (for tags other than ``latest``).
DEFAULT_PULL_POLICY = "IfNotPresent"

#: Pod fields a runtime patch may carry (``PodSpecPatch`` in Trainer v2.3.0).
_POD_PATCH = ("serviceAccountName", "volumes", "initContainers", "imagePullSecrets", "securityContext",
              "nodeSelector", "affinity", "tolerations", "schedulingGates", "terminationGracePeriodSeconds")
#: Pod fields of the PyTorchJob that a TrainJob cannot carry, and the setting that puts each there.
_POD_REFUSED = {
    "priorityClassName": ("spec.scheduling.priorityClassName",
                          "a TrainJob cannot set the pods' priority class (Trainer's runtime patches do not "
                          "allow priorityClassName); under Kueue use a WorkloadPriorityClass "
                          "(label kueue.x-k8s.io/priority-class), or run this job with the pytorchjob backend"),
    "runtimeClassName": ("spec.pod.runtimeClassName",
                         "a TrainJob cannot set the pods' runtime class (Trainer's runtime patches do not allow "
                         "runtimeClassName); set it in the ClusterTrainingRuntime instead, or use the "
                         "pytorchjob backend"),
}
#: Container fields of the PyTorchJob that go elsewhere in a TrainJob, or nowhere (``ports``: the torch
#: plugin opens the rendezvous port itself; metrics ports are not scraped by name on TrainJob pods yet).
_CONTAINER_HANDLED = ("name", "image", "imagePullPolicy", "command", "args", "env", "resources", "ports",
                      "volumeMounts", "securityContext", "envFrom")


def _problems(job: ContextExtensionJob, pod: dict[str, Any], container: dict[str, Any],
              run_policy: dict[str, Any]) -> list[tuple[str, str]]:
    """What this TrainJob cannot carry, each as (manifest field, plain words)."""
    spec = job.spec
    out: list[tuple[str, str]] = [_POD_REFUSED[key] for key in _POD_REFUSED if key in pod]
    out += [(f"spec.env[{i}].name", f"{e.name} is set by Kubeflow Trainer's torch plugin, which refuses a "
             "TrainJob that sets it") for i, e in enumerate(spec.env) if e.name in RESERVED_ENV]
    if spec.run_policy.ttl_seconds_after_finished is not None:
        out.append(("spec.runPolicy.ttlSecondsAfterFinished",
                    "a TrainJob has no ttlSecondsAfterFinished (Trainer v2 does not delete finished TrainJobs); "
                    "leave it unset or use the pytorchjob backend"))
    if spec.run_policy.clean_pod_policy == "All":
        out.append(("spec.runPolicy.cleanPodPolicy",
                    "a TrainJob has no cleanPodPolicy: a finished attempt's pods that still run are stopped "
                    "(as with Running) and finished pods are kept; set Running or use the pytorchjob backend"))
    if container.get("imagePullPolicy", DEFAULT_PULL_POLICY) != DEFAULT_PULL_POLICY:
        out.append(("CTXEXT_IMAGE_PULL_POLICY",
                    f"a TrainJob cannot set the trainer's imagePullPolicy ({container['imagePullPolicy']}); "
                    f"unset it (Kubernetes then uses {DEFAULT_PULL_POLICY}) or set it in the runtime"))
    unknown = sorted(set(pod) - set(_POD_PATCH) - set(_POD_REFUSED) - {"containers"})
    unknown += sorted(f"containers[].{k}" for k in set(container) - set(_CONTAINER_HANDLED))
    unknown += sorted(f"runPolicy.{k}" for k in set(run_policy) - {"backoffLimit", "cleanPodPolicy", "suspend",
                                                                    "activeDeadlineSeconds", "ttlSecondsAfterFinished"})
    if unknown:
        out.append(("", f"the TrainJob backend does not know how to carry {', '.join(unknown)} "
                    "(a ctxext bug: please report it); use the pytorchjob backend"))
    return out


#: Pod annotation naming the /metrics port of each local rank, where a TrainJob's container cannot declare it.
METRICS_PORT_ANNOTATION = "ctxext.dev/metrics-port-{rank}"


def _metrics_ports_as_annotations(meta: dict[str, Any], container: dict[str, Any]) -> None:
    """A runtime patch cannot add container ports, and the chart's PodMonitor finds a PyTorchJob pod's ranks by
    its ``metrics-<rank>`` ports: a TrainJob pod says the same in annotations ``ctxext.dev/metrics-port-<rank>``,
    which the PodMonitor's TrainJob endpoints (one per local rank) turn into one target per rank."""
    ports = {p["name"]: p["containerPort"] for p in container.get("ports") or []}
    rank = 0
    while (port := ports.get(METRICS_PORT_NAME.format(rank=rank))) is not None:
        meta.setdefault("annotations", {})[METRICS_PORT_ANNOTATION.format(rank=rank)] = str(port)
        rank += 1


def _credentials_as_files(pod: dict[str, Any], container: dict[str, Any]) -> None:
    """Trainer's runtime patches allow no ``envFrom``: mount the credentials Secret read-only as files instead
    (never its values in the TrainJob), and tell the trainer where (``ctxext_trainer.launch`` exports each key
    as an environment variable before it starts the workers, as envFrom would have)."""
    for source in container.pop("envFrom", None) or []:
        secret = source["secretRef"]["name"]
        pod["volumes"] = [*pod.get("volumes", []), {"name": CREDENTIALS_VOLUME, "secret": {
            "secretName": secret, "defaultMode": 0o440}}]  # group-readable: fsGroup is the trainer's uid
        container["volumeMounts"] = [*container.get("volumeMounts", []), {
            "name": CREDENTIALS_VOLUME, "mountPath": CREDENTIALS_DIR, "readOnly": True}]
        container["env"] = [*container["env"], {"name": CREDENTIALS_ENV_VAR, "value": CREDENTIALS_DIR}]


def build_trainjob(job: ContextExtensionJob, plan: Plan, stage: int, *, attempt: int = 1,
                   learning_rate: float | None = None, config: OperatorConfig | None = None,
                   suspend: bool | None = None, steps: int | None = None,
                   result_key: str | None = None) -> dict[str, Any]:
    """The TrainJob of ``stage`` attempt ``attempt``; arguments as :func:`build_pytorchjob`, whose
    name, labels, annotations, suspension and pod it carries (see the module docstring)."""
    config = config or OperatorConfig()
    ptj = build_pytorchjob(job, plan, stage, attempt=attempt, learning_rate=learning_rate, config=config,
                           suspend=suspend, steps=steps, result_key=result_key)
    replicas = ptj["spec"]["pytorchReplicaSpecs"]
    master = copy.deepcopy(replicas["Master"]["template"])
    pod: dict[str, Any] = master["spec"]
    (container,) = pod["containers"]
    run_policy = ptj["spec"]["runPolicy"]
    if problems := _problems(job, pod, container, run_policy):
        raise SpecError(problems)
    _credentials_as_files(pod, container)
    _metrics_ports_as_annotations(master["metadata"], container)

    trainer: dict[str, Any] = {
        "image": container["image"], "command": list(container["command"]),
        "numNodes": sum(int(r["replicas"]) for r in replicas.values()),
        "numProcPerNode": int(ptj["spec"]["nprocPerNode"]),
        # the TrainJob's own name: trainer rank 0 writes its status.trainerStatus (ctxext_trainer.trainjob_status)
        "env": [*container["env"], {"name": TRAINJOB_ENV_VAR, "value": ptj["metadata"]["name"]}],
    }
    if container.get("args"):
        trainer["args"] = list(container["args"])
    if container.get("resources"):
        trainer["resourcesPerNode"] = container["resources"]
    node_container = {"name": NODE, **{k: container[k] for k in ("volumeMounts", "securityContext") if k in container}}
    pod_patch = {k: pod[k] for k in _POD_PATCH if k in pod}
    pod_patch["containers"] = [node_container]
    patch = {"manager": PATCH_MANAGER, "trainingRuntimeSpec": {"template": {"spec": {"replicatedJobs": [
        {"name": NODE, "template": {"spec": {"template": {"metadata": master["metadata"], "spec": pod_patch}}}}]}}}}
    spec: dict[str, Any] = {
        "runtimeRef": {"name": config.training_runtime, "kind": RUNTIME_KIND, "apiGroup": GROUP},
        "suspend": bool(run_policy.get("suspend")),
        "trainer": trainer, "runtimePatches": [patch],
    }
    if "activeDeadlineSeconds" in run_policy:
        spec["activeDeadlineSeconds"] = run_policy["activeDeadlineSeconds"]
    return {"apiVersion": API_VERSION, "kind": KIND, "metadata": ptj["metadata"], "spec": spec}


@dataclass(frozen=True)
class TrainJobBackend:
    """``trainer.kubeflow.org/v1alpha1`` TrainJob on a ClusterTrainingRuntime (JobSet underneath)."""

    name: str = "trainjob"
    kind: str = KIND
    api_version: str = API_VERSION
    resource: tuple[str, str, str] = (GROUP, VERSION, PLURAL)

    def build(self, job: ContextExtensionJob, plan: Plan, stage: int, *, attempt: int = 1,
              learning_rate: float | None = None, config: OperatorConfig | None = None,
              suspend: bool | None = None, steps: int | None = None,
              result_key: str | None = None) -> dict[str, Any]:
        return build_trainjob(job, plan, stage, attempt=attempt, learning_rate=learning_rate, config=config,
                              suspend=suspend, steps=steps, result_key=result_key)

    def observe(self, obj: dict[str, Any]) -> ObservedJob:
        return trainjob_status.observe(obj)

    def suspend_patch(self, suspend: bool) -> dict[str, Any]:
        return {"spec": {"suspend": suspend}}


TRAINJOB = TrainJobBackend()
