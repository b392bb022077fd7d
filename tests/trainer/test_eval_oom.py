"""Evaluation that runs out of memory after a stage trained fails permanently, in plain words.

Every retry would evaluate the same exported model at the same lengths and run out again (issue #25
item 1), so the trainer reports ``EvaluationOutOfMemory`` with exit code 2 — no traceback — and the
operator fails the job at once instead of relaunching every GPU. The allocator failure is real:
``CTXEXT_INJECT_EVAL_ALLOCATION_BYTES`` asks the CPU allocator for more than any machine has.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

from ctxext.results import PERMANENT_REASON_CODES, read_result
from ctxext_trainer import exit_codes

from .conftest import run_trainer, stage_config, trainer_env


def test_evaluation_out_of_memory_is_a_permanent_plain_failure(tiny_model: Path, corpus: Path, tmp_path: Path):
    out = tmp_path / "stage"
    config = stage_config(tiny_model, corpus, out, steps=2, seq_len=64,
                          evaluation={"enabled": True, "tasks": ["perplexity"], "samplesPerCell": 1},
                          eval_lengths=[32, 64])
    proc = run_trainer(config, env=trainer_env(CTXEXT_INJECT_EVAL_ALLOCATION_BYTES=str(1 << 50)))
    assert isinstance(proc, subprocess.CompletedProcess)
    assert proc.returncode == exit_codes.BAD_CONFIG, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    result = read_result(out)
    assert result is not None and result.status == "Failed" and result.reason_code == "EvaluationOutOfMemory"
    assert result.reason is not None and result.reason.startswith(
        "stage 1's evaluation at lengths 32, 64 ran out of memory (")
    assert "can't allocate memory" in result.reason and "spec.evaluation.lengths" in result.reason
    assert (out / "model" / "config.json").is_file()  # the trained model was exported before evaluation
    assert "EvaluationOutOfMemory" in PERMANENT_REASON_CODES  # the operator fails the job without retries
