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
    """Phase of every job this process has reconciled; keeps the ``ctxext_jobs`` gauge in step."""

    def __init__(self) -> None:
        self._phases: dict[str, str] = {}
        self._lock = threading.Lock()
        self._publish()

    def set(self, key: str, phase: str | None) -> None:
        with self._lock:
            self._phases[key] = phase or Phase.PENDING.value
            self._publish()

    def forget(self, key: str) -> None:
        with self._lock:
            self._phases.pop(key, None)
            self._publish()

    def _publish(self) -> None:
        counts = dict.fromkeys(_PHASES, 0)
        for phase in self._phases.values():
            counts[phase] = counts.get(phase, 0) + 1
        for phase, n in counts.items():
            JOBS.labels(phase=phase).set(n)


def serve(port: int) -> None:
    """Start the /metrics endpoint (0 disables it)."""
    if port:
        start_http_server(port)
