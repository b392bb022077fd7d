"""Progress of a running stage, read from what trainer rank 0 writes. Pure; no torch.

Trainer rank 0 appends one JSON line per optimizer step to ``<output_dir>/train_log.jsonl``::

    {"step": 12, "loss": 2.31, "seqLen": 384, "seconds": 0.21, "lr": 0.001, "gradNorm": 0.8, ...}

`ctxext run` polls the file's tail: step, loss, perplexity = exp(loss), tokens/s = tokens of the
step (seqLen · batch · accumulation · data-parallel degree) / its seconds, averaged over the last
few steps so the number does not flicker.

The run-level Prometheus exporter (:class:`RunMetrics`) of `ctxext run` (``--metrics-port``; 0 disables it).

It serves for the whole run, across stages (each trainer rank also serves its own endpoint on
``metrics-port + 1 + rank`` while its stage runs). Labels are bounded: ``cej`` (the job name,
not ``job``, which Prometheus reserves), ``stage``, ``task``, ``length``.
"""

from __future__ import annotations

import errno
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry, Gauge, start_http_server

from ctxext.errors import SpecError
from ctxext.stage_config import StageConfig

TRAIN_LOG = "train_log.jsonl"
TAIL_BYTES = 16384
SMOOTH_STEPS = 10


@dataclass(frozen=True)
class Progress:
    """The latest step of a stage."""

    step: int
    loss: float | None
    perplexity: float | None
    tokens_per_second: float | None
    seq_len: int | None


def _tail_records(path: Path) -> list[dict]:
    try:
        with path.open("rb") as fh:
            fh.seek(0, 2)
            size = fh.tell()
            fh.seek(max(0, size - TAIL_BYTES))
            data = fh.read().decode("utf-8", errors="replace")
    except FileNotFoundError:
        return []
    records = []
    for line in data.splitlines()[1 if size > TAIL_BYTES else 0:]:
        try:
            record = json.loads(line)
        except ValueError:
            continue  # a line being written
        if isinstance(record, dict) and isinstance(record.get("step"), int):
            records.append(record)
    return records


def tokens_per_step(config: StageConfig, seq_len: int, world_size: int) -> int:
    """Tokens one optimizer step consumes at ``seq_len``.

    >>> from prometheus_client import CollectorRegistry, Gauge, start_http_server

from ctxext.stage_config import StageConfig
    >>> c = StageConfig(job="j", job_name="j", stage=1, total_stages=1, model_path="/m", output_dir="/o",
    ...                 seq_len=512, rope_theta=1e4, original_context_length=128, steps=1, learning_rate=1e-3,
    ...                 batch_size=4, sequence_parallel=2)
    >>> tokens_per_step(c, 384, world_size=2)
    1536
    """
    dp = max(1, world_size // config.sequence_parallel)
    return seq_len * config.batch_size * config.gradient_accumulation * dp


def read_progress(config: StageConfig, world_size: int) -> Progress | None:
    """The stage's latest step, or None before its first step."""
    records = _tail_records(Path(config.output_dir) / TRAIN_LOG)
    if not records:
        return None
    last = records[-1]
    loss = last.get("loss")
    loss = float(loss) if isinstance(loss, int | float) and math.isfinite(loss) else None
    recent = records[-SMOOTH_STEPS:]
    tokens = sum(tokens_per_step(config, int(r.get("seqLen") or config.seq_len), world_size) for r in recent)
    seconds = sum(float(r.get("seconds") or 0.0) for r in recent)
    return Progress(step=int(last["step"]), loss=loss, perplexity=math.exp(min(loss, 700.0)) if loss is not None
                    else None, tokens_per_second=tokens / seconds if seconds > 0 else None,
                    seq_len=int(last["seqLen"]) if isinstance(last.get("seqLen"), int) else None)


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
        if not port:
            return
        try:
            start_http_server(port, addr="127.0.0.1", registry=self.registry)
        except OSError as exc:
            if exc.errno != errno.EADDRINUSE:
                raise
            raise SpecError([("--metrics-port", f"port {port} is already in use; choose another with "
                              f"--metrics-port, or --metrics-port 0 to disable metrics")]) from None

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
