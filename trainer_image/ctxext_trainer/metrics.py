"""Prometheus metrics of one trainer rank, served on ``metrics_port + local_rank`` (0 disables).

Job-wide values (loss, step, throughput, gradient health, stage facts, evaluation) are the same on
every rank, so only global rank 0 exports them (labels ``cej``, ``cej_namespace``, ``stage``); every
rank exports what is its own: ``ctxext_memory_bytes{rank, kind}``. ``cej``/``cej_namespace`` name the
ContextExtensionJob (Prometheus would rename exported ``job`` / ``namespace`` labels to ``exported_*``).
``ctxext_stage_info`` (value 1) adds ``seq_len``, ``rope_theta`` and ``total_stages`` ("stage i of N").
Counters end in ``_total`` (``rate()`` them): tokens trained, non-finite gradients, loss spikes. Loss
and perplexity are the token-weighted mean over all data- and sequence-parallel ranks.

Example scrape of rank 0 (abridged)::

    ctxext_train_loss{cej="tiny",cej_namespace="default",stage="2"} 2.31
    ctxext_train_tokens_total{cej="tiny",cej_namespace="default",stage="2"} 524288.0
    ctxext_stage_info{cej="tiny",cej_namespace="default",rope_theta="691374.2",seq_len="512",stage="2",\
                      total_stages="2"} 1.0
    ctxext_memory_bytes{cej="tiny",cej_namespace="default",kind="max_rss",rank="0",stage="2"} 1.2e+09
"""

from __future__ import annotations

import logging
import math
import resource
import sys
import time
from typing import Any

import torch
from prometheus_client import CollectorRegistry, Counter, Gauge, start_http_server

from ctxext.stage_config import StageConfig

log = logging.getLogger(__name__)
LABELS = ("cej", "cej_namespace", "stage")


def max_rss_bytes() -> float:
    """Peak resident memory of this process in bytes (ru_maxrss is KiB on Linux, bytes on macOS)."""
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return float(rss if sys.platform == "darwin" else rss * 1024)


