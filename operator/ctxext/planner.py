"""The curriculum planner: a ContextExtensionJob spec → concrete stages. Pure; no I/O but config.json.

Stage lengths are the explicit ``curriculum.stages`` or, when omitted, generated from
``originalContextLength`` by ``growthFactor`` until the target, the last stage being exactly the
target. Example: L0 = 8192, growthFactor 4, target 1,048,576 → 32768, 131072, 524288, 1048576.
Each stage gets its RoPE theta from :mod:`ctxext.theta`, its training settings from the stage or
``curriculum.stageDefaults``, its rank layout (world = nodes · processes per node, data-parallel =
world / sequenceParallel, sequenceParallel = Ulysses × ring: :mod:`ctxext.sp_layout`),
``tokensPerStep = seqLen · batchSize · gradientAccumulation · DP``, the activation-checkpointed
layers (selective: the fewest that fit on GPU) and a memory estimate (:mod:`ctxext.memory`). A
stage whose estimate exceeds ``gpuMemoryGiB`` is an error quoting the numbers; one above
:data:`TIGHT_FRACTION` of it is a warning. So is a stage whose evaluation (the whole model on each
rank, long lengths sharded over the sequence-parallel ranks: :mod:`ctxext.eval_memory`) does not fit.
"""

from __future__ import annotations

import functools
import itertools
import math
from collections.abc import Callable
from typing import Any

from pydantic import BaseModel, ConfigDict, Field
from pydantic.alias_generators import to_camel

from ctxext.api.job import ContextExtensionJobSpec
from ctxext.api.spec import ModelArchitecture
from ctxext.api.validation import spec_rule_violations
from ctxext.errors import SpecError
from ctxext.eval_memory import EvalMemoryEstimate, peak_eval_memory
from ctxext.memory import GIB, SINGLE_RANK_ZERO_STAGE, MemoryEstimate, estimate_memory
from ctxext.model_info import ModelInfo, resolve_model_info
from ctxext.sp_layout import LayoutError, SPLayout, choose_layout, length_problem
from ctxext.step_time import StepTime, estimate_step_time, termination_grace_seconds
from ctxext.theta import RopeTypeError, ThetaError, check_rope_scalable, stage_theta

MAX_STAGES = 16
TIGHT_FRACTION = 0.9
CPU_PROCESSES_PER_NODE = 2


class _Out(BaseModel):
    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, frozen=True)


class PlannedStage(_Out):
    """One stage as the operator and the trainer run it."""

    index: int
    seq_len: int
    rope_theta: float
    ntk_alpha: float | None = None
    steps: int
    learning_rate: float
    warmup_steps: int
    lr_schedule: str
    min_learning_rate_ratio: float
    min_seq_len: int | None = None
    batch_size: int
    gradient_accumulation: int
    nodes: int
    processes_per_node: int
    gpus_per_node: int
    world_size: int
    sequence_parallel: int
    data_parallel: int
    ulysses_degree: int = 1
    """DeepSpeed-Ulysses ranks inside each ring rank (sequence_parallel = ulysses · ring)."""
    ring_degree: int = 1
    """Zigzag ring-attention ranks per sequence."""
    sequence_parallel_layout: str = "no sequence parallelism"
    """The split in words, e.g. ``SP 16 = Ulysses 8 (1 KV head per rank) x ring 2 (zigzag)``."""
    zero_stage: int
    activation_checkpointing: bool
    checkpointed_layers: int | None = None
    """Decoder layers that recompute in backward (selective checkpointing); None = all of them."""
    tokens_per_step: int
    estimated_step_seconds: float | None = None
    """Pessimistic seconds of one optimizer step (:mod:`ctxext.step_time`); None without an architecture."""
    termination_grace_period_seconds: int
    """Pod grace period between SIGTERM and SIGKILL: spec.checkpoint's, else from the step-time estimate."""
    estimated_memory_gib: float | None = Field(alias="estimatedMemoryGiB")
    memory_breakdown_gib: dict[str, float] | None = Field(default=None, alias="memoryBreakdownGiB")
    estimated_eval_memory_gib: float | None = Field(default=None, alias="estimatedEvalMemoryGiB")
    """Peak per rank of the stage's evaluation at its most demanding length (:mod:`ctxext.eval_memory`)."""


class Plan(_Out):
    """The whole curriculum."""

    original_context_length: int
    target_context_length: int
    base_rope_theta: float | None
    head_dim: int | None
    theta_rule: str
    stages: list[PlannedStage]
    warnings: list[str]

    def to_wire(self) -> dict[str, Any]:
        return self.model_dump(by_alias=True, mode="json")


