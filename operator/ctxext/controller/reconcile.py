"""The reconciler: (spec, plan, status, observed training jobs, now) → :class:`Decision`. Pure.

Level-based: every pass looks at the whole picture and says what the status should be and which
training jobs (PyTorchJobs or TrainJobs) must exist; running it twice on the same inputs asks for the same (idempotent)
creations, which the caller turns into a no-op through the deterministic names (409 → adopt).
The stage state machine itself is in :mod:`ctxext.controller.stages`.

Phases: Running (a stage attempt exists or waits for its backoff), Suspended (``spec.suspend``),
Succeeded (every stage passed; ``finalModelPath`` set), Failed (a stage ran out of retries, a gate
failed with ``onGateFailure: Fail``, or the planner rejected the spec before anything ran:
condition ``InvalidSpec`` names the field).
"""

from __future__ import annotations

from typing import Any

from ctxext.api.base import API_VERSION, KIND
from ctxext.api.job import ContextExtensionJob, ContextExtensionJobSpec
from ctxext.controller.backends.choice import API_MISSING, RUNTIME_MISSING
from ctxext.controller.identity import TRAINER_IDENTITY_MISSING
from ctxext.controller.model import (
    DEGRADED,
    FAILED,
    INVALID_SPEC,
    OPERATOR_FIELDS,
    PROGRESSING,
    READY,
    Conditions,
    Decision,
    Event,
    Inputs,
)
from ctxext.controller.observe import format_time
from ctxext.controller.paths import stage_output_dir
from ctxext.controller.stages import ADVANCE, StagePass
from ctxext.decide import baseline_lengths, baseline_needed
from ctxext.errors import SpecError
from ctxext.manifest import job_from_object
from ctxext.planner import Plan, plan_curriculum

#: Failures before any stage ran that a later pass lifts once they are mended (the spec fixed, the
#: trainer identity created): the job then starts as if it had just been created.
RECOVERABLE = ("InvalidSpec", TRAINER_IDENTITY_MISSING, API_MISSING, RUNTIME_MISSING)
NO_CLAIM_WARNING = ("spec.checkpoint.claimName is not set: checkpoints live in an emptyDir, which only works "
                    "with the local executor; set a PersistentVolumeClaim on a cluster")


def initial_baseline(spec: ContextExtensionJobSpec, plan: Plan) -> dict[str, Any]:
    """status.baseline before the base model's evaluation job (``<cej>-s0-a<n>``) ran: index 0."""
    return {"index": 0, "seqLen": max(baseline_lengths(spec, plan)), "ropeTheta": plan.base_rope_theta or 0.0,
            "steps": 0, "phase": "Pending", "attempts": 0}


def initial_stages(plan: Plan) -> list[dict[str, Any]]:
    """status.stages before anything ran."""
    return [{"index": s.index, "seqLen": s.seq_len, "ropeTheta": s.rope_theta, "steps": s.steps,
             "phase": "Pending", "attempts": 0, "learningRate": s.learning_rate} for s in plan.stages]


def result_warnings(status: dict[str, Any]) -> list[str]:
    """Warnings the trainer put in its stage results (a damaged checkpoint skipped, ...), per attempt.

    >>> result_warnings({"results": {"j-s1-a2": {"warnings": ["checkpoint step-4 is unusable"]}}})
    ['j-s1-a2: checkpoint step-4 is unusable']
    """
    out: list[str] = []
    results = status.get("results")
    for job, result in sorted(results.items() if isinstance(results, dict) else []):
        warnings = result.get("warnings") if isinstance(result, dict) else None
        if isinstance(warnings, list):
            out.extend(f"{job}: {w}" for w in warnings if isinstance(w, str))
    return out


def _metrics_source(status: dict[str, Any], stages: list[dict[str, Any]]) -> dict[str, Any]:
    """Where status.loss / status.perplexity come from: the trainer's live progress, else the last result."""
    progress = status.get("progress") or {}
    if progress.get("loss") is not None:
        return progress
    for s in reversed(stages):
        result = s.get("result") or {}
        if result.get("finalLoss") is not None:
            return {"loss": result.get("finalLoss"), "perplexity": result.get("perplexity")}
    return {}


def _summary(out: dict[str, Any], status: dict[str, Any], stages: list[dict[str, Any]],
             current: dict[str, Any] | None) -> None:
    shown = current or (stages[-1] if stages else None)
    if shown:
        out.update(stage=f"{shown['index']}/{len(stages)}", currentStage=shown["index"], seqLen=shown["seqLen"],
                   ropeTheta=shown["ropeTheta"])
    source = _metrics_source(status, stages)
    out.update(loss=source.get("loss"), perplexity=source.get("perplexity"),
               effectiveLength=_effective_length(stages))


