"""The optimizer-step loop: micro-batches, health guard, metrics, checkpoints, preemption.

Per optimizer step ``n`` (1-based; ``step`` below is 0-based = n − 1):
forward/backward every micro-batch (a SIGTERM seen between two micro-batches drops the step and
checkpoints step n − 1: :func:`_abandon_step`) → gradient statistics and the non-finite check →
rank-averaged loss and the loss-spike check — both *before* the update, so neither a NaN nor a
spiking step reaches the weights: a spike is trained as a skipped update
(:func:`ctxext_trainer.engine.step_without_update`), too many spikes stop the stage → ``engine.step()``
→ metrics / progress → checkpoint every ``checkpoint_interval`` steps or when preempted.
"""

from __future__ import annotations

import json
import logging
import math
import os
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ctxext.stage_config import StageConfig
from ctxext_trainer.checkpoint import save_checkpoint
from ctxext_trainer.data.batches import Layout, StageData
from ctxext_trainer.data.packing import StreamState
from ctxext_trainer.distributed import Topology, all_reduce_sum
from ctxext_trainer.engine import step_without_update
from ctxext_trainer.grad_stats import (
    engine_named_params,
    gradient_stats,
    snapshot_owned_weights,
    update_to_weight_ratio,
)
from ctxext_trainer.guard import INJECT_NAN_ENV, INJECT_SPIKE_ENV, SPIKE_FACTOR, HealthGuard, StopReason, injected_steps
from ctxext_trainer.metrics import TrainerMetrics
from ctxext_trainer.reporting import StatusReporter

log = logging.getLogger(__name__)
UPDATE_RATIO_INTERVAL = int(os.environ.get("CTXEXT_UPDATE_RATIO_INTERVAL", "10"))
STOP_AFTER_ENV = "CTXEXT_STOP_AFTER_STEP"
"""Test hook: behave as if preempted right after this step (checkpoint, exit as preempted)."""
HOLD_FILE_ENV = "CTXEXT_HOLD_FILE"
"""Test hook: after each step, wait while this file exists (lets a test scrape a live run)."""
HOLD_FROM_STEP_ENV = "CTXEXT_HOLD_FROM_STEP"
"""Test hook: with CTXEXT_HOLD_FILE, hold only from this step on (a test acts at a known step, no race)."""
SIGTERM_MID_STEP_ENV = "CTXEXT_SIGTERM_MID_STEP"
"""Test hook: rank 0 sends itself SIGTERM after the first micro-batch of these steps (``N[,M][@attempt]``)."""
SLOW_STEP_ENV = "CTXEXT_SLOW_STEP"
"""Test hook: these steps (``N[,M][@attempt]``) run ``$CTXEXT_SLOW_STEP_SECONDS`` longer after their
micro-batches, counted again from a SIGTERM that arrives meanwhile: a step that outlasts torchrun's
default 30 s shutdown timeout, as a 1M-token micro-batch does."""
SLOW_STEP_SECONDS_ENV = "CTXEXT_SLOW_STEP_SECONDS"


@dataclass
class LoopState:
    """What the loop leaves behind for the stage result."""

    step: int = 0
    resumed_from: int = 0
    last_loss: float | None = None
    tokens: float = 0.0
    train_seconds: float = 0.0
    checkpoint: Path | None = None
    checkpoint_step: int = -1
    stop: StopReason | None = None
    preempted: bool = False
    losses: list[float] = field(default_factory=list)


@dataclass
class LoopParts:
    config: StageConfig
    engine: Any
    data: StageData
    topo: Topology
    guard: HealthGuard
    metrics: TrainerMetrics
    reporter: StatusReporter
    preempt_flag: list[bool]
    """Set to [True] by the SIGTERM handler."""


def trainer_state(parts: LoopParts, step: int) -> dict[str, Any]:
    return {"step": step, "data": parts.data.state.to_dict(), "guard": parts.guard.state_dict(),
            "worldSize": parts.topo.world_size}


def checkpoint_root(config: StageConfig) -> Path:
    return Path(config.output_dir) / "checkpoints"