def stage_lengths(original: int, target: int, growth: int) -> list[int]:
    """Generated lengths: original·growth^k below target, then target.

    >>> stage_lengths(8192, 1048576, 4)
    [32768, 131072, 524288, 1048576]
    >>> stage_lengths(128, 512, 2)
    [256, 512]
    """
    lengths, length = [], original * growth
    while length < target:
        lengths.append(length)
        length *= growth
    return [*lengths, target]


def _required(value: Any, path: str, what: str, info: ModelInfo) -> Any:
    if value is None:
        where = f" ({info.config_path} does not say)" if info.config_path else ""
        raise SpecError([(path, f"{what} is unknown{where}: set {path} or use a local model with a config.json")])
    return value


def _grace(spec: ContextExtensionJobSpec, timing: StepTime | None) -> int:
    explicit = spec.checkpoint.termination_grace_period_seconds
    return explicit if explicit is not None else termination_grace_seconds(timing)


def _estimate(arch: ModelArchitecture, layers: int | None, **kwargs: Any) -> MemoryEstimate:
    return estimate_memory(arch, checkpointed_layers=layers, **kwargs)


def checkpointed_layer_count(num_layers: int, fraction: float | None, total_gib: Callable[[int], float],
                             budget_gib: float) -> int:
    """Layers to checkpoint: ``ceil(fraction · layers)`` when set, else the fewest whose estimate
    ``total_gib(c)`` fits ``budget_gib`` (all layers when none fits; the memory check then speaks).

    >>> checkpointed_layer_count(32, 0.5, lambda c: 0.0, 10.0)
    16
    >>> checkpointed_layer_count(32, None, lambda c: 40 - c, 20.0)  # 40 GiB less 1 per recomputed layer
    20
    """
    if fraction is not None:
        return min(num_layers, math.ceil(fraction * num_layers))
    return next((c for c in range(num_layers + 1) if total_gib(c) <= budget_gib), num_layers)


def _sp_layout(s: Any, path: str, par: Any, sp: int, info: ModelInfo) -> SPLayout:
    """The stage's Ulysses × ring split (:mod:`ctxext.sp_layout`), or a :class:`SpecError` naming the field."""
    ring = (s.ring_degree if s is not None and s.ring_degree else None) or par.ring_degree
    arch = info.architecture
    heads = arch.num_attention_heads if arch else None
    try:
        return choose_layout(sp, heads, (arch.num_key_value_heads or heads) if arch else None, ring)
    except LayoutError as exc:
        if s is not None and s.ring_degree:
            field = f"{path}.ringDegree"
        elif s is not None and s.sequence_parallel:
            field = f"{path}.sequenceParallel"
        else:
            field = "spec.parallelism.ringDegree" if par.ring_degree else "spec.parallelism.sequenceParallel"
        raise SpecError([(field, str(exc))]) from None


def _check_eval_memory(spec: ContextExtensionJobSpec, arch: ModelArchitecture, i: int, l0: int, lengths: list[int],
                       sp: int, on_gpu: bool, head_dim: int | None) -> EvalMemoryEstimate | None:
    """The stage's evaluation peak per rank; a :class:`SpecError` when it exceeds ``gpuMemoryGiB`` on GPU.
    Lengths as the trainer evaluates them: ``evaluation.lengths``, else L0 and the stage lengths so far."""
    if not spec.evaluation.enabled:
        return None
    evaluated = sorted(set(spec.evaluation.lengths or [l0, *lengths[:i + 1]]))
    peak = peak_eval_memory(arch, evaluated, sequence_parallel=sp, original_length=l0, on_gpu=on_gpu,
                            head_dim=head_dim)
    if peak is not None and on_gpu and peak.total > spec.resources.gpu_memory_gib:
        how = f"sharded over sequenceParallel {sp}" if peak.sharded else "one sequence per GPU"
        field = "spec.evaluation.lengths" if spec.evaluation.lengths else "spec.parallelism.sequenceParallel"
        raise SpecError([(field, (
            f"stage {i + 1}'s evaluation at length {peak.length} ({how}) needs about {peak.total:.1f} GiB per "
            f"GPU but gpuMemoryGiB is {spec.resources.gpu_memory_gib:g} ({peak.describe()}): raise the "
            "stage's sequenceParallel, evaluate shorter lengths (spec.evaluation.lengths), or disable evaluation"))])
    return peak


