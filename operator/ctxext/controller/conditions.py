"""Standard Kubernetes conditions on status.conditions, and the plain-words messages. Pure."""

from __future__ import annotations

from typing import Any

READY, PROGRESSING, DEGRADED, FAILED, INVALID_SPEC = "Ready", "Progressing", "Degraded", "Failed", "InvalidSpec"
ALL = (READY, PROGRESSING, DEGRADED, FAILED, INVALID_SPEC)


class Conditions:
    """status.conditions keyed by type; ``set`` keeps lastTransitionTime while the status stays."""

    def __init__(self, current: list[dict[str, Any]] | None, *, now: str, generation: int | None):
        self._now, self._generation = now, generation
        self._by_type: dict[str, dict[str, Any]] = {c["type"]: dict(c) for c in current or [] if "type" in c}

    def set(self, kind: str, status: bool, reason: str, message: str) -> bool:
        """Set a condition; True when its status changed (a transition worth an event)."""
        value = "True" if status else "False"
        old = self._by_type.get(kind)
        changed = old is None or old.get("status") != value
        cond = {"type": kind, "status": value, "reason": reason, "message": message,
                "lastTransitionTime": self._now if changed or not old else old.get("lastTransitionTime", self._now)}
        if self._generation is not None:
            cond["observedGeneration"] = self._generation
        self._by_type[kind] = cond
        return changed

    def get(self, kind: str) -> dict[str, Any] | None:
        return self._by_type.get(kind)

    def is_true(self, kind: str) -> bool:
        return (self._by_type.get(kind) or {}).get("status") == "True"

    def to_list(self) -> list[dict[str, Any]]:
        order = {k: i for i, k in enumerate(ALL)}
        return sorted(self._by_type.values(), key=lambda c: order.get(c["type"], len(order)))


def describe_reason(result: dict[str, Any] | None, fallback: str | None) -> str:
    """The failure reason in plain words, from the stage result or the PyTorchJob condition."""
    if result and result.get("reason"):
        return str(result["reason"])
    if result and result.get("reasonCode"):
        return str(result["reasonCode"])
    return fallback or "the PyTorchJob failed without a reason"


def checkpoint_step(result: dict[str, Any] | None) -> int | None:
    """Step of the latest checkpoint named in a result (``.../checkpoints/step-100`` → 100).

    >>> checkpoint_step({"checkpoint": "/ckpt/ns/j/stage-2/checkpoints/step-100"})
    100
    """
    path = str((result or {}).get("checkpoint") or "")
    tail = path.rstrip("/").rsplit("/", 1)[-1]
    digits = tail.removeprefix("step-").removeprefix("step_")
    return int(digits) if digits.isdigit() else None


def retry_message(stage: str, attempt: int, reason: str, result: dict[str, Any] | None, delay: float,
                  learning_rate: float | None) -> str:
    """``stage 2/4 attempt 2 failed: non-finite gradients at step 113; retrying from checkpoint step 100 in 60 s``."""
    step = checkpoint_step(result)
    start = f"from checkpoint step {step}" if step else "from the latest checkpoint"
    lr = f" with learning rate {learning_rate:g}" if learning_rate is not None else ""
    return f"stage {stage} attempt {attempt} failed: {reason}; retrying {start}{lr} in {delay:g} s"
