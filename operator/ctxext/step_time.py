"""How long a training step and a checkpoint take, roughly, and the pod grace period that follows. Pure.

Kubernetes gives a pod ``terminationGracePeriodSeconds`` (default 30 s) between SIGTERM and
SIGKILL. On SIGTERM the trainer finishes the micro-batch in flight — with gradient accumulation it
drops the rest of the optimizer step and resumes it from the previous step — then saves a
checkpoint. So the grace period must cover one micro-batch, the optimizer step and one checkpoint
write; at long sequence lengths one micro-batch alone takes far longer than 30 s.

The pod's PID 1 is the torchrun agent (``python -m ctxext_trainer.launch``): Kubernetes signals only
it. On SIGTERM the agent sends SIGTERM to its workers and SIGKILLs them after its shutdown timeout
(torch.distributed.launcher ``LaunchConfig.shutdown_timeout``, from
``TORCH_ELASTIC_SHUTDOWN_TIMEOUT``, 30 s when unset). The builder sets that variable to
:func:`agent_shutdown_seconds` of the grace period, so the workers get the pod's whole grace
period (less the agent's own exit) to reach their checkpoint.

Estimates are deliberately pessimistic (a grace period that is too long costs nothing unless the
pod hangs; one that is too short loses the work since the last checkpoint):

* FLOPs of one micro-batch per rank, for ``s = seqLen · batch / sp`` local tokens of a model with
  Ψ matmul parameters (:func:`ctxext.memory.parameter_count`), ``L`` layers and hidden size ``h``:
  ``F = k · (Ψ · s + L · h · s · seqLen)`` with ``k = 6`` (forward + backward), ``8`` with
  activation checkpointing (one more forward);
* at :data:`ASSUMED_GPU_FLOPS` per GPU (about 10% of an H100's dense bf16 peak: the trainer measured
  23–30 % MFU on an H200, so this is a ≥ 2× margin) or :data:`ASSUMED_CPU_FLOPS` per CPU process;
* a checkpoint writes the rank's weights and optimizer states (the memory estimate's shares) at
  :data:`ASSUMED_WRITE_BYTES_PER_SECOND` per rank;
* grace = ``GRACE_MARGIN · (micro-batch + checkpoint) + GRACE_BASE_SECONDS``, rounded up to a
  minute, within [:data:`MIN_GRACE_SECONDS`, :data:`MAX_GRACE_SECONDS`].

Worked example, Llama-3-8B (Ψ = 8.03e9, L = 32, h = 4096) at 65,536 tokens, sp 8, batch 1, ZeRO 3
on 8 GPUs, checkpointing: s = 8192; F = 8 · (8.03e9 · 8192 + 32 · 4096 · 8192 · 65536) = 1.09e15
→ 10.9 s per micro-batch; the checkpoint writes (2 + 12)Ψ / 8 = 13.1 GiB at 0.25 GiB/s = 52.3 s;
grace = 2 · (10.9 + 52.3) + 60 = 186 s → 240 s.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from ctxext.api.spec import ModelArchitecture
from ctxext.memory import GIB, parameter_count

ASSUMED_GPU_FLOPS = 100e12
ASSUMED_CPU_FLOPS = 2e9
ASSUMED_WRITE_BYTES_PER_SECOND = 0.25 * GIB
GRACE_MARGIN = 2.0
GRACE_BASE_SECONDS = 60.0
MIN_GRACE_SECONDS = 120
MAX_GRACE_SECONDS = 6 * 3600
#: When the architecture is unknown (no estimate possible).
DEFAULT_GRACE_SECONDS = 600


@dataclass(frozen=True)
class StepTime:
    """Estimated seconds of one micro-batch, one optimizer step and one checkpoint save, per rank."""

    micro_batch: float
    step: float
    checkpoint: float


def estimate_step_time(arch: ModelArchitecture, *, seq_len: int, batch_size: int, accumulation: int,
                       sequence_parallel: int, activation_checkpointing: bool, on_gpu: bool,
                       state_bytes_per_rank: float, head_dim: int | None = None) -> StepTime:
    """Pessimistic per-rank times of a stage (see the module docstring).

    >>> a = ModelArchitecture(num_layers=32, hidden_size=4096, intermediate_size=14336,
    ...     num_attention_heads=32, num_key_value_heads=8, vocab_size=128256)
    >>> t = estimate_step_time(a, seq_len=65536, batch_size=1, accumulation=32, sequence_parallel=8,
    ...                        activation_checkpointing=True, on_gpu=True, state_bytes_per_rank=14 * 8.03e9 / 8)
    >>> round(t.micro_batch, 1), round(t.step), round(t.checkpoint, 1)
    (10.9, 349, 52.3)
    """
    tokens = seq_len * batch_size / max(1, sequence_parallel)
    k = 8 if activation_checkpointing else 6
    flops = k * (parameter_count(arch, head_dim) * tokens + arch.num_layers * arch.hidden_size * tokens * seq_len)
    micro = flops / (ASSUMED_GPU_FLOPS if on_gpu else ASSUMED_CPU_FLOPS)
    return StepTime(micro_batch=micro, step=micro * max(1, accumulation),
                    checkpoint=state_bytes_per_rank / ASSUMED_WRITE_BYTES_PER_SECOND)


def termination_grace_seconds(step: StepTime | None) -> int:
    """The pod grace period that lets a preempted trainer checkpoint (see the module docstring).

    >>> termination_grace_seconds(StepTime(micro_batch=10.9, step=349.0, checkpoint=52.3))
    240
    >>> quick = StepTime(micro_batch=0.01, step=0.04, checkpoint=0.1)
    >>> termination_grace_seconds(quick), termination_grace_seconds(None)
    (120, 600)
    """
    if step is None:
        return DEFAULT_GRACE_SECONDS
    seconds = GRACE_MARGIN * (step.micro_batch + step.checkpoint) + GRACE_BASE_SECONDS
    minutes = math.ceil(seconds / 60) * 60
    return int(min(MAX_GRACE_SECONDS, max(MIN_GRACE_SECONDS, minutes)))


#: Seconds of the grace period kept for the torchrun agent itself after its workers exit (teardown,
#: rendezvous close, exit code): the workers get the rest.
AGENT_EXIT_SECONDS = 10
#: The environment variable torchrun's agent reads its worker shutdown timeout from.
SHUTDOWN_TIMEOUT_ENV = "TORCH_ELASTIC_SHUTDOWN_TIMEOUT"


def agent_shutdown_seconds(grace_seconds: int) -> int:
    """The torchrun agent's SIGTERM → SIGKILL timeout for its workers, inside the pod's grace period.

    >>> agent_shutdown_seconds(900), agent_shutdown_seconds(30)
    (890, 20)
    """
    return max(1, grace_seconds - AGENT_EXIT_SECONDS)