def plan_curriculum(spec: ContextExtensionJobSpec, info: ModelInfo | None = None) -> Plan:
    """Plan every stage of ``spec``; raises :class:`SpecError` naming the field on any problem."""
    problems = spec_rule_violations(spec)
    if problems:
        raise SpecError(problems)
    info = info or resolve_model_info(spec.model)
    cur, par, res = spec.curriculum, spec.parallelism, spec.resources
    l0 = _required(info.original_context_length, "spec.model.originalContextLength", "the original context", info)
    if spec.target_context_length <= l0:
        raise SpecError([("spec.targetContextLength", f"targetContextLength ({spec.target_context_length}) "
                          f"must be greater than the model's original context ({l0})")])
    try:
        check_rope_scalable(info.rope_config)
    except RopeTypeError as exc:
        raise SpecError([("spec.model.source", f"{exc} ({info.config_path})")]) from None
    theta0 = info.rope_theta
    if cur.theta_rule != "fixed":
        theta0 = _required(theta0, "spec.model.ropeTheta", "the base ropeTheta", info)
    head_dim = info.head_dim
    if cur.theta_rule == "ntk":
        head_dim = _required(head_dim, "spec.model.headDim", "the head dimension", info)

    explicit = cur.stages or []
    lengths = [s.seq_len for s in explicit] or stage_lengths(l0, spec.target_context_length, cur.growth_factor)
    if len(lengths) > MAX_STAGES:
        raise SpecError([("spec.curriculum.growthFactor", f"growing {l0} to {spec.target_context_length} by "
                          f"{cur.growth_factor}x needs {len(lengths)} stages, more than {MAX_STAGES}; "
                          "raise growthFactor or list the stages")])
    on_gpu = res.gpus_per_node > 0
    per_node = res.processes_per_node or (res.gpus_per_node if on_gpu else CPU_PROCESSES_PER_NODE)
    warnings: list[str] = []
    if spec.data.source.startswith("builtin://") and on_gpu:
        warnings.append(f"spec.data.source is {spec.data.source}, a small demo corpus: set spec.data for real training")
    arch = info.architecture
    if arch is not None and arch.num_key_value_heads and arch.num_attention_heads % arch.num_key_value_heads:
        raise SpecError([("spec.model.architecture.numKeyValueHeads", f"numKeyValueHeads ({arch.num_key_value_heads}) "
                          f"must divide numAttentionHeads ({arch.num_attention_heads})")])
    if info.architecture is None:
        warnings.append("no model architecture known (spec.model.architecture or config.json): memory not estimated")

    stages: list[PlannedStage] = []
    d = cur.stage_defaults
    for i, seq_len in enumerate(lengths):
        s = explicit[i] if explicit else None
        path = f"spec.curriculum.stages[{i}]" if s else "spec.curriculum.stageDefaults"
        alpha = s.ntk_alpha if s else None
        try:
            theta = stage_theta(cur.theta_rule, base_theta=theta0 or 0.0, original_length=l0, seq_len=seq_len,
                                head_dim=head_dim or 0, override=s.rope_theta if s else None, ntk_alpha=alpha)
        except ThetaError as exc:
            raise SpecError([(f"spec.curriculum.stages[{i}].ropeTheta" if s else "spec.curriculum.thetaRule",
                              str(exc))]) from exc

        def pick(name: str, s: Any = s) -> Any:
            value = getattr(s, name) if s is not None else None
            return value if value is not None else getattr(d, name)

        nodes = pick("nodes")
        world = nodes * per_node
        sp = (s.sequence_parallel if s and s.sequence_parallel else None) or par.sequence_parallel
        layout = _sp_layout(s, path, par, sp, info)
        if world % sp:
            raise SpecError([("spec.parallelism.sequenceParallel", f"stage {i + 1} runs {world} processes "
                              f"({nodes} node(s) x {per_node}); sequence-parallel degree {sp} must divide that")])
        problem = length_problem(seq_len, layout)
        if problem:
            raise SpecError([(f"{path}.seqLen" if s else "spec.parallelism.sequenceParallel",
                              f"stage {i + 1}: {problem} ({layout.describe()})")])
        if layout.kv_heads and layout.ulysses > layout.kv_heads:
            warnings.append(f"stage {i + 1}: {layout.describe()}: K/V all-to-all traffic grows "
                            f"{layout.ulysses // layout.kv_heads}x; the automatic split (ringDegree unset) keeps "
                            "Ulysses within the KV heads")
        batch, accum = pick("batch_size"), pick("gradient_accumulation")
        estimate, timing, ckpt_layers, evaluation = None, None, None, None
        zero = min(par.zero_stage, SINGLE_RANK_ZERO_STAGE) if world == 1 else par.zero_stage
        if info.architecture is not None:
            estimate_at = functools.partial(
                _estimate, info.architecture, seq_len=seq_len, batch_size=batch, world_size=world,
                sequence_parallel=sp, zero_stage=zero, activation_checkpointing=par.activation_checkpointing,
                on_gpu=on_gpu, head_dim=info.head_dim, ring_degree=layout.ring)
            def total_at(c: int, est: Callable[[int | None], MemoryEstimate] = estimate_at) -> float:
                return est(c).total

            ckpt_layers = checkpointed_layer_count(info.architecture.num_layers, par.checkpoint_layer_fraction,
                                                   total_at, TIGHT_FRACTION * res.gpu_memory_gib)
            if not (on_gpu and par.activation_checkpointing):
                ckpt_layers = None
            estimate = estimate_at(ckpt_layers)
            total = estimate.total
            timing = estimate_step_time(
                info.architecture, seq_len=seq_len, batch_size=batch, accumulation=accum, sequence_parallel=sp,
                activation_checkpointing=par.activation_checkpointing, on_gpu=on_gpu, head_dim=info.head_dim,
                state_bytes_per_rank=(estimate.weights + estimate.optimizer) * GIB)
            if on_gpu and total > res.gpu_memory_gib:
                raise SpecError([("spec.resources.gpuMemoryGiB", (
                    f"stage {i + 1} (seqLen {seq_len}) needs about {total:.1f} GiB per GPU but gpuMemoryGiB is "
                    f"{res.gpu_memory_gib:g} (states {estimate.weights + estimate.gradients + estimate.optimizer:.1f}"
                    f", activations {estimate.activations:.1f}, logits {estimate.logits:.1f}, buffers "
                    f"{estimate.attention + estimate.buffers:.1f} GiB): use more "
                    "nodes, a higher sequenceParallel or zeroStage, or activation checkpointing"))])
            if on_gpu and total > TIGHT_FRACTION * res.gpu_memory_gib:
                warnings.append(f"stage {i + 1} (seqLen {seq_len}) is tight: about {total:.1f} of "
                                f"{res.gpu_memory_gib:g} GiB per GPU")
            evaluation = _check_eval_memory(spec, info.architecture, i, l0, lengths, sp, on_gpu, info.head_dim)
        stages.append(PlannedStage(
            index=i + 1, seq_len=seq_len, rope_theta=theta,
            ntk_alpha=(alpha if alpha is not None else seq_len / l0) if cur.theta_rule == "ntk" else None,
            steps=pick("steps"), learning_rate=pick("learning_rate"), warmup_steps=pick("warmup_steps"),
            lr_schedule=str(d.lr_schedule), min_learning_rate_ratio=d.min_learning_rate_ratio,
            min_seq_len=l0 if d.variable_length else None,
            batch_size=batch, gradient_accumulation=accum, nodes=nodes, processes_per_node=per_node,
            gpus_per_node=res.gpus_per_node, world_size=world, sequence_parallel=sp, data_parallel=world // sp,
            ulysses_degree=layout.ulysses, ring_degree=layout.ring, sequence_parallel_layout=layout.describe(),
            zero_stage=zero, activation_checkpointing=par.activation_checkpointing,
            checkpointed_layers=ckpt_layers, tokens_per_step=seq_len * batch * accum * (world // sp),
            estimated_step_seconds=round(timing.step, 3) if timing else None,
            termination_grace_period_seconds=_grace(spec, timing),
            estimated_memory_gib=round(estimate.total, 2) if estimate else None,
            memory_breakdown_gib=estimate.as_dict() if estimate else None,
            estimated_eval_memory_gib=round(evaluation.total, 2) if evaluation else None,
        ))
    for a, b in itertools.pairwise(stages):
        if b.rope_theta < a.rope_theta:
            warnings.append(f"stage {b.index} has a lower ropeTheta ({b.rope_theta:.6g}) than stage {a.index} "
                            f"({a.rope_theta:.6g})")
    plan = Plan(original_context_length=l0, target_context_length=spec.target_context_length,
                base_rope_theta=theta0, head_dim=head_dim, theta_rule=str(cur.theta_rule), stages=stages,
                warnings=warnings)
    from ctxext.decide import gate_problems  # imports this module

    gate_errors = gate_problems(spec, plan)  # a gate that could never be judged is refused before launch
    if gate_errors:
        raise SpecError(gate_errors)
    return plan
