"""The optimizer-step loop: micro-batches, health guard, metrics, checkpoints, preemption.

Per optimizer step ``n`` (1-based; ``step`` below is 0-based = n − 1):
forward/backward every micro-batch → gradient statistics and the guard (before ``engine.step()``,
so NaN never reaches the weights) → ``engine.step()`` → rank-averaged loss → loss-spike check →
metrics / progress → checkpoint every ``checkpoint_interval`` steps or when preempted.
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ctxext.stage_config import StageConfig
from ctxext_trainer.checkpoint import save_checkpoint
from ctxext_trainer.data.batches import Layout, StageData
from ctxext_trainer.distributed import Topology, all_reduce_sum
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
    return {"step": step, "data": parts.data.state.to_dict(), "guard": parts.guard.state_dict()}


def checkpoint_root(config: StageConfig) -> Path:
    return Path(config.output_dir) / "checkpoints"


def _preempted(parts: LoopParts, step_no: int) -> bool:
    hold = os.environ.get(HOLD_FILE_ENV)
    while hold and os.path.exists(hold) and not parts.preempt_flag[0]:
        time.sleep(0.05)
    stop_after = os.environ.get(STOP_AFTER_ENV)
    local = parts.preempt_flag[0] or (stop_after is not None and step_no >= int(stop_after))
    flag = all_reduce_sum(torch.tensor([1.0 if local else 0.0]))
    return bool(flag.item() > 0)


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


def run_steps(parts: LoopParts, state: LoopState) -> LoopState:
    """Train from ``state.step`` to ``config.steps`` unless the guard stops or a preemption arrives."""
    config, engine, topo, guard = parts.config, parts.engine, parts.topo, parts.guard
    layout = Layout(dp_rank=topo.dp_rank, dp_size=topo.dp_size, sp_rank=topo.sp_rank, sp_size=topo.sp_size,
                    batch_size=config.batch_size, accumulation=config.gradient_accumulation)
    named = engine_named_params(engine)
    zero = config.zero_stage
    nan_steps, spike_steps = (injected_steps(INJECT_NAN_ENV, config.attempt),
                              injected_steps(INJECT_SPIKE_ENV, config.attempt))
    engine.train()
    while state.step < config.steps:
        step_no = state.step + 1
        t0, cpu0 = time.perf_counter(), time.process_time()
        batches = parts.data.step_batches(state.step, layout)
        sums = torch.zeros(2, dtype=torch.float64)
        for i, batch in enumerate(batches):
            loss, ce_sum, count = engine(**{k: v.to(engine.device) for k, v in batch.items()})
            if step_no in nan_steps:
                loss = loss * math.nan
            if step_no in spike_steps:
                loss, ce_sum = loss * SPIKE_FACTOR, ce_sum * SPIKE_FACTOR
            engine.backward(loss)
            sums += torch.stack([ce_sum.double().cpu(), count.double().cpu()])
            if i < len(batches) - 1:
                engine.step()
        stats = gradient_stats(named, zero, topo.rank, topo.world_size)
        stop = guard.check_gradients(step_no, stats.grad_norm, stats.nonfinite)
        if stop is not None:
            parts.metrics.record_nonfinite(max(stats.nonfinite, 1))
            state.stop = stop
            break
        before = (snapshot_owned_weights(named, zero, topo.rank, topo.world_size)
                  if step_no % UPDATE_RATIO_INTERVAL == 1 or UPDATE_RATIO_INTERVAL == 1 else None)
        lr = float(engine.get_lr()[0])
        engine.step()
        ratio = update_to_weight_ratio(before, named, zero, topo.rank, topo.world_size) if before else None
        all_reduce_sum(sums)
        loss_value = float(sums[0] / sums[1].clamp(min=1))
        seconds, cpu_seconds = time.perf_counter() - t0, time.process_time() - cpu0
        state.step, state.last_loss = step_no, loss_value
        state.tokens += float(sums[1])
        state.train_seconds += seconds
        state.losses.append(loss_value)
        spikes_before = guard.spikes
        stop = guard.observe_loss(step_no, loss_value)
        if guard.spikes > spikes_before:
            parts.metrics.record_spike()
        tps = float(sums[1]) / seconds if seconds > 0 else 0.0
        parts.metrics.record_step(step=step_no, loss=loss_value, grad_norm=stats.grad_norm,
                                  layer_max=stats.max_layer[1], layer_min=stats.min_layer[1],
                                  clip_ratio=guard.clip_ratio(stats.grad_norm), tokens_per_second=tps,
                                  step_seconds=seconds, learning_rate=lr, update_ratio=ratio)
        parts.reporter.progress(step=step_no, loss=loss_value, tokens_per_second=tps)
        if topo.is_rank0:
            _log_step(config, {"step": step_no, "loss": loss_value, "gradNorm": stats.grad_norm, "lr": lr,
                               "seqLen": int(batches[0]["input_ids"].shape[1]) * topo.sp_size,
                               "seconds": round(seconds, 4), "cpuSeconds": round(cpu_seconds, 4),
                               "maxLayer": stats.max_layer[0], "updateRatio": ratio,
                               **peak_device_memory(config.device)})
            log.info("step %d/%d loss %.4f grad_norm %.3g lr %.3g %.0f tok/s", step_no, config.steps, loss_value,
                     stats.grad_norm, lr, tps)
        if stop is not None:
            state.stop = stop
            break
        preempted = _preempted(parts, step_no)
        if preempted or step_no % config.checkpoint_interval == 0:
            state.checkpoint = save_checkpoint(engine, checkpoint_root(config), step_no, trainer_state(parts, step_no),
                                               keep=config.keep_checkpoints, is_rank0=topo.is_rank0)
            state.checkpoint_step = step_no
        if preempted:
            state.preempted = True
            break
    return state
