"""End-to-end stage runs of ``python -m ctxext_trainer`` on CPU (torchrun, gloo, 2 processes)."""

from __future__ import annotations

import json
import signal
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest
import torch
from transformers import AutoConfig, AutoModelForCausalLM

from ctxext.results import read_result
from ctxext_trainer import exit_codes
from ctxext_trainer.tokenizer import load_tokenizer

from .conftest import free_port, make_tiny_model, run_trainer, stage_config, train_log, trainer_env

METRIC_NAMES = ("ctxext_train_loss", "ctxext_train_perplexity", "ctxext_grad_norm", "ctxext_grad_nonfinite_total",
                "ctxext_loss_spikes_total", "ctxext_tokens_per_second", "ctxext_train_step", "ctxext_stage_info",
                "ctxext_step_seconds", "ctxext_memory_bytes", "ctxext_train_tokens_total")


def _scrape_until_step(port: int, proc: subprocess.Popen[str], deadline_s: float = 240, *,
                       series: str = "ctxext_train_step{") -> str:
    """The /metrics text once it shows a completed step (the run holds after each step meanwhile); ranks
    other than 0 export only their own series (``series="ctxext_memory_bytes{"``), set at each step."""
    end = time.monotonic() + deadline_s
    while time.monotonic() < end:
        if proc.poll() is not None:
            raise AssertionError(f"trainer exited early ({proc.returncode}): {proc.stdout.read()[-4000:]}")
        try:
            body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
            if any(line.startswith(series) and not line.endswith(" 0.0") for line in body.splitlines()):
                return body
        except (urllib.error.URLError, ConnectionError):
            pass
        time.sleep(0.2)
    proc.kill()
    raise AssertionError(f"no completed step on port {port} within {deadline_s}s")


@pytest.mark.distributed
def test_zero3_sequence_parallel_stage_trains_exports_and_serves_metrics(tiny_model: Path, corpus: Path,
                                                                           tmp_path: Path) -> None:
    out, hold, port = tmp_path / "stage", tmp_path / "hold", free_port()
    hold.touch()
    common: dict[str, Any] = dict(activation_checkpointing=True, steps=8, seq_len=128, rope_theta=81920.5,
                                  data={"source": f"file://{corpus}", "seed": 3, "validationFraction": 0.0,
                                        "syntheticRetrievalRatio": 0.25})
    config = stage_config(tiny_model, corpus, out, zero_stage=3, sequence_parallel=2, metrics_port=port,
                          checkpoint_interval=4, **common,
                          evaluation={"enabled": True, "tasks": ["passkey", "perplexity"], "depths": [0.5],
                                      "samplesPerCell": 2}, eval_lengths=[64, 128])
    proc = run_trainer(config, nproc=2, env=trainer_env(CTXEXT_HOLD_FILE=str(hold)), wait=False)
    assert isinstance(proc, subprocess.Popen)
    try:
        scraped = [_scrape_until_step(port, proc), _scrape_until_step(port + 1, proc, series="ctxext_memory_bytes{")]
    finally:
        hold.unlink()
    output, _ = proc.communicate(timeout=300)
    assert proc.returncode == exit_codes.OK, output[-5000:]

    # Job-wide series come from rank 0 only; each rank exports its own memory.
    for name in METRIC_NAMES:
        assert f"\n{name}{{" in scraped[0], f"{name} missing on rank 0"
    assert 'cej="tiny"' in scraped[0] and 'rope_theta="81920.5"' in scraped[0]
    assert "\nctxext_train_loss{" not in scraped[1] and "ctxext_memory_bytes{" in scraped[1]
    for rank, body in enumerate(scraped):
        assert f'rank="{rank}"' in body

    # Sequence parallelism must train exactly what one process trains on the whole sequences: the
    # same loss and gradient norm at every step (a wrong shard, position, loss scale or all-to-all
    # would show at step 1 already; the ZeRO-3 vs ZeRO-0 reduction order only in the last digits).
    single = run_trainer(stage_config(tiny_model, corpus, tmp_path / "single", zero_stage=0, **common))
    assert isinstance(single, subprocess.CompletedProcess) and single.returncode == 0, single.stderr[-3000:]
    reference = [(r["loss"], r["gradNorm"]) for r in train_log(tmp_path / "single")]
    got = [(r["loss"], r["gradNorm"]) for r in train_log(out)]
    assert len(got) == len(reference) == 8
    for step, (have, want) in enumerate(zip(got, reference, strict=True), start=1):
        assert have == pytest.approx(want, rel=2e-4), (step, have, want)
    losses = [loss for loss, _ in got]
    assert losses[-1] < losses[0] - 0.3, losses
    result = read_result(out)
    assert result is not None and result.status == "Succeeded" and result.steps_done == 8
    assert result.model_path == str(out / "model") and result.checkpoint == str(out / "checkpoints" / "step-8")
    assert result.final_loss == pytest.approx(losses[-1])
    assert "128" in result.evaluation["passkeyAccuracy"] and "128" in result.evaluation["perplexity"]
    assert _step_dirs(out) == ["step-4", "step-8"]

    config_json = json.loads((out / "model" / "config.json").read_text())
    assert config_json["rope_parameters"] == {"rope_type": "default", "rope_theta": 81920.5}
    assert config_json["max_position_embeddings"] >= 128
    reloaded = AutoModelForCausalLM.from_pretrained(str(out / "model"), dtype=torch.float32)
    assert AutoConfig.from_pretrained(str(out / "model")).rope_parameters["rope_theta"] == 81920.5
    assert torch.allclose(reloaded.model.rotary_emb.inv_freq, 1.0 / 81920.5 ** (torch.arange(0, 16, 2) / 16))
    original = AutoModelForCausalLM.from_pretrained(str(tiny_model), dtype=torch.float32)
    assert not torch.equal(reloaded.lm_head.weight, original.lm_head.weight)  # the trained weights were exported
    assert load_tokenizer(out / "model").encode("ab") == [101, 102]