def _effective_length(stages: list[dict[str, Any]]) -> int | None:
    """effectiveLength of the latest stage whose result has one (None before any evaluation).

    >>> _effective_length([{"result": {"evaluation": {"effectiveLength": 512}}}, {"result": None}])
    512
    """
    for s in reversed(stages):
        value = ((s.get("result") or {}).get("evaluation") or {}).get("effectiveLength")
        if isinstance(value, int | float) and not isinstance(value, bool):
            return int(value)
    return None


def _invalid(inp: Inputs, d: Decision, conds: Conditions, out: dict[str, Any], started: bool) -> bool:
    """Record a spec the planner rejects; True when there is nothing more to do."""
    message = str(inp.spec_error)
    if conds.set(INVALID_SPEC, True, "InvalidSpec", message):
        d.events.append(Event("Warning", "InvalidSpec", message))
    if started:  # a stage already ran: keep watching it, start nothing new
        return False
    out["phase"] = "Failed"
    conds.set(FAILED, True, "InvalidSpec", message)
    conds.set(READY, False, "InvalidSpec", "the spec cannot run; fix the field named in the InvalidSpec condition")
    conds.set(PROGRESSING, False, "InvalidSpec", message)
    return True


def reconcile(inp: Inputs) -> Decision:
    """One reconcile pass; see the module docstring."""
    d = Decision()
    status = inp.status or {}
    out: dict[str, Any] = {k: status.get(k) for k in OPERATOR_FIELDS}
    stages = [dict(s) for s in status.get("stages") or []]
    started = any(int(s.get("attempts") or 0) > 0 for s in stages)
    invalid_failure = recoverable_failure(status)
    terminal = status.get("phase") in ("Succeeded", "Failed") and not invalid_failure
    if terminal and status.get("conditions"):  # finished for good: an edit changes nothing, so nothing is observed
        d.status = out
        return d
    conds = Conditions(status.get("conditions"), now=format_time(inp.now), generation=inp.generation)
    out["observedGeneration"] = inp.generation
    old_phase = status.get("phase")

    if inp.plan is None:
        if _invalid(inp, d, conds, out, started or terminal) or inp.spec is None:
            if started and inp.spec is None:  # edited mid-run into a spec that does not even parse
                conds.set(PROGRESSING, False, "InvalidSpec",
                          f"nothing new starts until the spec is fixed: {inp.spec_error}")
            out["conditions"] = conds.to_list()
            d.status = out
            return d
    elif inp.spec is not None:
        conds.set(INVALID_SPEC, False, "SpecValid", f"the spec plans into {len(inp.plan.stages)} stages")
        warnings = list(inp.plan.warnings) + ([] if inp.spec.checkpoint.claim_name else [NO_CLAIM_WARNING]) \
            + result_warnings(status)
        out["warnings"] = warnings or None
        stages = stages or initial_stages(inp.plan)
    if terminal or not stages or inp.spec is None:
        _summary(out, status, stages, None)
        out["conditions"] = conds.to_list()
        d.status = out
        return d

    if inp.blocked is not None and not started and not terminal:
        reason, message = inp.blocked
        out.update(phase="Failed", stages=stages)
        for kind, value in ((FAILED, True), (READY, False), (PROGRESSING, False)):
            if conds.set(kind, value, reason, message) and kind == FAILED:
                d.events.append(Event("Warning", reason, message))
        out["conditions"] = conds.to_list()
        d.status = out
        return d
    sp = StagePass(inp, inp.spec, d, len(stages))
    current: dict[str, Any] | None = None
    if inp.plan is not None and (status.get("baseline") or baseline_needed(inp.spec)):
        # The base model is evaluated once, before stage 1, by its own job; recorded, it is never re-run.
        sp.baseline = out["baseline"] = dict(status.get("baseline") or initial_baseline(inp.spec, inp.plan))
        if sp.baseline.get("phase") != "Succeeded" and sp.step(sp.baseline) != ADVANCE:
            current = sp.baseline
    for s in stages if current is None else []:
        if s.get("phase") == "Succeeded":
            continue
        current = s
        if sp.step(s) != ADVANCE:
            break
        current = None
    out["stages"] = stages
    _summary(out, status, stages, current)
    n = len(stages)
    if sp.failure:
        reason, message = sp.failure
        out["phase"] = "Failed"
        conds.set(FAILED, True, reason, message)
        conds.set(READY, False, reason, message)
        conds.set(PROGRESSING, False, reason, message)
        conds.set(DEGRADED, True, reason, message)
    elif current is None:
        last = stages[-1]
        model = (last.get("result") or {}).get("modelPath") or (
            stage_output_dir(inp.spec, inp.namespace, inp.name, last["index"]) + "/model")
        out.update(phase="Succeeded", finalModelPath=model)
        message = f"all {n} stages succeeded; final model at {model}"
        conds.set(READY, True, "Succeeded", message)
        conds.set(PROGRESSING, False, "Succeeded", message)
        conds.set(DEGRADED, False, "Succeeded", message)
        conds.set(FAILED, False, "Succeeded", message)
    else:
        label = "the baseline evaluation" if current["index"] == 0 else f"stage {current['index']}/{n}"
        if inp.spec.suspend:
            out["phase"] = "Suspended"
            conds.set(PROGRESSING, False, "Suspended", f"suspended by spec.suspend at {label}")
            conds.set(READY, False, "Suspended", f"suspended by spec.suspend at {label}")
        elif sp.queued:
            out["phase"] = "Queued"
            conds.set(PROGRESSING, False, "Queued", sp.queued)
            conds.set(READY, False, "Queued", sp.queued)
        elif inp.plan is None and not sp.active:  # edited into an invalid spec while between attempts
            out["phase"] = "Running"
            conds.set(PROGRESSING, False, "InvalidSpec",
                      f"{label} cannot start: the spec is invalid (see the InvalidSpec condition): {inp.spec_error}")
            conds.set(READY, False, "InvalidSpec", f"{label} waits for a valid spec" if current["index"] == 0
                      else f"{label} of {n} waits for a valid spec")
        else:
            out["phase"] = "Running"
            message = current.get("message") or f"{label} running"
            if inp.plan is None:
                message += ("; the spec is now invalid (see the InvalidSpec condition): "
                            "nothing new starts until it is fixed")
            conds.set(PROGRESSING, True, "StageRunning", message)
            conds.set(READY, False, "InProgress", f"{label} in progress, before stage 1 of {n}" if current["index"] == 0
                      else f"{label} of {n} in progress")
        conds.set(DEGRADED, sp.degraded is not None, sp.degraded_reason if sp.degraded else "AsExpected",
                  sp.degraded or "no failed attempts in the current stage")
        conds.set(FAILED, False, "AsExpected", "no stage has failed for good")
    if out["phase"] != old_phase:
        kind = "Warning" if out["phase"] == "Failed" else "Normal"
        text = sp.failure[1] if sp.failure else str((conds.get(READY) or {}).get("message", ""))
        d.events.append(Event(kind, str(out["phase"]), text))
    if inp.backend and (d.creates or started):  # recorded with the first job: a choice nothing ran on is made again
        out["backend"] = inp.backend
    out["conditions"] = conds.to_list()
    d.status = out
    return d


