"""The stage config: everything one trainer run needs, written by the operator or the local runner.

The trainer is started as ``python -m ctxext_trainer --stage-config FILE`` (or with the JSON in the
``CTXEXT_STAGE_CONFIG`` environment variable, which is how the PyTorchJob builder passes it in the
pod spec without a ConfigMap). It is built from the plan by :func:`build_stage_config`, a pure
function; the trainer validates it with the same model.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Literal

from pydantic import Field, ValidationError

from ctxext.api.base import ApiModel
from ctxext.api.job import ContextExtensionJob
from ctxext.api.spec import DataSpec, EvaluationSpec, FailurePolicySpec
from ctxext.errors import SpecError, from_validation_error
from ctxext.planner import Plan, PlannedStage

ENV_VAR = "CTXEXT_STAGE_CONFIG"
#: Name of the TrainJob that runs this stage attempt (set by the TrainJob builder only): trainer rank 0 also
#: writes that TrainJob's ``status.trainerStatus`` (:mod:`ctxext_trainer.trainjob_status`).
TRAINJOB_ENV_VAR = "CTXEXT_TRAINJOB"
#: Directory of the model credentials Secret (``spec.model.credentialsSecretRef``) mounted as files, where the
#: pod cannot take it as ``envFrom`` (a TrainJob): ``ctxext_trainer.launch`` exports each key as a variable.
CREDENTIALS_ENV_VAR = "CTXEXT_CREDENTIALS_DIR"
CREDENTIALS_DIR = "/var/run/secrets/ctxext/credentials"


class ReportTarget(ApiModel):
    """Where trainer rank 0 reports progress and the stage result (besides result.json)."""

    kind: Literal["none", "kubernetes"] = "none"
    """none (result.json only) or kubernetes (patch the CEJ's status subresource)."""
    namespace: str | None = None
    """Namespace of the ContextExtensionJob."""
    name: str | None = None
    """Name of the ContextExtensionJob."""
    result_key: str | None = None
    """Secret of this attempt (from the operator): rank 0 signs its stage result with it (HMAC-SHA256), so
    the operator can tell results of this attempt from ones another trainer wrote."""


class StageConfig(ApiModel):
    """One stage attempt, as the trainer runs it."""

    job: str
    """ContextExtensionJob name (metric label ``cej``)."""
    namespace: str = "default"
    """Namespace of the job (metric label ``cej_namespace``)."""
    job_name: str
    """PyTorchJob (attempt) name; keys the result in status.results."""
    stage: int
    """1-based stage number."""
    total_stages: int
    """Number of stages in the curriculum."""
    attempt: int = 1
    """1-based attempt number of this stage."""
    model_path: str
    """Hugging Face model directory to start from (base model, or the previous stage's output/model)."""
    output_dir: str
    """Stage directory: checkpoints/, model/ (final HF model), result.json, eval/ (plots)."""
    seq_len: int
    """Training sequence length (the longest, with a within-stage length curriculum)."""
    min_seq_len: int | None = None
    """When set, each optimizer step draws its sequence length from [min_seq_len, seq_len] (rounded
    to a multiple of sequence_parallel), deterministically from data.seed and the step."""
    rope_theta: float
    """RoPE theta of this stage (set via config.rope_parameters)."""
    original_context_length: int
    """L0 of the base model (evaluation and position-loss buckets)."""
    steps: int
    """Optimizer steps."""
    learning_rate: float
    """Peak learning rate (already lowered on RetryWithLowerLR attempts)."""
    warmup_steps: int = 0
    """Warm-up steps."""
    lr_schedule: Literal["constant", "cosine", "linear"] = "cosine"
    """Decay after warm-up."""
    min_learning_rate_ratio: float = 0.1
    """Final learning rate / peak."""
    batch_size: int = 1
    """Sequences per data-parallel rank per micro-step."""
    gradient_accumulation: int = 1
    """Micro-steps per optimizer step."""
    sequence_parallel: int = 1
    """Sequence-parallel degree: ranks per sequence, Ulysses × ring."""
    ring_degree: int = Field(default=1, ge=1)
    """Zigzag ring-attention ranks per sequence; Ulysses runs sequence_parallel / ring_degree inside each."""
    zero_stage: int = Field(default=3, ge=0, le=3)
    """DeepSpeed ZeRO stage."""
    activation_checkpointing: bool = True
    """Recompute activations in backward."""
    checkpointed_layers: int | None = Field(default=None, ge=0)
    """With activation_checkpointing: how many decoder layers recompute (evenly spread); None = all."""
    device: Literal["cpu", "cuda"] = "cuda"
    """cpu (gloo, fp32) or cuda (nccl, bf16)."""
    data: DataSpec = Field(default_factory=DataSpec)
    """Corpus and augmentation."""
    evaluation: EvaluationSpec = Field(default_factory=EvaluationSpec)
    """Evaluation after training (lengths resolved below)."""
    eval_lengths: list[int] = Field(default_factory=list)
    """Lengths to evaluate at: explicit evaluation.lengths, or L0 and every stage length up to this one."""
    checkpoint_interval: int = 50
    """Save every this many steps."""
    keep_checkpoints: int = 2
    """Checkpoints kept."""
    failure_policy: FailurePolicySpec = Field(default_factory=FailurePolicySpec)
    """Loss-spike thresholds and the like for the gradient-health guard."""
    metrics_port: int = 9400
    """Rank r serves /metrics on metrics_port + local rank; 0 disables."""
    report: ReportTarget = Field(default_factory=ReportTarget)
    """Progress/result reporting target."""
    evaluate_only: bool = False
    """Evaluate ``model_path`` at ``rope_theta`` and ``eval_lengths`` without training (the base model's
    evaluation before stage 1; ``stage`` is 0): the result's ``evaluation`` is the baseline."""

    def dumps(self) -> str:
        return json.dumps(self.to_wire(), separators=(",", ":"), sort_keys=True)


def load_stage_config(text: str) -> StageConfig:
    """Parse a stage config (JSON, or YAML which is a superset); :class:`SpecError` on problems."""
    import yaml

    try:
        data = json.loads(text)
    except ValueError:
        data = yaml.safe_load(text)
    try:
        return StageConfig.model_validate(data)
    except ValidationError as exc:
        raise from_validation_error(exc, "stageConfig") from None


def read_stage_config(path: str | Path) -> StageConfig:
    return load_stage_config(Path(path).read_text())


def eval_lengths(job: ContextExtensionJob, plan: Plan, stage: PlannedStage) -> list[int]:
    """Explicit evaluation.lengths, else L0 and each stage length up to this one.

    For tiny-cpu (L0 128, stages 256, 512) stage 2 evaluates at [128, 256, 512].
    """
    if job.spec.evaluation.lengths:
        return sorted(set(job.spec.evaluation.lengths))
    return [plan.original_context_length] + [s.seq_len for s in plan.stages if s.index <= stage.index]


def build_stage_config(
    job: ContextExtensionJob,
    plan: Plan,
    stage_index: int,
    *,
    attempt: int,
    job_name: str,
    model_path: str,
    output_dir: str,
    device: Literal["cpu", "cuda"],
    learning_rate: float | None = None,
    steps: int | None = None,
    report: ReportTarget | None = None,
) -> StageConfig:
    """The config of ``stage_index`` (1-based) attempt ``attempt``. Pure. ``learning_rate`` and ``steps``
    override the plan's (a retry after non-finite gradients, a gate retry). Stage 0 is the base model's
    evaluation (:func:`baseline_config`)."""
    if stage_index == 0:
        return baseline_config(job, plan, attempt=attempt, job_name=job_name, model_path=model_path,
                               output_dir=output_dir, device=device, report=report)
    try:
        stage = plan.stages[stage_index - 1]
    except IndexError:
        raise SpecError([("stage", f"stage {stage_index} does not exist; the plan has {len(plan.stages)}")]) from None
    spec = job.spec
    return StageConfig(
        job=job.metadata.get("name", "local"), namespace=job.metadata.get("namespace", "default"),
        job_name=job_name, stage=stage.index, total_stages=len(plan.stages), attempt=attempt,
        model_path=model_path, output_dir=output_dir, seq_len=stage.seq_len, rope_theta=stage.rope_theta,
        original_context_length=plan.original_context_length, steps=steps if steps is not None else stage.steps,
        min_seq_len=stage.min_seq_len,
        learning_rate=learning_rate if learning_rate is not None else stage.learning_rate,
        warmup_steps=stage.warmup_steps, lr_schedule=stage.lr_schedule,
        min_learning_rate_ratio=stage.min_learning_rate_ratio, batch_size=stage.batch_size,
        gradient_accumulation=stage.gradient_accumulation, sequence_parallel=stage.sequence_parallel,
        ring_degree=stage.ring_degree,
        zero_stage=stage.zero_stage, activation_checkpointing=stage.activation_checkpointing,
        checkpointed_layers=stage.checkpointed_layers, device=device,
        data=spec.data, evaluation=spec.evaluation, eval_lengths=eval_lengths(job, plan, stage),
        checkpoint_interval=spec.checkpoint.interval_steps, keep_checkpoints=spec.checkpoint.keep_last,
        failure_policy=spec.failure_policy, metrics_port=spec.metrics.port, report=report or ReportTarget(),
    )


def baseline_config(job: ContextExtensionJob, plan: Plan, *, attempt: int, job_name: str, model_path: str,
                    output_dir: str, device: Literal["cpu", "cuda"], report: ReportTarget | None = None) -> StageConfig:
    """The base model's evaluation: stage 1's processes and settings, the base theta, no training, at
    :func:`ctxext.decide.baseline_lengths`. Pure.

    >>> from ctxext.manifest import job_from_object
    >>> from ctxext.planner import plan_curriculum
    >>> job = job_from_object({"apiVersion": "ctxext.dev/v1alpha1", "kind": "ContextExtensionJob",
    ...     "metadata": {"name": "t"}, "spec": {"model": {"source": "builtin://tiny"}, "targetContextLength": 512,
    ...     "curriculum": {"stages": [{"seqLen": 256}, {"seqLen": 512}]}}})
    >>> c = baseline_config(job, plan_curriculum(job.spec), attempt=1, job_name="t-s0-a1", model_path="/m",
    ...                     output_dir="/o", device="cpu")
    >>> (c.stage, c.evaluate_only, c.steps, c.rope_theta, c.eval_lengths)
    (0, True, 0, 10000.0, [128, 256])
    """
    from ctxext.decide import baseline_lengths

    stage1 = build_stage_config(job, plan, 1, attempt=attempt, job_name=job_name, model_path=model_path,
                                output_dir=output_dir, device=device, report=report)
    lengths = baseline_lengths(job.spec, plan)
    return stage1.model_copy(update={"stage": 0, "evaluate_only": True, "steps": 0, "seq_len": max(lengths),
                                     "min_seq_len": None, "eval_lengths": lengths,
                                     "rope_theta": plan.base_rope_theta or stage1.rope_theta})