class TrainerMetrics:
    """Gauges and counters of one rank; :meth:`serve` starts the HTTP endpoint.

    On ranks other than 0 the job-wide metrics go to :attr:`job_registry`, a registry nobody serves, so
    callers record the same way on every rank.
    """

    def __init__(self, config: StageConfig, rank: int):
        self.registry = CollectorRegistry()
        self.job_registry = self.registry if rank == 0 else CollectorRegistry()
        self.labels = {"cej": config.job, "cej_namespace": config.namespace, "stage": str(config.stage)}
        self.rank = str(rank)
        r = self.job_registry

        def gauge(name: str, doc: str, extra: tuple[str, ...] = ()) -> Gauge:
            return Gauge(name, doc, (*LABELS, *extra), registry=r)

        def counter(name: str, doc: str) -> Counter:
            counted = Counter(name, doc, LABELS, registry=r)
            counted.labels(**self.labels)  # exported as 0 from the start, so increase() sees the first one
            return counted

        self.loss = gauge("ctxext_train_loss", "Training loss (mean over data- and sequence-parallel ranks)")
        self.perplexity = gauge("ctxext_train_perplexity", "exp(training loss)")
        self.grad_norm = gauge("ctxext_grad_norm", "Global gradient norm before clipping")
        self.layer_norm = gauge("ctxext_grad_norm_layer", "Largest / smallest per-layer gradient norm", ("which",))
        self.clip_ratio = gauge("ctxext_grad_clip_ratio", "Factor gradient clipping scaled gradients by (1 = none)")
        self.update_ratio = gauge("ctxext_update_to_weight_ratio", "||weight update|| / ||weights||")
        self.nonfinite = counter("ctxext_grad_nonfinite", "Non-finite gradient elements seen")
        self.spikes = counter("ctxext_loss_spikes", "Loss spikes detected")
        self.tokens = counter("ctxext_train_tokens", "Training tokens processed, all ranks")
        self.tokens_per_second = gauge("ctxext_tokens_per_second", "Training tokens per second of the last step, "
                                       "all ranks (rate(ctxext_train_tokens_total[5m]) smooths it)")
        self.step = gauge("ctxext_train_step", "Optimizer steps completed")
        self.total_steps = gauge("ctxext_train_total_steps", "Optimizer steps planned for the stage")
        self.learning_rate = gauge("ctxext_learning_rate", "Learning rate of the last step")
        self.step_seconds = gauge("ctxext_step_seconds", "Wall time of the last optimizer step")
        self.memory = Gauge("ctxext_memory_bytes", "Memory of this rank", (*LABELS, "rank", "kind"),
                            registry=self.registry)
        self.info = gauge("ctxext_stage_info", "Stage facts (value 1)", ("seq_len", "rope_theta", "total_stages"))
        self.info.labels(**self.labels, seq_len=str(config.seq_len), rope_theta=f"{config.rope_theta:.10g}",
                         total_stages=str(config.total_stages)).set(1)
        self.total_steps.labels(**self.labels).set(config.steps)
        # Exported before the first step completes, so that a stage that hangs in its first step (a collective
        # that never returns, as with a misconfigured NCCL network) is "stalled" too, not silent.
        self.step.labels(**self.labels).set(0)
        self.server: Any = None

    def serve(self, port: int) -> int | None:
        """Serve /metrics on ``port``; a busy port is logged, never fatal. Returns the port or None."""
        if port <= 0:
            return None
        try:
            self.server, _ = start_http_server(port, addr="0.0.0.0", registry=self.registry)
        except OSError as exc:
            log.warning("metrics endpoint on port %d not started: %s", port, exc)
            return None
        return port

    def close(self, linger_seconds: float = 0.0) -> None:
        """Stop serving, after ``linger_seconds`` so that Prometheus scrapes the final values (the
        evaluation gauges are set only at the very end of a stage)."""
        if self.server is not None:
            if linger_seconds > 0:
                log.info("serving final metrics for %.0f s before exit", linger_seconds)
                time.sleep(linger_seconds)
            self.server.shutdown()
            self.server = None

    def record_step(self, *, step: int, loss: float, grad_norm: float, layer_max: float, layer_min: float,
                    clip_ratio: float, tokens_per_second: float, step_seconds: float, learning_rate: float,
                    update_ratio: float | None, tokens: float = 0.0) -> None:
        """One optimizer step; ``tokens``: tokens it trained on, all ranks together."""
        lab = self.labels
        self.step.labels(**lab).set(step)
        self.loss.labels(**lab).set(loss)
        self.perplexity.labels(**lab).set(math.exp(min(loss, 700.0)) if math.isfinite(loss) else math.nan)
        self.grad_norm.labels(**lab).set(grad_norm)
        self.layer_norm.labels(**lab, which="max").set(layer_max)
        self.layer_norm.labels(**lab, which="min").set(layer_min)
        self.clip_ratio.labels(**lab).set(clip_ratio)
        self.tokens_per_second.labels(**lab).set(tokens_per_second)
        if tokens > 0:
            self.tokens.labels(**lab).inc(tokens)
        self.step_seconds.labels(**lab).set(step_seconds)
        self.learning_rate.labels(**lab).set(learning_rate)
        if update_ratio is not None:
            self.update_ratio.labels(**lab).set(update_ratio)
        mine = {**lab, "rank": self.rank}
        self.memory.labels(**mine, kind="max_rss").set(max_rss_bytes())
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            self.memory.labels(**mine, kind="cuda_allocated").set(torch.cuda.memory_allocated())
            self.memory.labels(**mine, kind="cuda_max_allocated").set(torch.cuda.max_memory_allocated())

    def record_nonfinite(self, count: int) -> None:
        self.nonfinite.labels(**self.labels).inc(count)

    def record_spike(self) -> None:
        self.spikes.labels(**self.labels).inc()
