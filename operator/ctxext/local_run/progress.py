"""Progress of a running stage, read from what trainer rank 0 writes. Pure; no torch.

Trainer rank 0 appends one JSON line per optimizer step to ``<output_dir>/train_log.jsonl``::

    {"step": 12, "loss": 2.31, "seqLen": 384, "seconds": 0.21, "lr": 0.001, "gradNorm": 0.8, ...}

`ctxext run` polls the file's tail: step, loss, perplexity = exp(loss), tokens/s = tokens of the
step (seqLen · batch · accumulation · data-parallel degree) / its seconds, averaged over the last
few steps so the number does not flicker.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

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

    >>> from ctxext.stage_config import StageConfig
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
