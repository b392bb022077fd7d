"""The trainer's side of ctxext.decide: a gate retry (the same stage directory, more steps) trains on from
the stage's final checkpoint, and an ``evaluateOnly`` config (the base model's evaluation, stage 0)
evaluates without training. Real trainer, one process, tiny model."""

from __future__ import annotations

import hashlib
from pathlib import Path

from ctxext.results import read_result

from .conftest import TINY_THETA, run_trainer, stage_config, train_log


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_a_gate_retry_resumes_the_finished_stage_and_trains_the_extra_steps(tiny_model: Path, corpus: Path,
                                                                            tmp_path: Path) -> None:
    # #27 item 7: a retry at step == steps used to skip training and re-evaluate the same weights.
    out = tmp_path / "stage"
    common = dict(lr_schedule="cosine", warmup_steps=1, checkpoint_interval=1000)
    first = run_trainer(stage_config(tiny_model, corpus, out, steps=4, **common))
    assert first.returncode == 0, first.stderr[-5000:]
    before = _digest(out / "model" / "model.safetensors")
    retry = run_trainer(stage_config(tiny_model, corpus, out, steps=8, attempt=2, job_name="tiny-s1-a2", **common))
    assert retry.returncode == 0, retry.stderr[-5000:]
    result = read_result(out)
    assert result is not None and result.status == "Succeeded"
    assert (result.resumed_from_step, result.steps_done, result.total_steps) == (4, 8, 8)
    assert [r["step"] for r in train_log(out)] == list(range(1, 9))  # steps 5..8 are new, none repeated
    assert _digest(out / "model" / "model.safetensors") != before  # the gate judges other weights


def test_evaluate_only_evaluates_the_model_at_its_theta_without_training(tiny_model: Path, corpus: Path,
                                                                         tmp_path: Path) -> None:
    out = tmp_path / "baseline"
    # passkey needs ~105 byte tokens of prompt before any haystack, so the lengths are 128 and 160
    config = stage_config(tiny_model, corpus, out, stage=0, steps=0, evaluate_only=True, seq_len=160,
                          rope_theta=TINY_THETA, original_context_length=128, eval_lengths=[128, 160],
                          evaluation={"enabled": True, "tasks": ["passkey", "perplexity"], "depths": [0.5],
                                      "samplesPerCell": 2})
    proc = run_trainer(config)
    assert proc.returncode == 0, proc.stderr[-5000:]
    result = read_result(out)
    assert result is not None and result.status == "Succeeded" and result.stage == 0
    assert result.steps_done == 0 and not (out / "checkpoints").exists() and not (out / "model").exists()
    assert result.rope_theta == TINY_THETA
    assert set(result.evaluation["perplexity"]) == {"128", "160"}
    assert set(result.evaluation["passkeyAccuracy"]) == {"128", "160"}
    assert not (out / "train_log.jsonl").exists()
