"""Run one curriculum stage end to end: build, (resume,) train, save, evaluate, report.

:func:`run_stage` is what ``python -m ctxext_trainer`` calls; it returns the process exit code
(:mod:`ctxext_trainer.exit_codes`) and always destroys the process group.
"""

from __future__ import annotations

import gc
import logging
import math
import os
import signal
import time
from pathlib import Path
from typing import Any

import torch

from ctxext.results import Health, StageResult, write_result
from ctxext.stage_config import StageConfig
from ctxext.theta import RopeTypeError
from ctxext_trainer import exit_codes
from ctxext_trainer.checkpoint import SupersededError, claim_checkpoints, load_latest_checkpoint
from ctxext_trainer.data.batches import build_stage_data
from ctxext_trainer.data.packing import StreamState
from ctxext_trainer.distributed import Topology, close_distributed, init_distributed
from ctxext_trainer.engine import GRADIENT_CLIPPING, build_engine, deepspeed_config, lr_factor
from ctxext_trainer.eval.oom import EvaluationOutOfMemory
from ctxext_trainer.export import export_model
from ctxext_trainer.fused_ce import loss_kernel
from ctxext_trainer.guard import HealthGuard
from ctxext_trainer.loss import CausalLMTrainModule, sequence_parallel_loss_scale
from ctxext_trainer.metrics import TrainerMetrics
from ctxext_trainer.model_loading import LoadedModel, load_causal_lm, load_for_evaluation, resolve_model_path
from ctxext_trainer.reporting import StatusReporter
from ctxext_trainer.resume_check import REASON_CODE as WORLD_SIZE_CHANGED
from ctxext_trainer.resume_check import WorldSizeChanged, check_resume_world_size
from ctxext_trainer.rope import keep_rope_fp32
from ctxext_trainer.sequence_parallel import setup_sequence_parallel
from ctxext_trainer.speed import effective_zero_stage, runtime_report, sdpa_backends
from ctxext_trainer.tokenizer import load_tokenizer
from ctxext_trainer.train_loop import LoopParts, LoopState, checkpoint_root, run_steps

log = logging.getLogger(__name__)

#: Seconds to keep /metrics up after a stage ends (the operator sets it in pods so that the final
#: evaluation gauges get scraped); 0 locally.
METRICS_LINGER_ENV = "CTXEXT_METRICS_LINGER_SECONDS"


def _set_lr_after_resume(engine: Any, config: StageConfig, step: int) -> None:
    """A retry may run with a lower learning rate than the checkpoint's scheduler remembers."""
    scheduler = engine.lr_scheduler
    scheduler.base_lrs = [config.learning_rate for _ in scheduler.base_lrs]
    factor = lr_factor(step, steps=config.steps, warmup=config.warmup_steps, schedule=config.lr_schedule,
                       min_ratio=config.min_learning_rate_ratio)
    for group in engine.optimizer.param_groups:
        group["lr"] = config.learning_rate * factor


def _evaluate(model_path: Path, tokenizer: Any, config: StageConfig, topo: Topology, registry: Any,
              sequence_group: Any = None) -> dict[str, Any]:
    """Evaluate the exported model on every rank (the evaluation splits the samples across ranks, and
    shards each sequence longer than L0 over ``sequence_group``, the stage's sequence-parallel ranks)."""
    if not config.evaluation.enabled:
        return {}
    from ctxext_trainer.eval.stage import evaluate_stage  # owned by the evaluation package; lazy on purpose

    model = load_for_evaluation(model_path, device=config.device)
    with torch.no_grad():
        return dict(evaluate_stage(model, tokenizer, config, output_dir=Path(config.output_dir),
                                   is_rank0=topo.is_rank0, registry=registry, sequence_group=sequence_group))


