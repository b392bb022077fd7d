"""Gradient and weight statistics of a DeepSpeed engine, computed from the pieces each rank owns.

Every rank contributes the part of each parameter's gradient it is responsible for, and one
all-reduce of a small vector (two numbers per parameter) gives global values:

* ZeRO-3: the rank's partition (``safe_get_local_grad`` / ``ds_tensor``);
* ZeRO-1/2: the rank's fragment of the flat optimizer partition (``_hp_mapping``);
* ZeRO-0: gradients are replicated after the all-reduce, so rank ``r`` of ``W`` takes elements
  ``[r·n/W, (r+1)·n/W)`` of each flattened gradient.

Layers are named by the first two parts of a parameter name below ``model.``
(``layers.0``, ``embed_tokens``, ``norm``) or ``lm_head``.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Any

import torch

from ctxext_trainer.distributed import all_reduce_sum


@dataclass
class GradStats:
    """Global gradient health of one optimizer step."""

    grad_norm: float
    nonfinite: int
    layer_norms: dict[str, float] = field(default_factory=dict)
    extra: list[float] = field(default_factory=list)
    """The ``extra`` numbers passed to :func:`gradient_stats`, summed over ranks."""

    @property
    def max_layer(self) -> tuple[str, float]:
        return max(self.layer_norms.items(), key=lambda kv: kv[1]) if self.layer_norms else ("", 0.0)

    @property
    def min_layer(self) -> tuple[str, float]:
        return min(self.layer_norms.items(), key=lambda kv: kv[1]) if self.layer_norms else ("", 0.0)


def layer_name(param_name: str) -> str:
    """Group a parameter name into its layer.

    >>> layer_name("lm.model.layers.11.self_attn.q_proj.weight")
    'layers.11'
    >>> layer_name("lm.lm_head.weight"), layer_name("lm.model.embed_tokens.weight")
    ('lm_head', 'embed_tokens')
    """
    name = re.sub(r"^(module\.)?(lm\.)?(model\.)?", "", param_name)
    parts = name.split(".")
    return ".".join(parts[:2]) if parts[0] == "layers" and len(parts) > 1 else parts[0]


def _rank_slice(t: torch.Tensor, rank: int, world: int) -> torch.Tensor:
    flat = t.reshape(-1)
    n = flat.numel()
    return flat[rank * n // world:(rank + 1) * n // world]


def owned_grad(param: torch.nn.Parameter, zero_stage: int, rank: int, world: int) -> torch.Tensor | None:
    """The piece of ``param``'s gradient this rank accounts for (None = nothing)."""
    if zero_stage == 3:
        from deepspeed.utils import safe_get_local_grad

        return safe_get_local_grad(param)
    if zero_stage in (1, 2):
        mapping = getattr(param, "_hp_mapping", None)
        if mapping is None:
            return None
        frag = mapping.get_lp_grad_fragment(param._index_in_param_group).reshape(-1)  # type: ignore[attr-defined]
        address = mapping.lp_fragment_address
        if frag.numel() == param.numel() and frag.numel() != address.numel:
            frag = frag.narrow(0, address.start, address.numel)
        return frag
    return None if param.grad is None else _rank_slice(param.grad, rank, world)


def owned_weight(param: torch.nn.Parameter, zero_stage: int, rank: int, world: int) -> torch.Tensor:
    """The piece of ``param``'s weights this rank accounts for."""
    if zero_stage == 3:
        return param.ds_tensor.reshape(-1)  # type: ignore[attr-defined]
    return _rank_slice(param.data, rank, world)


def gradient_stats(named_params: list[tuple[str, torch.nn.Parameter]], zero_stage: int, rank: int,
                   world: int, extra: torch.Tensor | None = None) -> GradStats:
    """Global grad norm, non-finite count and per-layer norms (one all-reduce, one device→host copy).

    ``extra`` (float64, on any device) rides along in the same all-reduce and copy: the train loop
    passes the step's loss sums, so a step costs one host synchronisation for both."""
    device = torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available() else torch.device("cpu")
    parts: list[torch.Tensor] = []
    for _, p in named_params:
        g = owned_grad(p, zero_stage, rank, world)
        if g is None or g.numel() == 0:
            parts.append(torch.zeros(2, dtype=torch.float64, device=device))
            continue
        g = g.detach().float()
        finite = torch.isfinite(g)
        part = torch.stack([torch.where(finite, g, 0.0).double().pow(2).sum(), (~finite).sum().double()])
        parts.append(part.to(device, non_blocking=True))
    n_extra = 0 if extra is None else extra.numel()
    if extra is not None:
        parts.append(extra.detach().double().reshape(-1).to(device))
    # one device→host copy for all parameters (no per-parameter synchronisation on GPU)
    sums = torch.cat(parts).cpu() if parts else torch.zeros(0, dtype=torch.float64)
    all_reduce_sum(sums)
    extra_sums = sums[len(sums) - n_extra:].tolist() if n_extra else []
    sums = sums[:len(sums) - n_extra]
    layers: dict[str, float] = {}
    for i, (name, _) in enumerate(named_params):
        key = layer_name(name)
        layers[key] = layers.get(key, 0.0) + float(sums[2 * i])
    nonfinite = int(sums[1::2].sum())
    total = float(sums[0::2].sum())
    return GradStats(grad_norm=math.sqrt(total) if nonfinite == 0 else math.nan, nonfinite=nonfinite,
                     layer_norms={k: math.sqrt(v) for k, v in layers.items()}, extra=extra_sums)


def snapshot_owned_weights(named_params: list[tuple[str, torch.nn.Parameter]], zero_stage: int, rank: int,
                           world: int) -> list[torch.Tensor]:
    """fp32 copies of the owned weight pieces (for the update-to-weight ratio)."""
    return [owned_weight(p, zero_stage, rank, world).detach().float().clone() for _, p in named_params]


def update_to_weight_ratio(before: list[torch.Tensor], named_params: list[tuple[str, torch.nn.Parameter]],
                           zero_stage: int, rank: int, world: int) -> float:
    """‖w_after − w_before‖ / ‖w_before‖ over the whole model (one all-reduce, one host copy)."""
    parts = [torch.stack([(owned_weight(p, zero_stage, rank, world).detach().float() - old).double().pow(2).sum(),
                          old.double().pow(2).sum()]) for old, (_, p) in zip(before, named_params, strict=True)]
    sums = torch.stack(parts).sum(0).cpu() if parts else torch.zeros(2, dtype=torch.float64)
    all_reduce_sum(sums)
    return math.sqrt(float(sums[0])) / max(math.sqrt(float(sums[1])), 1e-30)


def engine_named_params(engine: Any) -> list[tuple[str, torch.nn.Parameter]]:
    return [(n, p) for n, p in engine.module.named_parameters() if p.requires_grad]
