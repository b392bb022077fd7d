"""Cross-field rules of a ContextExtensionJob spec, in Python.

These mirror the CEL ``x-kubernetes-validations`` on the models (the API server enforces those at
admission); ``ctxext validate`` and the operator enforce these, so a manifest that bypassed the
CRD (an older CRD, ``ctxext run`` without a cluster) gets the same answers.
"""

from __future__ import annotations

from ctxext.api.job import ContextExtensionJobSpec
from ctxext.theta import ThetaRule


def spec_rule_violations(spec: ContextExtensionJobSpec) -> list[tuple[str, str]]:
    """Every violated cross-field rule as ``(field path, message)``; empty when the spec is sound."""
    problems: list[tuple[str, str]] = []
    model, cur, sp = spec.model, spec.curriculum, spec.parallelism.sequence_parallel
    stages = cur.stages or []
    l0 = model.original_context_length
    if model.head_dim is not None and model.head_dim % 2:
        problems.append(("spec.model.headDim", f"headDim must be even, got {model.head_dim}"))
    if l0 is not None and spec.target_context_length <= l0:
        problems.append(("spec.targetContextLength",
                         f"targetContextLength ({spec.target_context_length}) must be greater than "
                         f"model.originalContextLength ({l0})"))
    for i in range(1, len(stages)):
        if stages[i].seq_len <= stages[i - 1].seq_len:
            problems.append((f"spec.curriculum.stages[{i}].seqLen",
                             f"stages[].seqLen must be strictly increasing: {stages[i].seq_len} follows "
                             f"{stages[i - 1].seq_len}"))
    if stages and stages[-1].seq_len != spec.target_context_length:
        problems.append((f"spec.curriculum.stages[{len(stages) - 1}].seqLen",
                         f"the last curriculum stage's seqLen ({stages[-1].seq_len}) must equal "
                         f"targetContextLength ({spec.target_context_length})"))
    if stages and l0 is not None and stages[0].seq_len <= l0:
        problems.append(("spec.curriculum.stages[0].seqLen",
                         f"the first curriculum stage's seqLen ({stages[0].seq_len}) must be greater than "
                         f"model.originalContextLength ({l0})"))
    lengths = [(f"spec.curriculum.stages[{i}]", s.seq_len, s.sequence_parallel or sp)
               for i, s in enumerate(stages)] or [("spec", spec.target_context_length, sp)]
    for path, length, degree in lengths:
        if length % degree:
            where = f"{path}.sequenceParallel" if degree != sp else "spec.parallelism.sequenceParallel"
            problems.append((where, f"the sequence-parallel degree must divide every stage's seqLen and "
                             f"targetContextLength: {degree} does not divide {length}"))
            break
    ring = spec.parallelism.ring_degree
    if ring is not None and sp % ring:
        problems.append(("spec.parallelism.ringDegree", f"ringDegree must divide sequenceParallel: {ring} does not "
                         f"divide {sp}"))
    if cur.theta_rule is ThetaRule.FIXED:
        if not stages:
            problems.append(("spec.curriculum.stages", "thetaRule fixed needs explicit stages, each with ropeTheta"))
        for i, s in enumerate(stages):
            if s.rope_theta is None:
                problems.append((f"spec.curriculum.stages[{i}].ropeTheta",
                                 "thetaRule fixed needs explicit stages, each with ropeTheta"))
    elif model.rope_theta is None and not model.source.startswith(("file://", "builtin://")):
        problems.append(("spec.model.ropeTheta", "model.ropeTheta is required unless the model is a local "
                         "file:// or builtin:// checkpoint whose config.json can be read"))
    for i, gate in enumerate(spec.evaluation.gates):
        path = f"spec.evaluation.gates[{i}]"
        effective = gate.metric == "effectiveLength"
        if gate.min is None and gate.max is None and gate.max_increase is None and not effective:
            problems.append((path, "a gate needs at least one of min, max, maxIncrease"))
        if effective and gate.max_increase is not None:
            problems.append((f"{path}.maxIncrease", "an effectiveLength gate takes min/max in tokens (or none: "
                             "effectiveLength >= atLength), not maxIncrease"))
        if isinstance(gate.at_length, str) and gate.at_length not in ("stage", "original"):
            problems.append((f"{path}.atLength", "atLength must be a length in tokens, 'stage' or 'original'"))
        for bound, value in (("min", gate.min), ("max", gate.max)):
            if gate.metric.endswith("Accuracy") and value is not None and not 0 <= value <= 1:
                problems.append((f"{path}.{bound}", f"an accuracy gate's {bound} must be between 0 and 1 "
                                 f"(0.9 = 90%), got {value:g}"))
    return problems
