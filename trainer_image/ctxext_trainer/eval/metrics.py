"""Prometheus gauges of an evaluation.

``ctxext_eval_accuracy{task, length, depth}`` (one series per heatmap cell) and
``ctxext_eval_perplexity{length}``, both also labelled ``cej``, ``cej_namespace`` and ``stage``
(empty when unknown, e.g. in ``ctxext eval``); not ``job``/``namespace``, which Prometheus renames::

    ctxext_eval_accuracy{cej="tiny",cej_namespace="default",depth="0.5",length="512",stage="2",task="passkey"} 0.8
    ctxext_eval_perplexity{cej="tiny",cej_namespace="default",length="512",stage="2"} 3.35

The gauges live in the registry given (the trainer's, so its /metrics endpoint serves them), by
default prometheus_client's global one; they are created once per registry.
"""

from __future__ import annotations

import weakref
from collections.abc import Mapping

from prometheus_client import REGISTRY, CollectorRegistry, Gauge

JOB_LABELS = ("cej", "cej_namespace", "stage")
_GAUGES: weakref.WeakKeyDictionary[CollectorRegistry, tuple[Gauge, Gauge]] = weakref.WeakKeyDictionary()


def _gauges(registry: CollectorRegistry) -> tuple[Gauge, Gauge]:
    if registry not in _GAUGES:
        _GAUGES[registry] = (
            Gauge("ctxext_eval_accuracy", "Retrieval accuracy of a (task, length, depth) cell (0..1)",
                  ("task", "length", "depth", *JOB_LABELS), registry=registry),
            Gauge("ctxext_eval_perplexity", "Perplexity on held-out packed text at a length",
                  ("length", *JOB_LABELS), registry=registry),
        )
    return _GAUGES[registry]


def publish(grids: Mapping[str, Mapping[int, Mapping[float, float]]], perplexity: Mapping[int, float], *,
            labels: Mapping[str, str] | None = None, registry: CollectorRegistry | None = None) -> None:
    """Set the gauges from the task grids (task → length → depth → accuracy) and perplexities."""
    accuracy, ppl = _gauges(registry if registry is not None else REGISTRY)
    job = {k: str((labels or {}).get(k, "")) for k in JOB_LABELS}
    for task, grid in grids.items():
        for length, row in grid.items():
            for depth, value in row.items():
                accuracy.labels(task=task, length=str(length), depth=f"{depth:g}", **job).set(value)
    for length, value in perplexity.items():
        ppl.labels(length=str(length), **job).set(value)
