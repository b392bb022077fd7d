"""``ContextExtensionJob.spec``: what a user asks for. The CRD schema is generated from here.

Each attribute's docstring becomes its description in the CRD (``kubectl explain``). Rules that
involve several fields live twice, deliberately: as CEL on the model (enforced by the API server
at admission) and in :mod:`ctxext.api.validation` (enforced by ``ctxext validate``/``plan`` and
the operator); ``tests/integration/test_crd_apiserver.py`` checks both agree.
"""

from __future__ import annotations

import re
from enum import StrEnum
from typing import Annotated, Literal

from pydantic import Field, field_validator

from ctxext.api.base import ApiModel, cel, k8s
from ctxext.theta import MAX_ROPE_THETA, ThetaRule

#: Longest sequence (and target) we accept: 128M tokens.
MAX_SEQ_LEN = 1 << 27
MIN_CONTEXT = 16
SOURCE_PATTERN = r"^(file:///|pvc://[a-z0-9]([-a-z0-9]*[a-z0-9])?/|hf://[^/\s]+/[^\s]+|s3://[a-z0-9][-a-z0-9.]*[a-z0-9]/|builtin://)\S*$"
DATA_PATTERN = r"^(file:///|pvc://[a-z0-9]([-a-z0-9]*[a-z0-9])?/|s3://[a-z0-9][-a-z0-9.]*[a-z0-9]/|builtin://)\S*$"

#: What each pattern accepts, in words: a mismatch is reported with these, not the regex.
PATTERN_HINTS = {
    SOURCE_PATTERN: "must start with file:///, pvc://<claim>/, hf://<org>/<repo>, s3://<bucket>/ or builtin://",
    DATA_PATTERN: "must start with file:///, pvc://<claim>/, s3://<bucket>/ or builtin://",
}

