"""Sequence parallelism, Ulysses × ring: process groups and the model's attention routing.

``sequence_parallel = ulysses · ring`` ranks share one sequence (rank layout in
:mod:`ctxext_trainer.distributed`). Three kinds of groups:

* **Ulysses** (contiguous ``ulysses`` ranks): DeepSpeed's ``parallel_state_sp`` groups, built by
  ``UlyssesSPAttentionHF.register_with_transformers``, which wraps the model's attention function
  with the all-to-all (sequence shards → head shards and back); its ``mpu`` goes to
  ``deepspeed.initialize``, so DeepSpeed treats the Ulysses ranks as sequence-parallel and every
  other rank as data-parallel.
* **ring** (ranks with the same Ulysses rank in one sequence): the attention function under the
  Ulysses wrapper is then ``"ctxext_ring"`` (:mod:`ctxext_trainer.ring_attention`), which passes
  K/V blocks around this group. With ring only (Ulysses 1) it is the model's attention directly.
* **sequence** (all ``sp`` ranks of a sequence): the loss's token count is summed over it.

The loss scale that makes DeepSpeed's gradient reduction the single-process gradient under every
layout is :func:`ctxext_trainer.loss.sequence_parallel_loss_scale`.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import torch.distributed as torch_dist

from ctxext_trainer import ring_attention
from ctxext_trainer.distributed import Topology

log = logging.getLogger(__name__)


@dataclass
class SequenceParallel:
    """This rank's sequence-parallel groups (all None without sequence parallelism)."""

    mpu: Any = None
    """DeepSpeed's Ulysses groups for ``deepspeed.initialize`` (None without Ulysses)."""
    sequence_group: Any = None
    """All ranks of this rank's sequence."""
    ring_group: Any = None
    """This rank's ring group (None without a ring)."""
    attention: str = "sdpa"
    """What computes attention, for the log and the stage result."""

    def attach(self, model: Any) -> None:
        """Route a (further) model's attention through the ring, as :func:`setup_sequence_parallel`
        did for the first one (the Ulysses wrapper is global: nothing to do for it)."""
        if self.ring_group is not None:
            model.set_attn_implementation(ring_attention.NAME)


def group_ranks(world: int, sp: int, ring: int) -> tuple[list[list[int]], list[list[int]]]:
    """(sequence groups, ring groups) as rank lists, in the order every rank must create them.

    >>> group_ranks(8, 4, 2)
    ([[0, 1, 2, 3], [4, 5, 6, 7]], [[0, 2], [1, 3], [4, 6], [5, 7]])
    >>> group_ranks(4, 4, 4)[1]
    [[0, 1, 2, 3]]
    """
    ulysses = sp // ring
    sequences = [list(range(d * sp, (d + 1) * sp)) for d in range(world // sp)]
    rings = [[d * sp + g * ulysses + u for g in range(ring)] for d in range(world // sp) for u in range(ulysses)]
    return sequences, rings


def _new_groups(topo: Topology) -> tuple[Any, Any]:
    """Create every sequence and ring group (collectively, on all ranks); return this rank's."""
    sequences, rings = group_ranks(topo.world_size, topo.sp_size, topo.ring_size)
    mine_seq = mine_ring = None
    for ranks in sequences:
        group = torch_dist.new_group(ranks)
        if topo.rank in ranks:
            mine_seq = group
    if topo.ring_size > 1:
        for ranks in rings:
            group = torch_dist.new_group(ranks)
            if topo.rank in ranks:
                mine_ring = group
    return mine_seq, mine_ring


def setup_sequence_parallel(model: Any, topo: Topology, micro_batch_size: int, attn_implementation: str,
                            device: str = "cpu") -> SequenceParallel:
    """Build the groups and route the model's attention through Ulysses and / or the ring.

    Evaluation runs unsharded (Ulysses' ``disable_in_eval``, the ring function's eval fallback):
    each rank then sees whole sequences.
    """
    if topo.sp_size <= 1:
        return SequenceParallel(attention=attn_implementation)
    sequence_group, ring_group = _new_groups(topo)
    core = attn_implementation
    if topo.ring_size > 1:
        ring_attention.register(ring_group)
        core = ring_attention.NAME
    ulysses = f"Ulysses {topo.ulysses_size}" + ("" if topo.ring_size > 1 else f" ({attn_implementation})")
    parts = ([ulysses] if topo.ulysses_size > 1 else []) + (
        [f"ring {topo.ring_size} ({ring_attention.kernel_name(device)})"] if topo.ring_size > 1 else [])
    sp = SequenceParallel(mpu=None, sequence_group=sequence_group, ring_group=ring_group, attention=" x ".join(parts))
    sp.attach(model)
    if topo.ulysses_size > 1:
        from deepspeed.runtime.sequence_parallel.ulysses_sp import UlyssesSPAttentionHF

        sp.mpu = UlyssesSPAttentionHF.register_with_transformers(
            model_name_or_path=model, core_attn_implementation=core,
            sequence_parallel_size=topo.ulysses_size, micro_batch_size=micro_batch_size,
            seq_length_is_variable=True, disable_in_eval=True)
    if topo.is_rank0:
        log.info("sequence parallel %d: %s", topo.sp_size, sp.attention)
    return sp