#: The failures of :data:`RECOVERABLE` that the cluster mends, not an edit (which is a watch event itself):
#: only jobs failed with these are resynced.
MENDED_BY_THE_CLUSTER = (TRAINER_IDENTITY_MISSING, API_MISSING, RUNTIME_MISSING)


def waits_on_the_cluster(status: dict[str, Any]) -> bool:
    """True for a job that failed before it started for want of a CRD, a runtime or the trainer identity.

    >>> waits_on_the_cluster({"phase": "Failed", "conditions": [{"type": "Failed", "status": "True",
    ...                       "reason": "InvalidSpec"}]})
    False
    """
    return recoverable_failure(status) and (_condition(status, FAILED) or {}).get("reason") in MENDED_BY_THE_CLUSTER


def recoverable_failure(status: dict[str, Any]) -> bool:
    """True for a job Failed before any stage ran by something a later pass lifts once mended
    (:data:`RECOVERABLE`): it is still reconciled, and resynced, while it waits.

    >>> recoverable_failure({"phase": "Failed", "conditions": [{"type": "Failed", "status": "True",
    ...                      "reason": "TrainingApiMissing"}], "stages": [{"attempts": 0}]})
    True
    """
    started = any(int(s.get("attempts") or 0) > 0 for s in status.get("stages") or [] if isinstance(s, dict))
    return ((_condition(status, FAILED) or {}).get("reason") in RECOVERABLE) and not started


def _condition(status: dict[str, Any], kind: str) -> dict[str, Any] | None:
    return next((c for c in status.get("conditions") or [] if isinstance(c, dict) and c.get("type") == kind), None)


def parse_and_plan(obj: dict[str, Any]) -> tuple[ContextExtensionJob | None, Plan | None, SpecError | None]:
    """The job's spec and plan, or the SpecError that says which field is wrong. Never raises for a bad spec."""
    wire = {"apiVersion": API_VERSION, "kind": KIND, "metadata": obj.get("metadata") or {}, "spec": obj.get("spec")}
    try:
        job = job_from_object(wire)
    except SpecError as exc:
        return None, None, exc
    try:
        return job, plan_curriculum(job.spec), None
    except SpecError as exc:
        return job, None, exc
    except (ValueError, OSError) as exc:  # anything else the planner trips on is still about the spec
        return job, None, SpecError([("spec", str(exc))])
