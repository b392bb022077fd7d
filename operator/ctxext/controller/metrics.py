"""Operator metrics (prometheus-client), served on ``CTXEXT_METRICS_PORT`` at /metrics.

Labels are bounded: phases only (no job names, steps or paths), so a cluster with thousands of
ContextExtensionJobs still exports a handful of series. Per-job numbers (loss, perplexity, step)
come from the trainer pods' own endpoints, which carry ``cej`` / ``cej_namespace`` labels.
"""

from __future__ import annotations

import threading

from prometheus_client import Counter, Gauge, Histogram, start_http_server

from ctxext.api.job import Phase

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

_PHASES = [p.value for p in Phase]


class PhaseTracker:
    """Phase of every job this process has reconciled; keeps the ``ctxext_jobs`` gauge in step.

    Counts are kept incrementally (O(1) per pass, not O(jobs)); a deleted job is forgotten.

    >>> t = PhaseTracker(); t.set("ns/a", "Running"); t.set("ns/b", "Running"); t.set("ns/a", "Succeeded")
    >>> t.counts["Running"], t.counts["Succeeded"]; t.forget("ns/b"); t.counts["Running"]
    (1, 1)
    0
    """

    def __init__(self) -> None:
        self._phases: dict[str, str] = {}
        self.counts: dict[str, int] = dict.fromkeys(_PHASES, 0)
        self._lock = threading.Lock()
        for phase in _PHASES:
            JOBS.labels(phase=phase).set(0)

    def set(self, key: str, phase: str | None) -> None:
        new = phase or Phase.PENDING.value
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
                JOBS.labels(phase=phase).set(self.counts[phase])


def serve(port: int) -> None:
    """Start the /metrics endpoint (0 disables it)."""
    if port:
        start_http_server(port)
