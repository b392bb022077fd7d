"""The ContextExtensionJob resource: spec root, status, and the whole object."""

from __future__ import annotations

from enum import StrEnum
from typing import Any

from pydantic import Field

from ctxext.api.base import API_VERSION, KIND, ApiModel, cel, immutable, k8s
from ctxext.api.spec import (
    MAX_SEQ_LEN,
    CheckpointSpec,
    CurriculumSpec,
    DataSpec,
    EnvVar,
    EvaluationSpec,
    FailurePolicySpec,
    MetricsSpec,
    ModelSpec,
    ParallelismSpec,
    ResourcesSpec,
    RunPolicySpec,
    SchedulingSpec,
    TrainerPodSpec,
)

_STAGES = "self.curriculum.stages"


class TrainingBackend(StrEnum):
    """The Kubeflow API that runs a job's stage attempts."""

    AUTO = "Auto"
    PYTORCHJOB = "PyTorchJob"
    TRAINJOB = "TrainJob"
_LAST = f"{_STAGES}[size({_STAGES}) - 1]"


class ContextExtensionJobSpec(ApiModel):
    """Extend a model's context window by RoPE theta scaling through a curriculum of longer sequences."""

    model_config = ApiModel.model_config | {"json_schema_extra": k8s(validations=[
        cel("!has(self.model.originalContextLength) || self.targetContextLength > self.model.originalContextLength",
            "targetContextLength must be greater than model.originalContextLength",
            field_path=".targetContextLength"),
        cel(f"!has({_STAGES}) || {_LAST}.seqLen == self.targetContextLength",
            "the last curriculum stage's seqLen must equal targetContextLength",
            field_path=".curriculum.stages"),
        cel(f"!has({_STAGES}) || !has(self.model.originalContextLength) || "
            f"{_STAGES}[0].seqLen > self.model.originalContextLength",
            "the first curriculum stage's seqLen must be greater than model.originalContextLength",
            field_path=".curriculum.stages"),
        cel(f"(has({_STAGES}) || self.targetContextLength % self.parallelism.sequenceParallel == 0) && "
            f"(!has({_STAGES}) || "
            f"{_STAGES}.all(s, s.seqLen % (has(s.sequenceParallel) ? s.sequenceParallel : "
            "self.parallelism.sequenceParallel) == 0))",
            "the sequence-parallel degree must divide every stage's seqLen and targetContextLength",
            field_path=".parallelism.sequenceParallel"),
        cel("self.curriculum.thetaRule == 'fixed' || has(self.model.ropeTheta) || "
            "self.model.source.startsWith('file://') || self.model.source.startsWith('builtin://')",
            "model.ropeTheta is required unless the model is a local file:// or builtin:// checkpoint "
            "whose config.json can be read", field_path=".model.ropeTheta"),
    ])}

    model: ModelSpec = Field(json_schema_extra=immutable("spec.model"))
    """The base model to extend."""
    target_context_length: int = Field(ge=17, le=MAX_SEQ_LEN, json_schema_extra=immutable("spec.targetContextLength"))
    """Context length the extended model is trained for (the last stage's seqLen)."""
    curriculum: CurriculumSpec = Field(default_factory=CurriculumSpec,
                                       json_schema_extra=immutable("spec.curriculum"))
    """Stages of ever longer sequences and the theta rule."""
    resources: ResourcesSpec = Field(default_factory=ResourcesSpec)
    """Hardware of each trainer pod."""
    parallelism: ParallelismSpec = Field(default_factory=ParallelismSpec,
                                         json_schema_extra=immutable("spec.parallelism"))
    """Sequence parallelism, ZeRO stage and activation checkpointing."""
    data: DataSpec = Field(default_factory=DataSpec, json_schema_extra=immutable("spec.data"))
    """Training corpus, augmentation and synthetic retrieval samples."""
    evaluation: EvaluationSpec = Field(default_factory=EvaluationSpec)
    """Evaluation after each stage, and the gates that must pass."""
    checkpoint: CheckpointSpec = Field(default_factory=CheckpointSpec)
    """Checkpoint storage and interval."""
    failure_policy: FailurePolicySpec = Field(default_factory=FailurePolicySpec)
    """Retries, backoff and reactions to gate failures and numerical faults."""
    scheduling: SchedulingSpec = Field(default_factory=SchedulingSpec)
    """Kueue queue, priority class, node selector, tolerations and affinity of the trainer pods."""
    run_policy: RunPolicySpec = Field(default_factory=RunPolicySpec)
    """Lifecycle settings of each PyTorchJob."""
    env: list[EnvVar] = Field(default_factory=list, max_length=64)
    """Extra environment of the trainer containers (NCCL settings and the like)."""
    metrics: MetricsSpec = Field(default_factory=MetricsSpec)
    """Prometheus endpoint of the trainer pods."""
    pod: TrainerPodSpec = Field(default_factory=TrainerPodSpec)
    """Allow-listed settings of the trainer pods for GPU clusters: imagePullSecrets, capabilities (IPC_LOCK
    for RDMA), runtimeClassName, extra labels and annotations."""
    suspend: bool = False
    """Suspend the job: the running stage's training job (PyTorchJob or TrainJob) is suspended (pods deleted)
    until false again."""
    backend: TrainingBackend = Field(default=TrainingBackend.AUTO, json_schema_extra=immutable("spec.backend"))
    """Kubeflow API that runs each stage attempt: PyTorchJob (kubeflow.org/v1, Kubeflow training-operator v1),
    TrainJob (trainer.kubeflow.org/v1alpha1, Kubeflow Trainer v2, on the operator's ClusterTrainingRuntime
    CTXEXT_TRAINING_RUNTIME), or Auto: the operator's CTXEXT_BACKEND, which by default takes whichever API the
    cluster serves, TrainJob when both are and its runtime exists. The choice is made at the first attempt and
    kept in status.backend."""