def _release(engine: Any, loaded: LoadedModel) -> None:
    """Free the training engine (and transformers' ZeRO-3 hook) before evaluation loads the model."""
    engine.destroy()
    loaded.hf_ds_config = None
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def _result(config: StageConfig, state: LoopState, guard: HealthGuard, *, status: str, reason: str | None,
            code: str | None, model_path: Path | None, evaluation: dict[str, Any], wall: float,
            warnings: list[str]) -> StageResult:
    loss = state.last_loss
    return StageResult(
        status=status, reason=reason, reason_code=code, job_name=config.job_name, stage=config.stage,
        attempt=config.attempt, seq_len=config.seq_len, rope_theta=config.rope_theta,
        learning_rate=config.learning_rate, steps_done=state.step, total_steps=config.steps,
        resumed_from_step=state.resumed_from, final_loss=loss,
        perplexity=math.exp(min(loss, 700.0)) if loss is not None and math.isfinite(loss) else None,
        tokens_per_second=state.tokens / state.train_seconds if state.train_seconds else None, wall_seconds=wall,
        health=Health.model_validate(guard.health()),
        checkpoint=str(state.checkpoint) if state.checkpoint else None,
        model_path=str(model_path) if model_path else None, evaluation=evaluation, warnings=warnings)


def train_stage(config: StageConfig, topo: Topology) -> int:
    """Everything between process-group setup and teardown."""
    started = time.time()
    out = Path(config.output_dir)
    if topo.is_rank0:
        out.mkdir(parents=True, exist_ok=True)
    preempt = [False]
    signal.signal(signal.SIGTERM, lambda *_: preempt.__setitem__(0, True))
    check_resume_world_size(checkpoint_root(config), topo.world_size, is_rank0=topo.is_rank0)  # before any load
    model_dir = resolve_model_path(config.model_path)
    tokenizer = load_tokenizer(model_dir)
    requested_zero = config.zero_stage
    config = config.model_copy(update={"zero_stage": effective_zero_stage(requested_zero, topo.world_size)})
    ds_config = deepspeed_config(config, gradient_clipping=GRADIENT_CLIPPING)
    loaded = load_causal_lm(config.model_path, theta=config.rope_theta, seq_len=config.seq_len, device=config.device,
                            activation_checkpointing=config.activation_checkpointing, ds_config=ds_config,
                            checkpointed_layers=config.checkpointed_layers)
    sp = setup_sequence_parallel(loaded.model, topo, config.batch_size, loaded.attn_implementation,
                                 device=config.device)
    kernel, backends = loss_kernel(config.device, config.zero_stage), sdpa_backends()
    module = CausalLMTrainModule(loaded.model, sp_group=sp.sequence_group, loss_kernel=kernel, sdpa_backends=backends,
                                 loss_scale=sequence_parallel_loss_scale(config.zero_stage, topo.sp_size,
                                                                         topo.ulysses_size))
    runtime = runtime_report(attention=sp.attention, zero_requested=requested_zero, zero_stage=config.zero_stage,
                             checkpointed=loaded.checkpointed_layers, num_layers=loaded.num_layers,
                             loss_kernel=kernel, backends=backends)
    if topo.is_rank0:
        log.info("runtime: %s", runtime)
    engine = build_engine(module, config, ds_config, mpu=sp.mpu)
    keep_rope_fp32(loaded.model)
    data = build_stage_data(config, tokenizer, Path(model_dir))
    guard = HealthGuard(sigma=config.failure_policy.loss_spike_sigma,
                        max_spikes=config.failure_policy.max_loss_spikes, clip=GRADIENT_CLIPPING)
    state = LoopState()
    warnings: list[str] = []
    claim_checkpoints(checkpoint_root(config), config.job_name, is_rank0=topo.is_rank0)  # older attempts stop saving
    resumed = load_latest_checkpoint(engine, checkpoint_root(config), warnings)
    if resumed is not None:
        state.step = state.resumed_from = state.checkpoint_step = resumed[0]
        state.checkpoint = checkpoint_root(config) / f"step-{resumed[0]}"
        data.state = StreamState.from_dict(resumed[1]["data"])
        guard.load_state_dict(resumed[1].get("guard", {}))
        _set_lr_after_resume(engine, config, state.step)
        log.info("resumed from %s", state.checkpoint)
    metrics = TrainerMetrics(config, topo.rank)
    linger = 0.0
    metrics.serve(config.metrics_port + topo.local_rank if config.metrics_port else 0)
    reporter = StatusReporter(config, is_rank0=topo.is_rank0)
    try:
        parts = LoopParts(config=config, engine=engine, data=data, topo=topo, guard=guard, metrics=metrics,
                          reporter=reporter, preempt_flag=preempt)
        state = run_steps(parts, state)
        model_path, evaluation = None, {}
        if state.stop is None and not state.preempted:
            if state.checkpoint_step != state.step:
                from ctxext_trainer.checkpoint import save_checkpoint
                from ctxext_trainer.train_loop import trainer_state

                state.checkpoint = save_checkpoint(engine, checkpoint_root(config), state.step,
                                                   trainer_state(parts, state.step), keep=config.keep_checkpoints,
                                                   is_rank0=topo.is_rank0)
            model_path = export_model(engine, loaded.model, tokenizer, out, zero_stage=config.zero_stage,
                                      is_rank0=topo.is_rank0)
            _release(engine, loaded)
            evaluation = _evaluate(model_path, tokenizer, config, topo, metrics.job_registry, sp.sequence_group)
        if state.stop is not None:
            status, reason, code, rc = "Failed", state.stop.message, state.stop.code, exit_codes.GUARD_STOP
        elif state.preempted:
            saved = f"checkpoint step-{state.step} saved" if state.checkpoint_step == state.step and state.step \
                else "nothing to save yet"
            status, reason, code = "Failed", f"preempted after step {state.step}; {saved}", "Preempted"
            rc = exit_codes.PREEMPTED
        else:
            status, reason, code, rc = "Succeeded", None, None, exit_codes.OK
        result = _result(config, state, guard, status=status, reason=reason, code=code, model_path=model_path,
                         evaluation=evaluation, wall=time.time() - started, warnings=warnings)
        result.runtime = runtime
        if topo.is_rank0:
            write_result(out, result)
            reporter.progress(step=state.step, loss=state.last_loss, tokens_per_second=None, force=True)
            reporter.result(result.to_wire())
            log.info("stage %d %s%s", config.stage, status, f": {reason}" if reason else "")
        if not state.preempted:  # a preempted pod has a short grace period: leave at once
            linger = float(os.environ.get(METRICS_LINGER_ENV, "0") or 0)
        return rc
    finally:
        metrics.close(linger)


