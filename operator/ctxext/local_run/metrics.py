"""The run-level Prometheus exporter of `ctxext run` (``--metrics-port``; 0 disables it).

It serves for the whole run, across stages (each trainer rank also serves its own endpoint on
``metrics-port + 1 + rank`` while its stage runs). Labels are bounded: ``cej`` (the job name,
not ``job``, which Prometheus reserves), ``stage``, ``task``, ``length``.
"""

from __future__ import annotations

from typing import Any

from prometheus_client import CollectorRegistry, Gauge, start_http_server

from ctxext.local_run.progress import Progress


class RunMetrics:
    """Gauges of one local run, on their own registry."""

    def __init__(self, job: str, total_stages: int):
        self.job = job
        self.registry = CollectorRegistry()
        r = self.registry
        self.stage = Gauge("ctxext_run_current_stage", "Stage being run (1-based; 0 = baseline evaluation)",
                           ["cej"], registry=r)
        self.total = Gauge("ctxext_run_stages", "Stages in the curriculum", ["cej"], registry=r)
        self.done = Gauge("ctxext_run_stages_done", "Stages finished successfully", ["cej"], registry=r)
        self.step = Gauge("ctxext_run_train_step", "Last optimizer step of the stage", ["cej", "stage"], registry=r)
        self.loss = Gauge("ctxext_run_train_loss", "Training loss at the last step", ["cej", "stage"], registry=r)
        self.ppl = Gauge("ctxext_run_train_perplexity", "exp(training loss) at the last step", ["cej", "stage"],
                         registry=r)
        self.tps = Gauge("ctxext_run_tokens_per_second", "Training throughput of the stage (all ranks)",
                         ["cej", "stage"], registry=r)
        self.accuracy = Gauge("ctxext_run_eval_accuracy", "Evaluation accuracy after the stage (0 = base model)",
                              ["cej", "stage", "task", "length"], registry=r)
        self.eval_ppl = Gauge("ctxext_run_eval_perplexity", "Held-out perplexity after the stage (0 = base model)",
                              ["cej", "stage", "length"], registry=r)
        self.failed = Gauge("ctxext_run_failed", "1 when the run stopped on a failure or a failed gate", ["cej"],
                            registry=r)
        self.total.labels(job).set(total_stages)
        self.failed.labels(job).set(0)

    def serve(self, port: int) -> None:
        if port:
            start_http_server(port, addr="127.0.0.1", registry=self.registry)

    def on_stage(self, index: int, done: int) -> None:
        self.stage.labels(self.job).set(index)
        self.done.labels(self.job).set(done)

    def on_progress(self, index: int, p: Progress) -> None:
        s = str(index)
        self.step.labels(self.job, s).set(p.step)
        if p.loss is not None and p.perplexity is not None:
            self.loss.labels(self.job, s).set(p.loss)
            self.ppl.labels(self.job, s).set(p.perplexity)
        if p.tokens_per_second is not None:
            self.tps.labels(self.job, s).set(p.tokens_per_second)

    def on_evaluation(self, index: int, evaluation: dict[str, Any]) -> None:
        s = str(index)
        for metric, values in evaluation.items():
            if not isinstance(values, dict):
                continue
            for length, value in values.items():
                if not isinstance(value, int | float):
                    continue
                if metric == "perplexity":
                    self.eval_ppl.labels(self.job, s, str(length)).set(value)
                elif metric.endswith("Accuracy"):
                    self.accuracy.labels(self.job, s, metric.removesuffix("Accuracy"), str(length)).set(value)

    def on_failure(self) -> None:
        self.failed.labels(self.job).set(1)