class Phase(StrEnum):
    PENDING = "Pending"
    RUNNING = "Running"
    QUEUED = "Queued"
    SUSPENDED = "Suspended"
    SUCCEEDED = "Succeeded"
    FAILED = "Failed"


class Condition(ApiModel):
    """A standard Kubernetes condition."""

    type: str = Field(max_length=64)
    """Ready, Progressing, Degraded, Failed or InvalidSpec."""
    status: str = Field(max_length=8)
    """True, False or Unknown."""
    reason: str | None = Field(default=None, max_length=128)
    """One CamelCase word for machines."""
    message: str | None = Field(default=None, max_length=32768)
    """What happened, in plain words."""
    last_transition_time: str | None = None
    """When the status last changed (RFC 3339)."""
    observed_generation: int | None = None
    """spec generation the condition was computed from."""


_OPEN = k8s(preserve_unknown_fields=True)


class StageStatus(ApiModel):
    """Progress and outcome of one curriculum stage."""

    index: int
    """1-based stage number (0: the base model's evaluation)."""
    seq_len: int
    """Sequence length of the stage."""
    rope_theta: float
    """RoPE theta of the stage."""
    steps: int
    """Optimizer steps of the current attempt: the plan's, more after a gate retry (onGateFailure: Retry)."""
    phase: str = "Pending"
    """Pending, Running, Queued (held by Kueue), Succeeded, Failed or Skipped."""
    attempts: int = 0
    """PyTorchJob attempts made so far."""
    preemptions: int = 0
    """Attempts that ended preempted; they do not count against failurePolicy.maxRetries."""
    job_name: str | None = None
    """Name of the current attempt's PyTorchJob."""
    learning_rate: float | None = None
    """Peak learning rate of the current attempt (lowered on RetryWithLowerLR)."""
    start_time: str | None = None
    """When the first attempt started."""
    completion_time: str | None = None
    """When the stage finished."""
    next_attempt_time: str | None = None
    """When a retry will be started (after backoff)."""
    message: str | None = Field(default=None, max_length=32768)
    """Last thing that happened to the stage, in plain words."""
    result: dict[str, Any] | None = Field(default=None, json_schema_extra=_OPEN)
    """Stage result written by the trainer: final loss, perplexity, evaluation, health counters,
    checkpoint and output paths."""