@pytest.mark.distributed
def test_nan_injection_stops_the_stage_with_a_reason(tiny_model: Path, corpus: Path, tmp_path: Path) -> None:
    out = tmp_path / "nan"
    config = stage_config(tiny_model, corpus, out, zero_stage=1, steps=6, checkpoint_interval=2)
    proc = run_trainer(config, nproc=2, env=trainer_env(CTXEXT_INJECT_NAN_AT_STEP="3"))
    assert isinstance(proc, subprocess.CompletedProcess)
    assert proc.returncode == exit_codes.GUARD_STOP, proc.stdout[-3000:] + proc.stderr[-5000:]
    result = read_result(out)
    assert result is not None and result.status == "Failed" and result.reason_code == "NonFiniteGradients"
    assert result.reason is not None and result.reason.startswith("non-finite gradients at step 3")
    assert result.steps_done == 2 and result.health.non_finite_steps == 1
    assert result.checkpoint == str(out / "checkpoints" / "step-2") and result.model_path is None
    assert [r["step"] for r in train_log(out)] == [1, 2]
    assert not (out / "model").exists()


def test_a_model_whose_rope_type_cannot_be_scaled_fails_with_a_plain_reason(corpus: Path, tmp_path: Path) -> None:
    model = make_tiny_model(tmp_path / "dynamic", rope={"rope_type": "dynamic", "rope_theta": 1e4, "factor": 2.0})
    out = tmp_path / "stage"
    proc = run_trainer(stage_config(model, corpus, out))
    assert isinstance(proc, subprocess.CompletedProcess)
    assert proc.returncode == exit_codes.BAD_CONFIG, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    result = read_result(out)
    assert result is not None and result.status == "Failed" and result.reason_code == "UnsupportedModel"
    assert result.reason is not None and result.reason.startswith("the base model's RoPE type 'dynamic' cannot be")


def _step_dirs(out: Path) -> list[str]:
    return sorted(p.name for p in (out / "checkpoints").iterdir() if p.name.startswith("step-"))


def _losses(out: Path) -> dict[int, float]:
    return {r["step"]: r["loss"] for r in train_log(out)}  # a replayed step keeps its last value