def _agreed(local: bool) -> bool:
    """True on every rank when any rank says so (one all-reduce of a single number; none on one rank)."""
    if not torch.distributed.is_initialized() or torch.distributed.get_world_size() == 1:
        return local
    return bool(all_reduce_sum(torch.tensor([1.0 if local else 0.0])).item() > 0)


def _preempted(parts: LoopParts, step_no: int) -> bool:
    hold = os.environ.get(HOLD_FILE_ENV)
    if step_no < int(os.environ.get(HOLD_FROM_STEP_ENV) or 0):
        hold = None
    while hold and os.path.exists(hold) and not parts.preempt_flag[0]:
        time.sleep(0.05)
    stop_after = os.environ.get(STOP_AFTER_ENV)
    return _agreed(parts.preempt_flag[0] or (stop_after is not None and step_no >= int(stop_after)))


def peak_device_memory(device: str) -> dict[str, int]:
    """``{"maxMemoryAllocated": bytes}``, this process's peak CUDA allocation so far, for the step log
    (a cheap allocator-statistics read); ``{}`` off CUDA."""
    if device != "cuda" or not torch.cuda.is_available():
        return {}
    return {"maxMemoryAllocated": int(torch.cuda.max_memory_allocated())}


def _log_step(config: StageConfig, record: dict[str, Any]) -> None:
    path = Path(config.output_dir) / "train_log.jsonl"
    with path.open("a") as fh:
        fh.write(json.dumps(record, sort_keys=True) + "\n")


def _save(parts: LoopParts, state: LoopState, step: int) -> None:
    state.checkpoint = save_checkpoint(parts.engine, checkpoint_root(parts.config), step, trainer_state(parts, step),
                                       keep=parts.config.keep_checkpoints, is_rank0=parts.topo.is_rank0)
    state.checkpoint_step = step


def _abandon_step(parts: LoopParts, state: LoopState, data_before: StreamState) -> LoopState:
    """Preempted between micro-batches: drop the step in flight, checkpoint the last completed one.

    No weight has changed since the last ``engine.step()`` boundary, so the state to save is exactly
    that of step ``state.step``; the data stream goes back to where that step left it, and a resumed
    run redoes the dropped step in full (bit-identical to an uninterrupted run).
    """
    parts.data.state = data_before
    if state.step > 0 and state.checkpoint_step != state.step:
        _save(parts, state, state.step)
    state.preempted = True
    return state


def _slow_step(flag: list[bool], seconds: float) -> None:
    """Wait ``seconds``, restarting the wait when the SIGTERM flag goes up (the :data:`SLOW_STEP_ENV` hook)."""
    end, seen = time.monotonic() + seconds, flag[0]
    while time.monotonic() < end:
        time.sleep(0.1)
        if flag[0] and not seen:
            end, seen = time.monotonic() + seconds, True


