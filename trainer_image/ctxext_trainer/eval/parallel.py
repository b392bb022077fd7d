"""Spreading an evaluation over the ranks of a torch.distributed group, and gathering the results.

Long evaluations run on several ranks by splitting the *work items* (retrieval samples, perplexity
sequences): each rank evaluates whole sequences on its own and the per-item results are gathered
with ``all_gather_object``, so every rank ends with the full result. Within a (task, length) group
the items are padded (with repeats whose results are dropped) to a multiple of
``world_size × batch``, so every rank makes the same number of equally long model calls — a
ZeRO-3-partitioned model, whose every forward gathers weights collectively, keeps working.

Long lengths are split the way training runs them (:func:`split_of`): each sequence group (the
stage's ``sequenceParallel`` ranks) evaluates one sequence together (:mod:`ctxext_trainer.eval.sharded`)
and the groups split the items; only the group's first rank contributes the results to the gather.

Example, 2 ranks, batch 2, 5 items ``a..e`` → padded ``a b c d e a a a`` → rank 0 takes batches
``[a c] [e a]``, rank 1 ``[b d] [a a]``; results of the three padding repeats are dropped.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import torch.distributed as dist

T = TypeVar("T")


def world() -> tuple[int, int]:
    """(rank, world size) of the default process group, or (0, 1) without one."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


@dataclass(frozen=True)
class Split:
    """How one length's items are spread: over ``parts`` parts, this rank's being ``part``; ``lead``
    ranks contribute results (every rank when no sequence is sharded); ``group`` the sequence group
    that evaluates one sequence together (None: this rank alone)."""

    part: int
    parts: int
    lead: bool = True
    group: Any = None


def split_of(rank: int, world_size: int, sequence_group: Any = None) -> Split:
    """Each rank alone, or — with a sequence group of R > 1 ranks (contiguous, as training builds
    them) — world / R groups of R ranks.

    >>> split_of(3, 4)
    Split(part=3, parts=4, lead=True, group=None)
    """
    ranks = dist.get_world_size(sequence_group) if sequence_group is not None else 1
    if ranks <= 1:
        return Split(rank, world_size)
    return Split(rank // ranks, world_size // ranks, dist.get_rank(sequence_group) == 0, sequence_group)


def shard(items: Sequence[T], *, rank: int, world_size: int, batch: int) -> list[list[tuple[int, T]]]:
    """This rank's batches of ``(item index, item)``; index −1 marks a padding repeat.

    >>> [[i for i, _ in b] for b in shard("abcde", rank=1, world_size=2, batch=2)]
    [[1, 3], [-1, -1]]
    >>> [[i for i, _ in b] for b in shard("abc", rank=0, world_size=1, batch=16)]  # batch capped at 3
    [[0, 1, 2]]
    """
    if not items:
        return []
    batch = max(1, min(batch, -(-len(items) // world_size)))  # never more padding than one short round
    per_round = world_size * batch
    total = -(-len(items) // per_round) * per_round
    indexed = [(i if i < len(items) else -1, items[i] if i < len(items) else items[0]) for i in range(total)]
    mine = indexed[rank::world_size]
    return [mine[k:k + batch] for k in range(0, len(mine), batch)]


def gather(local: list[Any], world_size: int) -> list[Any]:
    """Concatenation of every rank's list (rank order); the local list itself on one process."""
    if world_size == 1:
        return list(local)
    parts: list[Any] = [None] * world_size
    dist.all_gather_object(parts, local)
    return [x for part in parts for x in part]