def test_resume_matches_a_straight_run_and_skips_a_corrupt_checkpoint(tiny_model: Path, corpus: Path,
                                                                      tmp_path: Path) -> None:
    common: dict[str, Any] = dict(zero_stage=2, steps=10, checkpoint_interval=2, keep_checkpoints=3,
                                  lr_schedule="cosine", warmup_steps=2, min_seq_len=32, seq_len=64)
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    # one process (ZeRO-2 still shards its optimizer state into a checkpoint file): three 2-process
    # runs would take minutes on 2 cores; the data-parallel split is covered by test_data_packing
    first = run_trainer(stage_config(tiny_model, corpus, straight, **common))
    assert first.returncode == 0, first.stderr[-5000:]

    cut = run_trainer(stage_config(tiny_model, corpus, resumed, **common), env=trainer_env(CTXEXT_STOP_AFTER_STEP="5"))
    assert cut.returncode == exit_codes.PREEMPTED, cut.stderr[-5000:]
    interrupted = read_result(resumed)
    assert interrupted is not None and interrupted.reason_code == "Preempted" and interrupted.steps_done == 5
    assert _step_dirs(resumed) == ["step-2", "step-4", "step-5"]
    shard = next((resumed / "checkpoints" / "step-5").rglob("*optim_states.pt"))
    shard.write_bytes(shard.read_bytes()[: shard.stat().st_size // 2])  # a truncated write

    rest = run_trainer(stage_config(tiny_model, corpus, resumed, **common))
    assert rest.returncode == 0, rest.stderr[-5000:]
    result = read_result(resumed)
    assert result is not None and result.status == "Succeeded" and result.resumed_from_step == 4
    want, got = _losses(straight), _losses(resumed)
    assert sorted(got) == list(range(1, 11))
    for step in range(1, 11):
        assert abs(got[step] - want[step]) < 1e-6, (step, got[step], want[step])
    seq_lens = [r["seqLen"] for r in train_log(straight)]
    assert all(32 <= n <= 64 for n in seq_lens) and len(set(seq_lens)) > 1


def test_sigterm_saves_a_checkpoint_before_exit(tiny_model: Path, corpus: Path, tmp_path: Path) -> None:
    out, hold, port = tmp_path / "sigterm", tmp_path / "hold", free_port()
    hold.touch()
    proc = run_trainer(stage_config(tiny_model, corpus, out, steps=50, metrics_port=port), nproc=1,
                       env=trainer_env(CTXEXT_HOLD_FILE=str(hold)), wait=False)
    assert isinstance(proc, subprocess.Popen)
    _scrape_until_step(port, proc)
    proc.send_signal(signal.SIGTERM)
    output, _ = proc.communicate(timeout=120)
    assert proc.returncode == exit_codes.PREEMPTED, output[-4000:]
    result = read_result(out)
    assert result is not None and result.reason_code == "Preempted"
    assert result.checkpoint == str(out / "checkpoints" / f"step-{result.steps_done}")
    assert (out / "checkpoints" / f"step-{result.steps_done}" / "MANIFEST.json").is_file()


@pytest.mark.distributed
def test_ulysses_times_ring_stage_trains_what_one_process_trains(tiny_model: Path, corpus: Path,
                                                                 tmp_path: Path) -> None:
    """The real entry point with SP 4 = Ulysses 2 × zigzag ring 2 (4 processes, ZeRO 2) against one
    process that asked for ZeRO 3 (it runs ZeRO 1: one rank partitions nothing) with selective
    checkpointing: the same loss and gradient norm at every step, and the result says what ran."""
    common: dict[str, Any] = dict(steps=4, seq_len=128, rope_theta=81920.5, activation_checkpointing=True,
                                  data={"source": f"file://{corpus}", "seed": 5, "validationFraction": 0.0})
    out = tmp_path / "hybrid"
    hybrid = run_trainer(stage_config(tiny_model, corpus, out, zero_stage=2, sequence_parallel=4, ring_degree=2,
                                      **common), nproc=4)
    assert isinstance(hybrid, subprocess.CompletedProcess) and hybrid.returncode == 0, hybrid.stderr[-4000:]
    single_out = tmp_path / "single"
    single = run_trainer(stage_config(tiny_model, corpus, single_out, zero_stage=3, checkpointed_layers=1, **common))
    assert isinstance(single, subprocess.CompletedProcess) and single.returncode == 0, single.stderr[-4000:]
    got = [(r["loss"], r["gradNorm"], r["seqLen"]) for r in train_log(out)]
    want = [(r["loss"], r["gradNorm"], r["seqLen"]) for r in train_log(single_out)]
    assert len(got) == len(want) == 4
    for step, (have, ref) in enumerate(zip(got, want, strict=True), start=1):
        assert have[2] == ref[2] == 128
        assert have[:2] == pytest.approx(ref[:2], rel=2e-4), (step, have, ref)
    hybrid_result, single_result = read_result(out), read_result(single_out)
    assert hybrid_result is not None and single_result is not None
    assert hybrid_result.runtime["attention"] == "Ulysses 2 x ring 2 (ctxext zigzag ring, aten blocks)"
    assert hybrid_result.runtime["zeroStage"] == 2 and hybrid_result.runtime["lossKernel"] == "fused"
    assert single_result.runtime == {"attention": "sdpa", "sdpaBackends": "torch default", "zeroStage": 1,
                                     "zeroStageRequested": 3, "activationCheckpointing": "1/2 layers",
                                     "lossKernel": "fused"}
