"""Operator settings: one object, loaded from ``CTXEXT_*`` environment variables.

Every field below is read from the environment variable ``CTXEXT_<FIELD NAME IN UPPER CASE>``
(e.g. ``trainer_service_account`` ← ``CTXEXT_TRAINER_SERVICE_ACCOUNT``). Lists are comma or space
separated. Unset variables keep the defaults; a bad value stops the operator at start-up with the
variable's name in the message. The Helm chart sets these in the operator Deployment.

>>> OperatorConfig.from_env({"CTXEXT_NAMESPACES": "team-a, team-b", "CTXEXT_METRICS_PORT": "9100"}).namespaces
['team-a', 'team-b']
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from ctxext.errors import SpecError

PREFIX = "CTXEXT_"


class OperatorConfig(BaseModel):
    """Settings of ``ctxext operator`` (and defaults the PyTorchJob builder uses)."""

    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True, frozen=True)

    namespaces: list[str] = Field(default_factory=list)
    """Namespaces to watch; empty means all namespaces (cluster-wide)."""
    trainer_service_account: str | None = None
    """serviceAccountName of the trainer pods (needs get/patch on contextextensionjobs/status to report
    progress and results); unset uses the namespace's default service account."""
    trainer_command: list[str] = Field(
        default_factory=lambda: ["python", "-m", "ctxext_trainer.launch", "--module", "ctxext_trainer"])
    """Container command of the trainer: torchrun (``ctxext_trainer.launch`` is torchrun that exits
    with the trainer's own exit code) reads the PET_* variables Kubeflow injects and starts
    nprocPerNode processes, each running ``python -m ctxext_trainer``."""
    image_pull_policy: str = "IfNotPresent"
    """imagePullPolicy of the trainer container."""
    trainer_image_pull_secrets: list[str] = Field(default_factory=list)
    """Secrets (names) for pulling trainer images, added to every trainer pod before the job's own
    spec.pod.imagePullSecrets; each must exist in the job's namespace."""
    hf_cache_claim: str | None = None
    """PersistentVolumeClaim holding a Hugging Face cache (hub/ layout), mounted read-only at
    /models/hf-cache for hf:// model sources (HF_HOME points there, HF_HUB_OFFLINE=1)."""
    metrics_port: int = Field(default=8080, ge=0, le=65535)
    """Port of the operator's Prometheus /metrics endpoint; 0 disables it."""
    health_port: int = Field(default=8081, ge=0, le=65535)
    """Port of the /healthz liveness endpoint (kopf's); 0 disables it."""
    health_stale_seconds: float = Field(default=180.0, ge=20)
    """/healthz fails (and the kubelet restarts the operator) once no API request has succeeded for this
    long; the probe checks at most every 10 s and kopf caches its answer 10 s (see ctxext.controller.health)."""
    resync_seconds: float = Field(default=300.0, gt=0)
    """Longest time between two passes over a job: a safety net that re-reads the job from the API
    server and re-derives its state from its PyTorchJobs. Every change is handled when its watch event
    arrives and every deadline (retry backoff, result grace) has its own wake-up, so nothing waits
    for the resync unless a watch lost an event."""
    status_refresh_seconds: float = Field(default=30.0, ge=0)
    """How soon status shows a change that decides nothing (a PyTorchJob going Created → Running,
    the trainer's live loss): such changes are coalesced into one pass per job within this time,
    or ride along with an earlier pass."""
    result_grace_seconds: float = Field(default=30.0, ge=0)
    """How long to wait for the trainer's stage result after a PyTorchJob Succeeded before going on
    without one."""
    start_deadline_seconds: float = Field(default=900.0, gt=0)
    """How long a stage's PyTorchJob may stay Pending/Created (pods not running: unschedulable, image
    pull, missing volume) before the job says so in a Degraded condition (it keeps waiting)."""
    post_events: bool = True
    """Post Kubernetes Events for transitions (best effort). Off on API servers without events."""
    watch_timeout_seconds: int = Field(default=300, ge=10)
    """Server-side timeout of each watch request (kopf reconnects after it)."""
    log_format: str = "plain"
    """plain, full or json (kopf's log formats)."""
    crd_check: bool = True
    """Refuse to start when the served ContextExtensionJob CRD differs from this operator's (after an
    upgrade that did not apply the new CRD); off only to run an old CRD on purpose."""
    backend: Literal["auto", "pytorchjob", "trainjob"] = "auto"
    """Kubeflow API that runs the stages of jobs whose ``spec.backend`` is ``Auto`` (the default): ``auto``
    uses whichever the cluster serves, TrainJob (Kubeflow Trainer v2) when both are served and
    ``training_runtime`` exists, else PyTorchJob (training-operator v1); ``pytorchjob`` or ``trainjob``
    forces one."""
    training_runtime: str = Field(default="torch-distributed", min_length=1, max_length=253)
    """ClusterTrainingRuntime that TrainJobs (the Kubeflow Trainer v2 backend) run on; Kubeflow Trainer's
    built-in torch runtime is ``torch-distributed``."""

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> OperatorConfig:
        """Settings from ``env`` (default ``os.environ``); :class:`SpecError` names the bad variable."""
        env = os.environ if env is None else env
        values: dict[str, Any] = {}
        for name, field in cls.model_fields.items():
            raw = env.get(PREFIX + name.upper())
            if raw is None or raw == "":
                continue
            if field.annotation in (list[str], "list[str]"):
                values[name] = [p for p in raw.replace(",", " ").split() if p]
            elif name in ("post_events", "crd_check"):
                values[name] = raw.strip().lower() in ("1", "true", "yes", "on")
            else:
                values[name] = raw
        try:
            return cls.model_validate(values)
        except ValidationError as exc:
            raise SpecError([(PREFIX + str(e["loc"][0]).upper(), e["msg"]) for e in exc.errors()]) from None
