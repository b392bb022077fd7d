"""Per-step overhead knobs of one stage: the ZeRO stage in effect, selective activation
checkpointing, the SDPA backend order, and what actually ran (for the log and the stage result).

* **ZeRO on one rank.** ZeRO partitions model states over ranks; with one rank there is nothing to
  partition, and ZeRO-2/3 still pay for it (ZeRO-3: a gather/release hook around every module,
  parameter prefetch bookkeeping; ZeRO-2: gradient buckets copied into a flat partition). A
  single-rank stage therefore runs ZeRO-1 — DeepSpeed's ZeRO optimizer (fp32 master weights, bf16
  gradients: DeepSpeed picks its bf16 optimizer only with ``grad_accum_dtype`` fp32, which the
  trainer sets at ZeRO 2–3), no partitioning — whatever the spec asked for
  (``CTXEXT_SINGLE_RANK_ZERO_STAGE`` overrides, e.g. 0 or 3 to compare).
* **Selective checkpointing.** The planner picks how many decoder layers recompute
  (``checkpointed_layers``); they are spread evenly over the depth and the others keep their
  activations.
* **SDPA backends.** With ``CTXEXT_SDPA_BACKENDS=cudnn,flash,efficient,math`` (any order, any
  subset) the model's forward runs under ``torch.nn.attention.sdpa_kernel(..., set_priority=True)``,
  so e.g. cuDNN attention is tried first on H100/H200; unset = torch's own order. Names that this
  torch does not know are dropped; if none is left, or the priority API is missing, nothing changes.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator
from typing import Any

from ctxext.memory import SINGLE_RANK_ZERO_STAGE

log = logging.getLogger(__name__)
SINGLE_RANK_ZERO_ENV = "CTXEXT_SINGLE_RANK_ZERO_STAGE"
SDPA_BACKENDS_ENV = "CTXEXT_SDPA_BACKENDS"
SINGLE_RANK_ZERO = SINGLE_RANK_ZERO_STAGE


def effective_zero_stage(requested: int, world_size: int) -> int:
    """The ZeRO stage a stage runs with.

    >>> effective_zero_stage(3, 8), effective_zero_stage(3, 1), effective_zero_stage(0, 1)
    (3, 1, 0)
    """
    if world_size > 1:
        return requested
    override = os.environ.get(SINGLE_RANK_ZERO_ENV)
    return int(override) if override else min(requested, SINGLE_RANK_ZERO)


def checkpointed_layer_indices(num_layers: int, count: int | None) -> list[int]:
    """Which decoder layers recompute: ``count`` of them, evenly spread; None = all.

    >>> checkpointed_layer_indices(8, 3), checkpointed_layer_indices(4, None), checkpointed_layer_indices(4, 0)
    ([0, 2, 5], [0, 1, 2, 3], [])
    """
    if count is None or count >= num_layers:
        return list(range(num_layers))
    return [i * num_layers // count for i in range(count)] if count > 0 else []


def decoder_layers(model: Any) -> list[Any]:
    """The HF model's checkpointable decoder layers, in depth order."""
    from transformers.modeling_layers import GradientCheckpointingLayer

    return [m for m in model.modules() if isinstance(m, GradientCheckpointingLayer)]


def enable_activation_checkpointing(model: Any, count: int | None) -> int:
    """Checkpoint ``count`` decoder layers (None = all); returns how many recompute."""
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    layers = decoder_layers(model)
    keep = set(checkpointed_layer_indices(len(layers), count))
    for i, layer in enumerate(layers):
        layer.gradient_checkpointing = i in keep
    return len(keep)


def sdpa_backends(spec: str | None = None) -> list[Any]:
    """The SDPA backends named in ``spec`` (default: the environment), in order, known to this torch.

    >>> [b.name for b in sdpa_backends("flash,nonsense,math")]
    ['FLASH_ATTENTION', 'MATH']
    >>> sdpa_backends("")
    []
    """
    from torch.nn.attention import SDPBackend

    names = {"cudnn": "CUDNN_ATTENTION", "flash": "FLASH_ATTENTION", "efficient": "EFFICIENT_ATTENTION",
             "math": "MATH"}
    text = os.environ.get(SDPA_BACKENDS_ENV, "") if spec is None else spec
    wanted = [names.get(n.strip().lower()) for n in text.split(",") if n.strip()]
    return [getattr(SDPBackend, n) for n in wanted if n and hasattr(SDPBackend, n)]


@contextlib.contextmanager
def sdpa_priority(backends: list[Any]) -> Iterator[None]:
    """``sdpa_kernel(backends, set_priority=True)`` when there are any and torch supports it."""
    if not backends:
        yield
        return
    from torch.nn.attention import sdpa_kernel

    try:
        ctx = sdpa_kernel(backends, set_priority=True)
    except TypeError:  # a torch without set_priority: leave torch's order alone
        yield
        return
    with ctx:
        yield


def runtime_report(*, attention: str, zero_requested: int, zero_stage: int, checkpointed: int | None,
                   num_layers: int, loss_kernel: str, backends: list[Any]) -> dict[str, Any]:
    """What the stage ran with, for the log and ``result.json``'s ``runtime``.

    >>> runtime_report(attention="sdpa", zero_requested=3, zero_stage=1, checkpointed=12, num_layers=16,
    ...                loss_kernel="chunked", backends=[])["activationCheckpointing"]
    '12/16 layers'
    """
    return {"attention": attention, "sdpaBackends": [b.name for b in backends] or "torch default",
            "zeroStage": zero_stage, "zeroStageRequested": zero_requested,
            "activationCheckpointing": "off" if checkpointed is None else f"{checkpointed}/{num_layers} layers",
            "lossKernel": loss_kernel}