Theta = Annotated[float, Field(gt=0, le=MAX_ROPE_THETA)]
SeqLen = Annotated[int, Field(ge=MIN_CONTEXT + 1, le=MAX_SEQ_LEN)]
Name253 = Annotated[str, Field(min_length=1, max_length=253, pattern=r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$")]



class SecretKeyRef(ApiModel):
    """A Secret in the job's namespace whose keys become environment variables of the trainer pods."""

    name: Name253
    """Name of the Secret (e.g. holding AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY or HF_TOKEN)."""


class ModelArchitecture(ApiModel):
    """Shape of the model, for the memory estimate. Read from the model's config.json when omitted."""

    num_layers: int = Field(ge=1, le=1024)
    """Number of transformer layers (config.json num_hidden_layers)."""
    hidden_size: int = Field(ge=8, le=131072)
    """Model width (config.json hidden_size)."""
    intermediate_size: int = Field(ge=8, le=1048576)
    """MLP width (config.json intermediate_size)."""
    num_attention_heads: int = Field(ge=1, le=1024)
    """Query heads per layer."""
    num_key_value_heads: int | None = Field(default=None, ge=1, le=1024)
    """Key/value heads per layer (grouped-query attention); defaults to numAttentionHeads."""
    vocab_size: int = Field(ge=2, le=4194304)
    """Vocabulary size (config.json vocab_size)."""
    tie_word_embeddings: bool = False
    """Whether the output projection shares the embedding matrix."""


class ModelSpec(ApiModel):
    """The base model to extend."""

    source: str = Field(max_length=2048, pattern=SOURCE_PATTERN)
    """Where the Hugging Face checkpoint lives: file:///path, pvc://<claim>/<path>, hf://<org>/<repo>
    (resolved offline from a mounted Hugging Face cache), s3://<bucket>/<prefix>, or builtin://tiny
    (the packaged demo model)."""
    rope_theta: Theta | None = None
    """Base RoPE theta (θ0) of the model; read from config.json when omitted and readable."""
    head_dim: int | None = Field(default=None, ge=4, le=1024, json_schema_extra=k8s(
        validations=[cel("self % 2 == 0", "headDim must be even")]))
    """Attention head dimension d (used by the ntk rule); read from config.json when omitted."""
    original_context_length: int | None = Field(default=None, ge=MIN_CONTEXT, le=MAX_SEQ_LEN)
    """Context length L0 the model was trained at (8192 for Llama-3); read from config.json when omitted."""
    architecture: ModelArchitecture | None = None
    """Model shape for the memory estimate; read from config.json when omitted."""
    credentials_secret_ref: SecretKeyRef | None = None
    """Secret with credentials to fetch the model (S3 keys, HF token); its values never appear in
    status, events or logs."""


class LRSchedule(StrEnum):
    """Learning-rate schedule after warm-up."""

    CONSTANT = "constant"
    COSINE = "cosine"
    LINEAR = "linear"


class StageDefaults(ApiModel):
    """Training settings for generated stages, and for any stage field left out."""

    steps: int = Field(default=100, ge=1, le=10_000_000)
    """Optimizer steps per stage."""
    learning_rate: float = Field(default=2.0e-5, gt=0, le=1)
    """Peak learning rate (AdamW)."""
    batch_size: int = Field(default=1, ge=1, le=4096)
    """Sequences per data-parallel rank per micro-step."""
    gradient_accumulation: int = Field(default=1, ge=1, le=4096)
    """Micro-steps accumulated per optimizer step."""
    nodes: int = Field(default=1, ge=1, le=4096)
    """Nodes (pods) that run the stage."""
    warmup_steps: int = Field(default=0, ge=0, le=10_000_000)
    """Linear learning-rate warm-up steps at the start of each stage."""
    lr_schedule: LRSchedule = LRSchedule.COSINE
    """Learning-rate decay after warm-up: constant, cosine or linear (to minLearningRateRatio)."""
    min_learning_rate_ratio: float = Field(default=0.1, ge=0, le=1)
    """Final learning rate as a fraction of the peak, for cosine and linear schedules."""
    variable_length: bool = False
    """Within-stage length curriculum: each step's sequence length is drawn from
    [originalContextLength, seqLen] instead of always seqLen (helps small models keep retrieval at
    every length; see examples/tiny-cpu.yaml)."""


class StageSpec(ApiModel):
    """One explicit curriculum stage. Fields left out come from curriculum.stageDefaults."""

    seq_len: SeqLen
    """Training sequence length of this stage, in tokens."""
    rope_theta: Theta | None = None
    """Explicit RoPE theta for this stage (required with thetaRule fixed; overrides other rules)."""
    ntk_alpha: float | None = Field(default=None, ge=1, le=1_000_000)
    """NTK scale α for the ntk rule; default seqLen / originalContextLength."""
    steps: int | None = Field(default=None, ge=1, le=10_000_000)
    """Optimizer steps of this stage."""
    learning_rate: float | None = Field(default=None, gt=0, le=1)
    """Peak learning rate of this stage."""
    batch_size: int | None = Field(default=None, ge=1, le=4096)
    """Sequences per data-parallel rank per micro-step."""
    gradient_accumulation: int | None = Field(default=None, ge=1, le=4096)
    """Micro-steps accumulated per optimizer step."""
    nodes: int | None = Field(default=None, ge=1, le=4096)
    """Nodes (pods) for this stage."""
    sequence_parallel: int | None = Field(default=None, ge=1, le=1024)
    """Sequence-parallel degree of this stage; default parallelism.sequenceParallel. Longer stages
    usually need more."""
    ring_degree: int | None = Field(default=None, ge=1, le=1024)
    """Ring-attention degree of this stage (Ulysses = sequenceParallel / ringDegree); default
    parallelism.ringDegree, else automatic."""
    warmup_steps: int | None = Field(default=None, ge=0, le=10_000_000)
    """Learning-rate warm-up steps of this stage."""


class CurriculumSpec(ApiModel):
    """How the context grows from originalContextLength to targetContextLength."""

    model_config = ApiModel.model_config | {"json_schema_extra": k8s(validations=[
        cel("!has(self.stages) || self.stages.map(s, s.seqLen).isSorted() && "
            "self.stages.all(s, self.stages.exists_one(t, t.seqLen == s.seqLen))",
            "stages[].seqLen must be strictly increasing", field_path=".stages"),
        cel("!has(self.thetaRule) || self.thetaRule != 'fixed' || "
            "(has(self.stages) && self.stages.all(s, has(s.ropeTheta)))",
            "thetaRule fixed needs explicit stages, each with ropeTheta", field_path=".stages"),
    ])}

    theta_rule: ThetaRule = ThetaRule.SCALING_LAW
    """How each stage's RoPE theta is chosen: scaling-law (θ0^(ln(L/2π)/ln(L0/2π))), ntk
    (θ0·α^(d/(d−2)), α = seqLen/L0 unless ntkAlpha is set) or fixed (each stage's ropeTheta)."""
    growth_factor: int = Field(default=4, ge=2, le=64)
    """Generated stages multiply the length by this factor from originalContextLength; the last
    stage is exactly targetContextLength."""
    stage_defaults: StageDefaults = Field(default_factory=StageDefaults)
    """Settings of generated stages and defaults for fields an explicit stage leaves out."""
    stages: list[StageSpec] | None = Field(default=None, min_length=1, max_length=16)
    """Explicit stages, strictly increasing in seqLen, the last equal to targetContextLength.
    Generated from growthFactor when omitted."""


_EXTENDED = r"[a-z0-9]([-a-z0-9.]*[a-z0-9])?/[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?"


class ResourcesSpec(ApiModel):
    """Hardware of each trainer pod."""

    gpus_per_node: int = Field(default=8, ge=0, le=64)
    """GPUs per node (nvidia.com/gpu); one trainer process per GPU. 0 trains on CPU (gloo)."""
    gpu_memory_gib: float = Field(default=80, alias="gpuMemoryGiB", gt=0, le=4096)
    """Memory of one GPU in GiB; the planner rejects stages whose estimate does not fit."""
    image: str = Field(default="ghcr.io/ctxext/trainer:0.1.0", min_length=1, max_length=512)
    """Trainer container image."""
    processes_per_node: int | None = Field(default=None, ge=1, le=256)
    """Trainer processes per node; defaults to gpusPerNode, or 2 on CPU."""
    cpu: str | None = Field(default=None, max_length=32, pattern=r"^[0-9]+(\.[0-9]+)?m?$")
    """CPU request/limit of each trainer pod (Kubernetes quantity, e.g. "32")."""
    memory: str | None = Field(default=None, max_length=32, pattern=r"^[0-9]+(\.[0-9]+)?([KMGTPE]i?)?$")
    """Memory request/limit of each trainer pod (Kubernetes quantity, e.g. "900Gi")."""
    shared_memory_gib: int = Field(default=64, alias="sharedMemoryGiB", ge=1, le=4096)
    """Size of the /dev/shm memory volume (NCCL and data loaders need more than the 64 MiB default)."""
    extra_resources: dict[str, Annotated[str, Field(max_length=16, pattern=r"^[1-9][0-9]*$")]] = Field(
        default_factory=dict, max_length=16, json_schema_extra=k8s(validations=[cel(
            f"self.all(k, k.matches('^{_EXTENDED}$') && "
            "k != 'nvidia.com/gpu' && !k.startsWith('kubernetes.io/'))",
            "extraResources names are domain/name extended resources (e.g. rdma/hca); nvidia.com/gpu comes "
            "from gpusPerNode")]))
    """Extended resources each trainer pod requests (and limits to the same amount), e.g.
    {"rdma/rdma_shared_device_a": "1"} for InfiniBand through the RDMA device plugin. Names need a
    domain prefix; nvidia.com/gpu comes from gpusPerNode."""

    @field_validator("extra_resources")
    @classmethod
    def _extended(cls, value: dict[str, str]) -> dict[str, str]:
        for name in value:
            if not re.fullmatch(_EXTENDED, name) or name == "nvidia.com/gpu" or name.startswith("kubernetes.io/"):
                raise ValueError(f"{name!r} is not an extended resource name like rdma/hca (nvidia.com/gpu comes "
                                 "from gpusPerNode)")
        return value


#: Label and annotation prefixes the operator owns: an overlay may not set them.
RESERVED_PREFIXES = ("ctxext.dev/", "app.kubernetes.io/", "kueue.x-k8s.io/", "training.kubeflow.org/")
_KEY = r"([a-z0-9]([-a-z0-9.]*[a-z0-9])?/)?[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?"
_RESERVED_KEYS = cel(
    f"self.all(k, k.matches('^{_KEY}$') && " + " && ".join(f"!k.startsWith('{p}')" for p in RESERVED_PREFIXES) + ")",
    "keys are [prefix/]name and not under " + ", ".join(RESERVED_PREFIXES) + " (the operator's and Kubeflow's)")


class TrainerPodSpec(ApiModel):
    """An allow-listed overlay on the trainer pods, for what GPU clusters need: image pull secrets,
    added capabilities, a runtime class, extra labels and annotations (e.g. Multus networks)."""

    image_pull_secrets: list[Name253] = Field(default_factory=list, max_length=16,
                                              json_schema_extra=k8s(list_type="set"))
    """Secrets (names, in the job's namespace) for pulling the trainer image from a private registry."""
    capabilities: list[Literal["IPC_LOCK", "SYS_RESOURCE", "SYS_NICE"]] = Field(
        default_factory=list, max_length=3, json_schema_extra=k8s(list_type="set"))
    """Capabilities added to the trainer container (all others stay dropped): IPC_LOCK for RDMA,
    SYS_RESOURCE to raise the locked-memory limit, SYS_NICE for NUMA binding."""
    runtime_class_name: str | None = Field(default=None, max_length=253,
                                           pattern=r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$")
    """RuntimeClass of the trainer pods (e.g. "nvidia" where the NVIDIA runtime is not the default)."""
    labels: dict[str, Annotated[str, Field(max_length=63)]] = Field(
        default_factory=dict, max_length=32, json_schema_extra=k8s(validations=[_RESERVED_KEYS]))
    """Extra labels of the trainer pods (not under ctxext.dev/, app.kubernetes.io/, kueue.x-k8s.io/ or
    training.kubeflow.org/, which the operator and Kubeflow set)."""
    annotations: dict[str, Annotated[str, Field(max_length=4096)]] = Field(
        default_factory=dict, max_length=32, json_schema_extra=k8s(validations=[_RESERVED_KEYS]))
    """Extra annotations of the trainer pods, e.g. {"k8s.v1.cni.cncf.io/networks": "ib-sriov"} for
    Multus secondary networks (same reserved prefixes as labels)."""

    @field_validator("labels", "annotations")
    @classmethod
    def _keys(cls, value: dict[str, str]) -> dict[str, str]:
        for key in value:
            if not re.fullmatch(_KEY, key) or key.startswith(RESERVED_PREFIXES):
                raise ValueError(f"{key!r} is not allowed: keys are [prefix/]name and not under "
                                 f"{', '.join(RESERVED_PREFIXES)}")
        return value

    @field_validator("image_pull_secrets", "capabilities")
    @classmethod
    def _unique(cls, value: list[str]) -> list[str]:
        if len(set(value)) != len(value):
            raise ValueError("entries must be unique")
        return value


class ParallelismSpec(ApiModel):
    """How a stage is spread over the GPUs."""

    model_config = ApiModel.model_config | {"json_schema_extra": k8s(validations=[
        cel("!has(self.ringDegree) || self.sequenceParallel % self.ringDegree == 0",
            "ringDegree must divide sequenceParallel", field_path=".ringDegree"),
    ])}

    sequence_parallel: int = Field(default=1, ge=1, le=1024)
    """Sequence-parallel degree: each sequence is split over this many ranks, as Ulysses × ring
    (see ringDegree). Must divide every stage's seqLen and its number of processes."""
    ring_degree: int | None = Field(default=None, ge=1, le=1024)
    """Ring-attention ranks per sequence; DeepSpeed-Ulysses runs sequenceParallel / ringDegree ranks
    inside each. Unset = automatic: Ulysses as large as the key/value heads allow without
    replicating them (gcd of sequenceParallel and the KV heads), the rest as a zigzag ring; e.g.
    sequenceParallel 16 on 8 KV heads = Ulysses 8 × ring 2. 1 = Ulysses only."""
    zero_stage: int = Field(default=3, ge=0, le=3)
    """DeepSpeed ZeRO stage (0–3): what is sharded over ranks (3 = weights, gradients, optimizer)."""
    activation_checkpointing: bool = True
    """Recompute layer activations in the backward pass (needed for long sequences)."""
    checkpoint_layer_fraction: float | None = Field(default=None, gt=0, le=1)
    """With activationCheckpointing: the fraction of decoder layers that recompute (evenly spread;
    the others keep their activations, which saves their recomputation). Unset = automatic on GPU:
    the fewest layers whose memory estimate fits 90% of gpuMemoryGiB; all layers on CPU."""


class DataFormat(StrEnum):
    """Corpus file format."""

    AUTO = "auto"
    TEXT = "text"
    JSONL = "jsonl"
    PARQUET = "parquet"


class RetrievalTask(StrEnum):
    """Synthetic retrieval task."""

    PASSKEY = "passkey"
    NEEDLE = "needle"


class SyntheticHaystack(StrEnum):
    """What a synthetic retrieval sample hides its fact in."""

    CORPUS = "corpus"
    FILLER = "filler"
    MIXED = "mixed"


class DataSpec(ApiModel):
    """Training corpus."""

    source: str = Field(default="builtin://tiny-corpus", max_length=2048, pattern=DATA_PATTERN)
    """Corpus location: a file or directory (file:///..., pvc://<claim>/<path>, s3://...) of plain
    text, jsonl or parquet files, or builtin://tiny-corpus (small demo corpus shipped with ctxext)."""
    format: DataFormat = DataFormat.AUTO
    """File format; auto picks by file extension."""
    text_field: str = Field(default="text", min_length=1, max_length=128)
    """Field holding the document text in jsonl/parquet records."""
    seed: int = Field(default=1234, ge=0, le=2**31 - 1)
    """Seed for shuffling, augmentation and synthetic samples (training is deterministic given it)."""
    long_context_upsampling: bool = False
    """Upsample long documents and concatenate related ones to fill long sequences (Gradient-style
    augmentation of short-document corpora)."""
    synthetic_retrieval_ratio: float = Field(default=0.0, ge=0, le=1)
    """Fraction of training sequences that carry a synthetic retrieval task at a random depth."""
    synthetic_retrieval_task: RetrievalTask = RetrievalTask.PASSKEY
    """Synthetic retrieval task mixed in: passkey or needle."""
    synthetic_haystack: SyntheticHaystack = SyntheticHaystack.CORPUS
    """Haystack of the synthetic samples: corpus (the training text itself), filler (the evaluation's
    exact prompt on the classic repeated filler, "The grass is green. ..."), or mixed (half each)."""
    validation_fraction: float = Field(default=0.01, ge=0, lt=0.5)
    """Fraction of documents held out for perplexity evaluation."""


class EvalTask(StrEnum):
    """Evaluation task."""

    PASSKEY = "passkey"
    NEEDLE = "needle"
    MULTI_KEY_NIAH = "multiKeyNiah"
    MULTI_VALUE_NIAH = "multiValueNiah"
    VARIABLE_TRACKING = "variableTracking"
    PERPLEXITY = "perplexity"


class GateMetric(StrEnum):
    """Metric a gate checks."""

    PASSKEY_ACCURACY = "passkeyAccuracy"
    NEEDLE_ACCURACY = "needleAccuracy"
    MULTI_KEY_NIAH_ACCURACY = "multiKeyNiahAccuracy"
    MULTI_VALUE_NIAH_ACCURACY = "multiValueNiahAccuracy"
    VARIABLE_TRACKING_ACCURACY = "variableTrackingAccuracy"
    RETRIEVAL_ACCURACY = "retrievalAccuracy"
    """Mean accuracy over the retrieval tasks run, per length (RULER's average score)."""
    EFFECTIVE_LENGTH = "effectiveLength"
    """Longest length up to which retrievalAccuracy stays at or above evaluation.effectiveLengthThreshold."""
    PERPLEXITY = "perplexity"


class Gate(ApiModel):
    """A condition a stage's evaluation must meet before the next stage starts.

    ``effectiveLength`` is one number in tokens, not per length: its gate takes ``min``/``max`` in
    tokens, or no bound at all, meaning "effectiveLength >= atLength" (``{metric: effectiveLength}``
    = effective at the stage's own length)."""

    model_config = ApiModel.model_config | {"json_schema_extra": k8s(validations=[
        cel("has(self.min) || has(self.max) || has(self.maxIncrease) || self.metric == 'effectiveLength'",
            "a gate needs at least one of min, max, maxIncrease"),
        cel("self.metric != 'effectiveLength' || !has(self.maxIncrease)",
            "an effectiveLength gate takes min/max in tokens (or none: effectiveLength >= atLength), "
            "not maxIncrease", field_path=".maxIncrease"),
        cel("type(self.atLength) == int || self.atLength in ['stage', 'original']",
            "atLength must be a length in tokens, 'stage' or 'original'", field_path=".atLength"),
        cel("!self.metric.endsWith('Accuracy') || !has(self.min) || (self.min >= 0.0 && self.min <= 1.0)",
            "an accuracy gate's min must be between 0 and 1 (0.9 = 90%)", field_path=".min"),
        cel("!self.metric.endsWith('Accuracy') || !has(self.max) || (self.max >= 0.0 && self.max <= 1.0)",
            "an accuracy gate's max must be between 0 and 1 (0.9 = 90%)", field_path=".max"),
    ])}

    metric: GateMetric
    """Evaluation metric the gate checks."""
    at_length: int | str = Field(default="stage", json_schema_extra=k8s(int_or_string=True))
    """Length it is measured at: 'stage' (the stage's seqLen), 'original' (originalContextLength)
    or a number of tokens."""
    min: float | None = None
    """Lowest acceptable value (e.g. 0.9 for an accuracy; accuracies lie in [0, 1])."""
    max: float | None = None
    """Highest acceptable value (e.g. a perplexity ceiling)."""
    max_increase: float | None = Field(default=None, ge=0)
    """Largest acceptable relative increase over the base model at the same length (0.05 = +5%)."""


_TASKS = "(has(self.tasks) ? self.tasks : ['passkey', 'perplexity'])"


class EvaluationSpec(ApiModel):
    """Evaluation after each stage, and the gates that decide whether the curriculum goes on.

    Gates that could never be judged are refused at admission (below; lengths need the plan, so
    :func:`ctxext.decide.gate_problems` checks those in `ctxext validate` and the operator)."""

    model_config = ApiModel.model_config | {"json_schema_extra": k8s(validations=[
        cel("!has(self.gates) || size(self.gates) == 0 || !has(self.enabled) || self.enabled",
            "gates are set but evaluation is disabled, so no stage could ever pass them: enable evaluation or "
            "remove the gates", field_path=".enabled"),
        cel(f"!has(self.gates) || self.gates.all(g, g.metric in ['retrievalAccuracy', 'effectiveLength'] ? "
            f"{_TASKS}.exists(t, t != 'perplexity') : (g.metric == 'perplexity' ? 'perplexity' in {_TASKS} : "
            f"{_TASKS}.exists(t, t + 'Accuracy' == g.metric)))",
            "every gated metric needs its task in evaluation.tasks (passkeyAccuracy: passkey, needleAccuracy: "
            "needle, multiKeyNiahAccuracy: multiKeyNiah, multiValueNiahAccuracy: multiValueNiah, "
            "variableTrackingAccuracy: variableTracking, perplexity: perplexity, retrievalAccuracy and "
            "effectiveLength: any retrieval task): add the task or remove the gate", field_path=".gates"),
    ])}

    enabled: bool = True
    """Run the evaluation suite after each stage."""
    tasks: list[EvalTask] = Field(default_factory=lambda: [EvalTask.PASSKEY, EvalTask.PERPLEXITY],
                                  max_length=6)
    """Tasks to run: passkey, needle, multiKeyNiah, multiValueNiah, variableTracking, perplexity."""
    lengths: list[SeqLen] | None = Field(default=None, max_length=32)
    """Lengths to evaluate; default originalContextLength and every stage length up to the current one."""
    depths: list[Annotated[float, Field(ge=0, le=1)]] = Field(
        default_factory=lambda: [0.0, 0.25, 0.5, 0.75, 1.0], min_length=1, max_length=21)
    """Relative depths (0 = start, 1 = end) at which needles and passkeys are placed."""
    samples_per_cell: int = Field(default=5, ge=1, le=10000)
    """Samples per (task, length, depth) cell."""
    seed: int = Field(default=20240917, ge=0, le=2**31 - 1)
    """Seed of the evaluation samples; keep it apart from data.seed so tests are unseen."""
    effective_length_threshold: float = Field(default=0.85, gt=0, le=1)
    """retrievalAccuracy a length must reach to count towards effectiveLength (RULER: 0.85, about
    Llama-2-7B's score at 4K)."""
    gates: list[Gate] = Field(default_factory=list, max_length=32)
    """Conditions checked after each stage; a failed gate follows failurePolicy.onGateFailure."""


class CheckpointSpec(ApiModel):
    """Where checkpoints and stage outputs are kept (a volume shared by every stage)."""

    claim_name: str | None = Field(default=None, max_length=253, pattern=r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$")
    """PersistentVolumeClaim mounted on every trainer pod; required on a cluster."""
    mount_path: str = Field(default="/ckpt", max_length=1024, pattern=r"^/\S*$")
    """Mount path of the claim in the trainer pods."""
    interval_steps: int = Field(default=50, ge=1, le=1_000_000)
    """Save a checkpoint every this many optimizer steps (and at the end, and on SIGTERM)."""
    keep_last: int = Field(default=2, ge=1, le=100)
    """Checkpoints kept per stage; older ones are deleted after a newer one is complete."""
    termination_grace_period_seconds: int | None = Field(default=None, ge=30, le=86400)
    """terminationGracePeriodSeconds of the trainer pods: the time between SIGTERM (preemption,
    eviction, suspension) and SIGKILL, in which the trainer finishes its micro-batch and saves a
    checkpoint. Default: per stage from the planner's pessimistic step-time and checkpoint-size
    estimate (at least 120 s; 600 s when the architecture is unknown); see ``ctxext plan -o yaml``."""


class OnGateFailure(StrEnum):
    """Reaction to a failed gate."""

    FAIL = "Fail"
    RETRY = "Retry"


class OnNonFinite(StrEnum):
    """Reaction to non-finite gradients or loss spikes."""

    FAIL = "Fail"
    RETRY_WITH_LOWER_LR = "RetryWithLowerLR"


class FailurePolicySpec(ApiModel):
    """What happens when a stage fails."""

    max_retries: int = Field(default=2, ge=0, le=100)
    """Retries per stage (each a new PyTorchJob attempt resuming from the latest checkpoint)."""
    backoff_seconds: int = Field(default=60, ge=0, le=86400)
    """Wait before a retry; doubles with every further attempt."""
    on_gate_failure: OnGateFailure = OnGateFailure.FAIL
    """Fail the job, or retry the stage, when an evaluation gate is not met."""
    on_non_finite_gradients: OnNonFinite = OnNonFinite.RETRY_WITH_LOWER_LR
    """On NaN/Inf gradients or repeated loss spikes: retry with a lower learning rate, or fail."""
    learning_rate_backoff: float = Field(default=0.5, gt=0, lt=1)
    """Factor applied to the learning rate on each RetryWithLowerLR attempt."""
    max_loss_spikes: int = Field(default=3, ge=1, le=10000)
    """Loss spikes tolerated in a stage before it stops."""
    loss_spike_sigma: float = Field(default=6.0, gt=0, le=1000)
    """A loss more than this many standard deviations above its moving window is a spike."""


class Toleration(ApiModel):
    """A Kubernetes toleration for the trainer pods."""

    key: str | None = Field(default=None, max_length=316)
    """Taint key; empty with operator Exists matches every taint."""
    operator: Literal["Exists", "Equal"] | None = None
    """Exists or Equal (default Equal)."""
    value: str | None = Field(default=None, max_length=63)
    """Taint value for operator Equal."""
    effect: Literal["NoSchedule", "PreferNoSchedule", "NoExecute"] | None = None
    """Taint effect to tolerate; empty matches all."""
    toleration_seconds: int | None = None
    """How long a NoExecute taint is tolerated."""


class SchedulingSpec(ApiModel):
    """Where and with what priority the trainer pods run."""

    queue_name: str | None = Field(default=None, max_length=63, pattern=r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$")
    """Kueue LocalQueue (label kueue.x-k8s.io/queue-name on each PyTorchJob)."""
    priority_class_name: str | None = Field(default=None, max_length=253)
    """PriorityClass of the trainer pods."""
    node_selector: dict[str, str] = Field(default_factory=dict, max_length=32)
    """Node labels the trainer pods require."""
    tolerations: list[Toleration] = Field(default_factory=list, max_length=32)
    """Tolerations of the trainer pods (e.g. for GPU node taints)."""
    affinity: dict | None = Field(default=None, json_schema_extra=k8s(preserve_unknown_fields=True))
    """Kubernetes affinity of the trainer pods, as in a pod spec."""


class RunPolicySpec(ApiModel):
    """Lifecycle settings passed to each PyTorchJob's runPolicy."""

    clean_pod_policy: Literal["None", "Running", "All"] = "Running"
    """Which pods the training-operator deletes when a stage attempt's PyTorchJob finishes: Running (the
    pods still running or pending) or All (finished ones too, logs included). None is run as Running: no
    pod of a finished attempt may keep running while the next attempt resumes from the same checkpoints."""
    ttl_seconds_after_finished: int | None = Field(default=None, ge=0, le=31_536_000)
    """Delete finished PyTorchJobs after this many seconds (results are already in status)."""
    active_deadline_seconds: int | None = Field(default=None, ge=1)
    """Upper bound on one stage attempt's run time."""


class EnvVar(ApiModel):
    """An environment variable of the trainer containers (e.g. NCCL_IB_HCA, NCCL_SOCKET_IFNAME)."""

    name: str = Field(max_length=256, pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")
    """Variable name."""
    value: str = Field(default="", max_length=4096)
    """Variable value."""


class MetricsSpec(ApiModel):
    """Prometheus metrics of the trainer pods."""

    port: int = Field(default=9400, ge=1024, le=65535)
    """Port of each trainer rank's /metrics endpoint (rank r listens on port + local rank)."""
