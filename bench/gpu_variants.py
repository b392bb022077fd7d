"""Trainer variants that ``gpu_throughput.py --variants`` runs side by side with the plain loop.

Each variant is the same real ``-m ctxext_trainer`` stage with a few knobs turned, so a table shows
what each overhead costs (all on the same GPU, in the same run):

=============  ==================================================================================
``default``    what ctxext runs: ZeRO-1 on one rank (nothing partitioned), fused LM head + CE
               (Liger's on CUDA when installed), the planner's selective activation checkpointing
               for this GPU's memory, torch's SDPA backend order, fused AdamW
``zero3``      the choices before issue #16: ZeRO-3 on one rank (``CTXEXT_SINGLE_RANK_ZERO_STAGE=3``;
               the chunked, recomputed CE follows), every layer checkpointed (fused AdamW and one
               host sync per step apply to every variant)
``cudnn``      ``default`` with SDPA backends tried cuDNN → flash → efficient → math
``fullckpt``   ``default`` with every layer checkpointed
=============  ==================================================================================
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

#: Share of the GPU's memory the automatic checkpointing choice may plan for (the planner uses 0.9
#: of gpuMemoryGiB; the bench leaves a little more room: an OOM cell would cost the run a row).
MEMORY_FRACTION = 0.85


@dataclass(frozen=True)
class Variant:
    name: str
    env: dict[str, str] = field(default_factory=dict)
    all_layers: bool = False
    """Checkpoint every layer instead of the planner's selective choice."""


VARIANTS: dict[str, Variant] = {
    "default": Variant("default"),
    "zero3": Variant("zero3", env={"CTXEXT_SINGLE_RANK_ZERO_STAGE": "3"}, all_layers=True),
    "cudnn": Variant("cudnn", env={"CTXEXT_SDPA_BACKENDS": "cudnn,flash,efficient,math"}),
    "fullckpt": Variant("fullckpt", all_layers=True),
}


def parse_variants(text: str) -> list[Variant]:
    """The variants named in ``text``, in order.

    >>> [v.name for v in parse_variants("default, zero3")]
    ['default', 'zero3']
    >>> parse_variants("nope")
    Traceback (most recent call last):
    ...
    ValueError: unknown trainer variant 'nope'; known: default, zero3, cudnn, fullckpt
    """
    out = []
    for name in (n.strip() for n in text.split(",") if n.strip()):
        if name not in VARIANTS:
            raise ValueError(f"unknown trainer variant {name!r}; known: {', '.join(VARIANTS)}")
        out.append(VARIANTS[name])
    return out


def architecture(shape: dict[str, Any]) -> Any:
    from ctxext.api.spec import ModelArchitecture

    return ModelArchitecture(num_layers=shape["num_hidden_layers"], hidden_size=shape["hidden_size"],
                             intermediate_size=shape["intermediate_size"],
                             num_attention_heads=shape["num_attention_heads"],
                             num_key_value_heads=shape["num_key_value_heads"], vocab_size=shape["vocab_size"],
                             tie_word_embeddings=shape["tie_word_embeddings"])


def checkpointed_layers(shape: dict[str, Any], seq_len: int, memory_gib: float | None, variant: Variant) -> int | None:
    """Layers the stage recomputes: all (None) for ``all_layers`` or without a GPU size, else the
    planner's choice — the fewest whose estimate fits :data:`MEMORY_FRACTION` of the GPU.

    >>> from gpu_throughput import ONE_B_SHAPE
    >>> checkpointed_layers(ONE_B_SHAPE, 65536, 80.0, VARIANTS["default"]) < 16
    True
    >>> checkpointed_layers(ONE_B_SHAPE, 65536, 80.0, VARIANTS["fullckpt"]) is None
    True
    """
    if variant.all_layers or memory_gib is None:
        return None
    from ctxext.memory import estimate_memory
    from ctxext.planner import checkpointed_layer_count

    arch = architecture(shape)

    def total(c: int) -> float:
        return estimate_memory(arch, seq_len=seq_len, batch_size=1, world_size=1, sequence_parallel=1, zero_stage=1,
                               activation_checkpointing=True, on_gpu=True, checkpointed_layers=c).total

    return checkpointed_layer_count(arch.num_layers, None, total, MEMORY_FRACTION * memory_gib)
