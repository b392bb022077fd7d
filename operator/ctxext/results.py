"""The stage result: what trainer rank 0 writes to ``<outputDir>/result.json`` at the end of a stage
attempt (and patches into ``status.results[<pytorchjob>]``), and what the operator, the gates and
``ctxext run`` read. No torch here.

Example (abridged)::

    {"status": "Succeeded", "reason": null, "reasonCode": null, "jobName": "tiny-s2-a1", "stage": 2,
     "attempt": 1, "seqLen": 512, "ropeTheta": 691374.2, "learningRate": 0.001, "stepsDone": 400,
     "totalSteps": 400, "resumedFromStep": 0, "finalLoss": 1.21, "perplexity": 3.35,
     "tokensPerSecond": 5400.0, "wallSeconds": 88.1,
     "health": {"nonFiniteSteps": 0, "lossSpikes": 0, "maxGradNorm": 2.1, "clippedSteps": 3},
     "checkpoint": "/ckpt/ns/tiny/stage-2/checkpoints/step-400", "modelPath": "/ckpt/ns/tiny/stage-2/model",
     "evaluation": {"passkeyAccuracy": {"128": 1.0, "256": 0.97, "512": 0.93},
                    "perplexity": {"128": 3.1, "256": 3.0, "512": 2.9},
                    "positionLoss": [{"from": 0, "to": 128, "loss": 1.2}, {"from": 128, "to": 256, "loss": 1.1}],
                    "plots": ["/ckpt/.../eval/passkey_heatmap.png"]},
     "baseline": {"perplexity": {"128": 3.0}},
     "gates": [{"metric": "passkeyAccuracy", "atLength": 512, "passed": true, "value": 0.93,
                "message": "passkeyAccuracy at 512 = 0.930 >= min 0.9"}]}

``evaluation`` maps each metric (the names of :class:`ctxext.api.spec.GateMetric`) to
``{"<length>": value}`` with string keys. ``baseline`` holds the same for the base model (evaluated
once before stage 1, see :mod:`ctxext.decide`; `ctxext run` copies it here, the operator keeps it in
``status.baseline``). ``reasonCode`` is one of :data:`REASON_CODES`.

On a cluster the entry in ``status.results`` also carries ``signature``: HMAC-SHA256 of the entry under
the attempt's secret (:func:`sign`). Every trainer may patch the status of every job in its namespace,
so the operator believes an entry only when it verifies against the key of the PyTorchJob it names
(:func:`trusted_results`).
"""

from __future__ import annotations

import hashlib
import hmac
import json
from pathlib import Path
from typing import Any, Literal

from pydantic import ConfigDict, Field

from ctxext.api.base import ApiModel

RESULT_FILE = "result.json"
REASON_CODES = ("NonFiniteGradients", "LossSpikes", "GateFailed", "Preempted", "UnsupportedModel", "WorldSizeChanged",
                "EvaluationOutOfMemory", "Error")
#: Failures no retry can mend (the base model itself cannot be extended; the stage's checkpoint was written
#: by another number of processes; evaluation at the spec's lengths does not fit): the operator fails the job
#: at once.
PERMANENT_REASON_CODES = ("UnsupportedModel", "WorldSizeChanged", "EvaluationOutOfMemory")


class Health(ApiModel):
    """Gradient-health counters of the attempt."""

    model_config = ApiModel.model_config | ConfigDict(extra="allow")

    non_finite_steps: int = 0
    """Steps whose gradients held NaN/Inf."""
    loss_spikes: int = 0
    """Loss spikes detected."""
    max_grad_norm: float | None = None
    """Largest global gradient norm seen."""
    clipped_steps: int = 0
    """Steps whose gradients were clipped."""