class Progress(ApiModel):
    """Live progress of the running stage, reported by trainer rank 0."""

    job_name: str | None = None
    """PyTorchJob reporting this progress."""
    stage: int | None = None
    """Stage number."""
    step: int | None = None
    """Last completed optimizer step."""
    total_steps: int | None = None
    """Steps planned for the stage."""
    loss: float | None = None
    """Training loss at the last step (averaged over ranks)."""
    perplexity: float | None = None
    """exp(loss)."""
    tokens_per_second: float | None = None
    """Training throughput over all ranks."""
    updated: str | None = None
    """When this progress was written."""


class ContextExtensionJobStatus(ApiModel):
    """Observed state of the job, maintained by the operator (and progress by the trainer)."""

    model_config = ApiModel.model_config | {"extra": "allow"}

    phase: Phase | None = None
    """Pending, Running, Queued (a Kueue queue holds the current stage), Suspended, Succeeded or Failed."""
    stage: str | None = None
    """Current stage as 'current/total' (e.g. 2/4)."""
    current_stage: int | None = None
    """1-based number of the current stage."""
    seq_len: int | None = None
    """Sequence length of the current stage."""
    rope_theta: float | None = None
    """RoPE theta of the current stage."""
    loss: float | None = None
    """Latest training loss."""
    perplexity: float | None = None
    """Latest training perplexity."""
    effective_length: int | None = None
    """Effective context length measured by the latest evaluated stage: the longest evaluated length up
    to which retrievalAccuracy stays at or above evaluation.effectiveLengthThreshold (0: not even the
    shortest)."""
    baseline: StageStatus | None = None
    """The base model's evaluation (index 0, PyTorchJob ``<name>-s0-a<n>``), run once before stage 1 when a
    maxIncrease gate needs it; ``result.evaluation`` holds its passkey, effective length and perplexity."""
    stages: list[StageStatus] | None = None
    """The planned curriculum with per-stage progress and results."""
    progress: Progress | None = None
    """Live progress of the running stage."""
    results: dict[str, Any] | None = Field(default=None, json_schema_extra=_OPEN)
    """Stage results keyed by PyTorchJob name, as written by trainer rank 0."""
    warnings: list[str] | None = None
    """Planner warnings (e.g. a stage close to the GPU memory limit)."""
    conditions: list[Condition] | None = Field(default=None, json_schema_extra=k8s(
        list_type="map", list_map_keys=["type"]))
    """Ready, Progressing, Degraded, Failed and InvalidSpec conditions."""
    backend: str | None = None
    """Kubeflow API running this job's stage attempts (PyTorchJob or TrainJob): chosen before the first attempt
    from spec.backend and what the cluster serves, then kept."""
    final_model_path: str | None = None
    """Hugging Face model directory of the last stage once the job has Succeeded."""
    observed_generation: int | None = None
    """spec generation the operator last acted on."""


class ContextExtensionJob(ApiModel):
    """The whole object as read from a manifest."""

    api_version: str = Field(pattern=f"^{API_VERSION}$")
    """ctxext.dev/v1alpha1"""
    kind: str = Field(pattern=f"^{KIND}$")
    """ContextExtensionJob"""
    metadata: dict[str, Any] = Field(default_factory=dict)
    """Kubernetes object metadata."""
    spec: ContextExtensionJobSpec
    """What to do."""
    status: ContextExtensionJobStatus | None = None
    """What happened."""
