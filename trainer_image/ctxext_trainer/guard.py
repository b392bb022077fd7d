"""Gradient-health guard: stop a stage cleanly on non-finite gradients or repeated loss spikes.

Checked every optimizer step, *before* ``engine.step()``, so neither a NaN nor a spike reaches the weights:

* any non-finite gradient element → stop, ``NonFiniteGradients``, "non-finite gradients at step N";
* a loss (averaged over all ranks, before the update) more than ``lossSpikeSigma`` standard
  deviations above the mean of the last :data:`WINDOW` non-spike losses (once :data:`MIN_HISTORY`
  are known) is a spike: the train loop skips that step's update
  (:func:`ctxext_trainer.engine.step_without_update`); more than ``maxLossSpikes`` spikes → stop,
  ``LossSpikes``, again before the update. Spikes are kept out of the window.

Worked example (σ = 6): window losses 2.0, 2.1, 1.9, 2.0, 2.0 → mean 2.0, std 0.063; a loss of 2.5 is
(2.5 − 2.0) / 0.063 ≈ 7.9σ above, a spike. The std has a floor of 1% of the mean, so a perfectly
flat window does not turn every wiggle into a spike.

A stopped stage exits with :data:`ctxext_trainer.exit_codes.GUARD_STOP` and writes result.json with
status Failed and the reason; the operator decides about a retry (``onNonFiniteGradients``).
Fault injection for tests: ``CTXEXT_INJECT_NAN_AT_STEP=N`` turns step N's loss into NaN;
``CTXEXT_INJECT_LOSS_SPIKE_AT_STEPS=N,M`` multiplies the loss of steps N and M by
:data:`SPIKE_FACTOR`. Either may end in ``@A`` to fire on attempt A only (``3@1``: step 3 of the
first attempt; the retry runs clean), see :func:`injected_steps`.
"""

from __future__ import annotations

import math
import os
import statistics
from collections import deque
from dataclasses import dataclass
from typing import Any

WINDOW = 20
MIN_HISTORY = 5
STD_FLOOR = 0.01
INJECT_NAN_ENV = "CTXEXT_INJECT_NAN_AT_STEP"
INJECT_SPIKE_ENV = "CTXEXT_INJECT_LOSS_SPIKE_AT_STEPS"
SPIKE_FACTOR = 100.0


@dataclass(frozen=True)
class StopReason:
    code: str
    """One of ctxext.results.REASON_CODES."""
    message: str


def injected_steps(env: str, attempt: int) -> frozenset[int]:
    """Steps at which the fault named by environment variable ``env`` fires on this attempt.

    >>> os.environ["X_TEST_INJECT"] = "3,5@1"
    >>> sorted(injected_steps("X_TEST_INJECT", 1)), sorted(injected_steps("X_TEST_INJECT", 2))
    ([3, 5], [])
    >>> os.environ["X_TEST_INJECT"] = "4"
    >>> sorted(injected_steps("X_TEST_INJECT", 2))
    [4]
    """
    value = os.environ.get(env, "").strip()
    if not value:
        return frozenset()
    steps, _, only = value.partition("@")
    if only and int(only) != attempt:
        return frozenset()
    return frozenset(int(s) for s in steps.split(",") if s.strip())


class HealthGuard:
    """Counters and the moving loss window; :meth:`state_dict` goes into every checkpoint."""

    def __init__(self, *, sigma: float, max_spikes: int, clip: float):
        self.sigma, self.max_spikes, self.clip = sigma, max_spikes, clip
        self.window: deque[float] = deque(maxlen=WINDOW)
        self.spikes = 0
        self.nonfinite_steps = 0
        self.nonfinite_total = 0
        self.clipped_steps = 0
        self.max_grad_norm: float | None = None

    def check_gradients(self, step: int, grad_norm: float, nonfinite: int) -> StopReason | None:
        """Record one step's gradients; a reason to stop if any element is NaN/Inf."""
        if nonfinite or not math.isfinite(grad_norm):
            self.nonfinite_steps += 1
            self.nonfinite_total += max(nonfinite, 1)
            return StopReason("NonFiniteGradients", f"non-finite gradients at step {step} "
                                                    f"({max(nonfinite, 1)} NaN/Inf elements)")
        self.max_grad_norm = grad_norm if self.max_grad_norm is None else max(self.max_grad_norm, grad_norm)
        if self.clip > 0 and grad_norm > self.clip:
            self.clipped_steps += 1
        return None

    def clip_ratio(self, grad_norm: float) -> float:
        """Factor the clipping scales gradients by (1.0 = not clipped)."""
        if self.clip <= 0 or not math.isfinite(grad_norm) or grad_norm <= self.clip:
            return 1.0
        return self.clip / grad_norm

    def is_spike(self, loss: float) -> bool:
        if len(self.window) < MIN_HISTORY:
            return False
        mean = statistics.fmean(self.window)
        std = max(statistics.pstdev(self.window), STD_FLOOR * abs(mean))
        return loss > mean + self.sigma * std

    def observe_loss(self, step: int, loss: float) -> StopReason | None:
        """Record the step's (rank-averaged) loss; a reason to stop after too many spikes."""
        if not math.isfinite(loss):
            self.nonfinite_steps += 1
            return StopReason("NonFiniteGradients", f"non-finite loss at step {step}")
        if self.is_spike(loss):
            self.spikes += 1
            if self.spikes > self.max_spikes:
                return StopReason("LossSpikes", f"{self.spikes} loss spikes by step {step} (more than "
                                                f"{self.max_spikes}); last loss {loss:.4g}")
            return None
        self.window.append(loss)
        return None

    def health(self) -> dict[str, Any]:
        return {"nonFiniteSteps": self.nonfinite_steps, "lossSpikes": self.spikes,
                "maxGradNorm": self.max_grad_norm, "clippedSteps": self.clipped_steps}

    def state_dict(self) -> dict[str, Any]:
        return {"window": list(self.window), "spikes": self.spikes, "nonfinite_steps": self.nonfinite_steps,
                "nonfinite_total": self.nonfinite_total, "clipped_steps": self.clipped_steps,
                "max_grad_norm": self.max_grad_norm}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.window = deque(state.get("window", []), maxlen=WINDOW)
        self.spikes = int(state.get("spikes", 0))
        self.nonfinite_steps = int(state.get("nonfinite_steps", 0))
        self.nonfinite_total = int(state.get("nonfinite_total", 0))
        self.clipped_steps = int(state.get("clipped_steps", 0))
        self.max_grad_norm = state.get("max_grad_norm")