def run_steps(parts: LoopParts, state: LoopState) -> LoopState:
    """Train from ``state.step`` to ``config.steps`` unless the guard stops or a preemption arrives."""
    config, engine, topo, guard = parts.config, parts.engine, parts.topo, parts.guard
    layout = Layout(dp_rank=topo.dp_rank, dp_size=topo.dp_size, sp_rank=topo.sp_rank, sp_size=topo.sp_size,
                    batch_size=config.batch_size, accumulation=config.gradient_accumulation, ring_size=topo.ring_size)
    named = engine_named_params(engine)
    zero = config.zero_stage
    nan_steps, spike_steps = (injected_steps(INJECT_NAN_ENV, config.attempt),
                              injected_steps(INJECT_SPIKE_ENV, config.attempt))
    sigterm_steps = injected_steps(SIGTERM_MID_STEP_ENV, config.attempt)
    slow_steps = injected_steps(SLOW_STEP_ENV, config.attempt)
    engine.train()
    while state.step < config.steps:
        step_no = state.step + 1
        t0, cpu0 = time.perf_counter(), time.process_time()
        data_before = StreamState.from_dict(parts.data.state.to_dict())
        batches = parts.data.step_batches(state.step, layout)
        sums_dev = torch.zeros(2, dtype=torch.float64, device=engine.device)  # no host sync per micro-batch
        for i, batch in enumerate(batches):
            loss, ce_sum, count = engine(**{k: v.to(engine.device) for k, v in batch.items()})
            if step_no in nan_steps:
                loss = loss * math.nan
            if step_no in spike_steps:
                loss, ce_sum = loss * SPIKE_FACTOR, ce_sum * SPIKE_FACTOR
            engine.backward(loss)
            sums_dev += torch.stack([ce_sum.double(), count.double()])
            if i < len(batches) - 1:
                engine.step()  # inside the accumulation window: DeepSpeed only counts the micro-step
                if step_no in sigterm_steps and i == 0 and topo.is_rank0:
                    os.kill(os.getpid(), signal.SIGTERM)
                if _agreed(parts.preempt_flag[0]):  # a SIGTERM mid-step: do not finish the step
                    return _abandon_step(parts, state, data_before)
        if step_no in slow_steps:
            _slow_step(parts.preempt_flag, float(os.environ.get(SLOW_STEP_SECONDS_ENV, "40")))
        # the guard's gradient statistics and the step's loss over all ranks: one all-reduce and one
        # host synchronisation per step, both known *before* the update
        stats = gradient_stats(named, zero, topo.rank, topo.world_size, extra=sums_dev)
        sums = torch.tensor(stats.extra, dtype=torch.float64)
        stop = guard.check_gradients(step_no, stats.grad_norm, stats.nonfinite)
        if stop is not None:
            parts.metrics.record_nonfinite(max(stats.nonfinite, 1))
            state.stop = stop
            break
        loss_value = float(sums[0] / sums[1].clamp(min=1))
        spikes_before = guard.spikes
        stop = guard.observe_loss(step_no, loss_value)
        skipped = guard.spikes > spikes_before
        if skipped:
            parts.metrics.record_spike()
        if stop is not None:  # too many spikes or a non-finite loss: stop without applying this step
            state.stop = stop
            break
        before = (snapshot_owned_weights(named, zero, topo.rank, topo.world_size)
                  if not skipped and (step_no % UPDATE_RATIO_INTERVAL == 1 or UPDATE_RATIO_INTERVAL == 1) else None)
        lr = float(engine.get_lr()[0])
        if skipped:
            step_without_update(engine)  # a spike: no update reaches the weights or the optimizer state
        else:
            engine.step()
        ratio = update_to_weight_ratio(before, named, zero, topo.rank, topo.world_size) if before else None
        seconds, cpu_seconds = time.perf_counter() - t0, time.process_time() - cpu0
        state.step, state.last_loss = step_no, loss_value
        state.tokens += float(sums[1])
        state.train_seconds += seconds
        state.losses.append(loss_value)
        tps = float(sums[1]) / seconds if seconds > 0 else 0.0
        parts.metrics.record_step(step=step_no, loss=loss_value, grad_norm=stats.grad_norm,
                                  layer_max=stats.max_layer[1], layer_min=stats.min_layer[1],
                                  clip_ratio=guard.clip_ratio(stats.grad_norm), tokens_per_second=tps,
                                  step_seconds=seconds, learning_rate=lr, update_ratio=ratio,
                                  tokens=float(sums[1]))
        parts.reporter.progress(step=step_no, loss=loss_value, tokens_per_second=tps, grad_norm=stats.grad_norm)
        if topo.is_rank0:
            _log_step(config, {"step": step_no, "loss": loss_value, "gradNorm": stats.grad_norm, "lr": lr,
                               "seqLen": int(batches[0]["input_ids"].shape[1]) * topo.sp_size,
                               "seconds": round(seconds, 4), "cpuSeconds": round(cpu_seconds, 4),
                               "maxLayer": stats.max_layer[0], "updateRatio": ratio,
                               **({"skipped": "lossSpike"} if skipped else {}),
                               **peak_device_memory(config.device)})
            log.info("step %d/%d loss %.4f grad_norm %.3g lr %.3g %.0f tok/s%s", step_no, config.steps, loss_value,
                     stats.grad_norm, lr, tps, " (loss spike: update skipped)" if skipped else "")
        preempted = _preempted(parts, step_no)
        if preempted or step_no % config.checkpoint_interval == 0:
            _save(parts, state, step_no)
        if preempted:
            state.preempted = True
            break
    return state