class StageResult(ApiModel):
    """result.json of one stage attempt."""

    model_config = ApiModel.model_config | ConfigDict(extra="allow")

    status: Literal["Succeeded", "Failed"]
    """Succeeded or Failed."""
    reason: str | None = None
    """Why it failed, in plain words (e.g. "non-finite gradients at step 113")."""
    reason_code: str | None = None
    """Machine-readable reason (one of REASON_CODES)."""
    job_name: str | None = None
    """PyTorchJob (attempt) name."""
    stage: int | None = None
    """1-based stage number."""
    attempt: int | None = None
    """1-based attempt."""
    seq_len: int | None = None
    """Training sequence length."""
    rope_theta: float | None = None
    """RoPE theta trained with."""
    learning_rate: float | None = None
    """Peak learning rate of the attempt."""
    steps_done: int = 0
    """Optimizer steps completed (including those before a resume)."""
    total_steps: int | None = None
    """Steps planned."""
    resumed_from_step: int | None = None
    """Checkpoint step the attempt resumed from (0 = fresh)."""
    final_loss: float | None = None
    """Training loss at the last step, averaged over ranks."""
    perplexity: float | None = None
    """exp(finalLoss)."""
    tokens_per_second: float | None = None
    """Mean throughput over all ranks."""
    wall_seconds: float | None = None
    """Wall time of the attempt."""
    health: Health = Field(default_factory=Health)
    """Gradient-health counters."""
    checkpoint: str | None = None
    """Latest complete checkpoint directory."""
    model_path: str | None = None
    """Final Hugging Face model directory (safetensors) of the stage."""
    evaluation: dict[str, Any] = Field(default_factory=dict)
    """Metric → {"<length>": value}, plus positionLoss and plots."""
    baseline: dict[str, Any] | None = None
    """Evaluation of the base model that ``maxIncrease`` gates were judged against (`ctxext run`)."""
    gates: list[dict[str, Any]] = Field(default_factory=list)
    """Gate outcomes (metric, atLength, passed, value, message)."""
    runtime: dict[str, Any] = Field(default_factory=dict)
    """How the stage actually ran: attention kernel, sequence-parallel layout, ZeRO stage in effect,
    activation checkpointing, loss kernel (e.g. ``{"attention": "sdpa", "zeroStage": 0, ...}``)."""
    warnings: list[str] = Field(default_factory=list)
    """What went wrong but was survived (e.g. a damaged checkpoint skipped on resume); the operator
    copies them into status.warnings."""


def read_result(output_dir: str | Path) -> StageResult | None:
    """The result.json in a stage directory, or None if the attempt wrote none (yet)."""
    path = Path(output_dir) / RESULT_FILE
    try:
        return StageResult.model_validate(json.loads(path.read_text()))
    except FileNotFoundError:
        return None


def write_result(output_dir: str | Path, result: StageResult) -> Path:
    """Write result.json atomically (temporary file, then rename)."""
    path = Path(output_dir) / RESULT_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(result.to_wire(), indent=2, sort_keys=True))
    tmp.replace(path)
    return path


SIGNATURE = "signature"


def _canonical(value: Any) -> Any:
    """The value as it reads back from the API server: a merge patch drops null members, and numbers
    without a fraction come back as integers (2.0 → 2)."""
    if isinstance(value, dict):
        return {k: _canonical(v) for k, v in value.items() if v is not None and k != SIGNATURE}
    if isinstance(value, list):
        return [_canonical(v) for v in value]
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


def sign(result: dict[str, Any], key: str) -> str:
    """HMAC-SHA256 (hex) of a result entry under the attempt's key; the same after an API round trip.

    >>> sign({"status": "Succeeded", "finalLoss": 2.0, "reason": None}, "k") == sign({"status": "Succeeded",
    ...                                                                              "finalLoss": 2}, "k")
    True
    """
    body = json.dumps(_canonical(result), sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hmac.new(key.encode(), body.encode(), hashlib.sha256).hexdigest()


def verify(result: Any, key: str, job_name: str) -> bool:
    """True when ``result`` is the entry of attempt ``job_name`` signed with its key.

    >>> entry = {"status": "Succeeded", "jobName": "a-s1-a1"}
    >>> entry["signature"] = sign(entry, "k")
    >>> verify(entry, "k", "a-s1-a1"), verify({**entry, "status": "Failed"}, "k", "a-s1-a1")
    (True, False)
    >>> verify(entry, "x", "a-s1-a1"), verify(entry, "k", "b-s1-a1")
    (False, False)
    """
    if not isinstance(result, dict) or result.get("jobName") not in (None, job_name):
        return False
    signature = result.get(SIGNATURE)
    return isinstance(signature, str) and hmac.compare_digest(signature, sign(result, key))


def trusted_results(results: dict[str, Any], keys: dict[str, str | None]) -> dict[str, Any]:
    """``status.results`` without the entries whose PyTorchJob has a key they do not verify against.

    ``keys`` maps each existing PyTorchJob of the job to its ``ctxext.dev/result-key`` annotation (None
    for jobs created without one). Entries of PyTorchJobs that no longer exist are kept: their outcome
    was acted on while the job existed.

    >>> good = {"status": "Succeeded"}; good["signature"] = sign(good, "k1")
    >>> sorted(trusted_results({"a-s1-a1": good, "a-s1-a2": {"status": "Succeeded"}},
    ...                        {"a-s1-a1": "k1", "a-s1-a2": "k2"}))
    ['a-s1-a1']
    """
    return {name: entry for name, entry in results.items()
            if not keys.get(name) or verify(entry, str(keys[name]), name)}