def _write_failure(config: StageConfig, topo: Topology, reason: str, code: str, *, to_dir: bool = True) -> None:
    """Record a failure the trainer can name where the operator reads it: result.json (unless ``to_dir`` is
    False) and ``status.results[<jobName>]`` (so that, e.g., UnsupportedModel is not retried)."""
    if topo.is_rank0:
        result = StageResult(status="Failed", reason=reason, reason_code=code, job_name=config.job_name,
                             stage=config.stage, attempt=config.attempt)
        if to_dir:
            write_result(config.output_dir, result)
        StatusReporter(config, is_rank0=True).result(result.to_wire())


def run_stage(config: StageConfig) -> int:
    """Set up the process group, train the stage, always tear down. Returns the exit code."""
    topo = init_distributed(config.device, config.sequence_parallel, config.ring_degree)
    try:
        if config.evaluate_only:  # the base model's evaluation before stage 1
            from ctxext_trainer.baseline import evaluate_base

            return evaluate_base(config, topo)
        return train_stage(config, topo)
    except SupersededError as exc:  # a newer attempt owns the stage's directory: write nothing there
        log.error("stage stopped: %s", exc)
        _write_failure(config, topo, str(exc), "Error", to_dir=False)
        return exit_codes.ERROR
    except RopeTypeError as exc:  # the model itself cannot be theta-scaled: no retry can help
        log.error("stage failed: %s", exc)
        _write_failure(config, topo, str(exc), "UnsupportedModel")
        return exit_codes.BAD_CONFIG
    except WorldSizeChanged as exc:  # every retry would fail the same way
        log.error("stage failed: %s", exc)
        _write_failure(config, topo, str(exc), WORLD_SIZE_CHANGED)
        return exit_codes.BAD_CONFIG
    except EvaluationOutOfMemory as exc:  # the same lengths run out again on every retry
        log.error("stage failed: %s", exc)
        _write_failure(config, topo, str(exc), EvaluationOutOfMemory.REASON_CODE)
        return exit_codes.BAD_CONFIG
    except Exception as exc:
        log.exception("stage failed")
        _write_failure(config, topo, f"{type(exc).__name__}: {exc}", "Error")
        return exit_codes.ERROR
    finally:
        close_distributed()
