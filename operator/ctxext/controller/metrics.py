"""Operator metrics (prometheus-client), served on ``CTXEXT_METRICS_PORT`` at /metrics.

Labels are bounded: phases only (no job names, steps or paths), so a cluster with thousands of
ContextExtensionJobs still exports a handful of series. Per-job numbers (loss, perplexity, step)
come from the trainer pods' own endpoints, which carry ``cej`` / ``cej_namespace`` labels.
"""

from __future__ import annotations

import platform
import threading

from prometheus_client import Counter, Gauge, Histogram, start_http_server

from ctxext import __version__
from ctxext.api.job import Phase
from ctxext.controller.observe import PRIORITY

JOBS = Gauge("ctxext_jobs", "ContextExtensionJobs seen by this operator, by phase.", ["phase"])
STAGE_TRANSITIONS = Counter("ctxext_stage_transitions_total",
                            "Curriculum stage phase transitions (Pending, Running, Succeeded, Failed).",
                            ["from", "to"])
RECONCILE_SECONDS = Histogram("ctxext_reconcile_duration_seconds", "Wall time of one reconcile pass.",
                              buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10))
STAGE_SECONDS = Histogram("ctxext_stage_duration_seconds",
                          "Wall time of a succeeded stage, first attempt start to success.",
                          buckets=(60, 300, 900, 1800, 3600, 7200, 14400, 28800, 86400, 172800, 604800))
PYTORCHJOBS_CREATED = Counter("ctxext_pytorchjobs_created_total", "PyTorchJobs created (one per stage attempt).")
TRAINJOBS_CREATED = Counter("ctxext_trainjobs_created_total",
                            "TrainJobs (Kubeflow Trainer v2) created (one per stage attempt).")
RECONCILE_ERRORS = Counter("ctxext_reconcile_errors_total",
                           "Reconcile passes that failed on an API error (each is retried with a fresh read).")
ATTEMPTS = Gauge("ctxext_stage_attempts", "The newest stage attempt of each unfinished ContextExtensionJob, by the "
                 "state of its PyTorchJob (Pending, Created, Running, Restarting, Suspended).", ["state"])
# Exported as 0 before the first failure, so that increase() (the CtxextStageFailed alert) sees the first one.
for _before in ("Pending", "Running"):
    STAGE_TRANSITIONS.labels(**{"from": _before, "to": "Failed"})
BUILD_INFO = Gauge("ctxext_build_info", "The running operator (value 1).", ["version", "python_version"])
BUILD_INFO.labels(version=__version__, python_version=platform.python_version()).set(1)

_PHASES = [p.value for p in Phase]


class PhaseTracker:
    """Phase of every job this process has reconciled; keeps the ``ctxext_jobs`` gauge in step.

    Counts are kept incrementally (O(1) per pass, not O(jobs)); a deleted job is forgotten.

    >>> t = PhaseTracker(); t.set("ns/a", "Running"); t.set("ns/b", "Running"); t.set("ns/a", "Succeeded")
    >>> t.counts["Running"], t.counts["Succeeded"]; t.forget("ns/b"); t.counts["Running"]
    (1, 1)
    0
    """

    def __init__(self, gauge: Gauge = JOBS, phases: list[str] | None = None, default: str = Phase.PENDING.value):
        self._gauge, self._default = gauge, default
        self._phases: dict[str, str] = {}
        phases = _PHASES if phases is None else phases
        self.counts: dict[str, int] = dict.fromkeys(phases, 0)
        self._lock = threading.Lock()
        for phase in phases:
            gauge.labels(phase).set(0)

    def set(self, key: str, phase: str | None) -> None:
        new = phase or self._default
        with self._lock:
            old = self._phases.get(key)
            if old == new:
                return
            self._phases[key] = new
            self._move(old, new)

    def forget(self, key: str) -> None:
        with self._lock:
            old = self._phases.pop(key, None)
            if old is not None:
                self._move(old, None)

    def _move(self, old: str | None, new: str | None) -> None:
        for phase, step in ((old, -1), (new, 1)):
            if phase is not None:
                self.counts[phase] = self.counts.get(phase, 0) + step
                self._gauge.labels(phase).set(self.counts[phase])


#: States of a stage attempt that has not finished (``ctxext_stage_attempts``).
ATTEMPT_STATES = ["Pending", *(s for s in reversed(PRIORITY) if s not in ("Succeeded", "Failed"))]


for _state in ATTEMPT_STATES:  # all 0 from the start: the series exist before the first job
    ATTEMPTS.labels(_state).set(0)


def attempt_tracker() -> PhaseTracker:
    """Counts the newest unfinished attempt of each job by its PyTorchJob's state (``ctxext_stage_attempts``)."""
    return PhaseTracker(ATTEMPTS, ATTEMPT_STATES)


def serve(port: int) -> None:
    """Start the /metrics endpoint (0 disables it)."""
    if port:
        start_http_server(port)
