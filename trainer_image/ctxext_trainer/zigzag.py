"""Zigzag ring attention: which tokens each rank holds, which block it computes at each ring step,
and the exact merge of partial softmaxes. Pure tensor math; the communication is in
:mod:`ctxext_trainer.ring_attention`.

**Chunk assignment.** With ``R`` ring ranks a sequence is cut into ``2R`` equal chunks and ring
rank ``g`` holds chunks ``g`` and ``2R − 1 − g`` — one early, one late — so that under causal
attention every rank does the same work (a contiguous split would give the last rank ``2R − 1``
times the first one's). Inside a ring rank the two chunks, concatenated in that order, are split
contiguously over its ``U`` Ulysses ranks; after Ulysses' all-to-all each of them sees the ring
rank's whole local sequence (for a subset of heads), positions increasing.

Worked example, L = 16, ring R = 2, Ulysses U = 2 (chunks of 4)::

    chunks          c0 = 0..3   c1 = 4..7   c2 = 8..11   c3 = 12..15
    ring rank 0     c0 + c3 = [0 1 2 3 | 12 13 14 15]   ulysses 0: 0..3,   ulysses 1: 12..15
    ring rank 1     c1 + c2 = [4 5 6 7 |  8  9 10 11]   ulysses 0: 4..7,   ulysses 1: 8..11

**Ring schedule.** At step ``s`` ring rank ``r`` holds the K/V of rank ``j = (r − s) mod R`` and
computes one block (causal by global position); halves are its two chunks:

* ``j == r``: its own K/V, causal — the local order is position order, so the plain lower-triangular
  mask is the global causal mask;
* ``j < r``: both query chunks see all of ``j``'s early chunk and none of its late one →
  all queries × the first K/V half, unmasked;
* ``j > r``: only the late query chunk sees ``j`` (both of ``j``'s chunks lie between ``r``'s) →
  the second query half × all K/V, unmasked.

Each off-diagonal step is half a local block, whatever ``r`` is: the load balance.

**Merge.** Blocks give ``(out_b, lse_b)``, the softmax-weighted values and the log-sum-exp of the
scores over the block's keys. Two blocks over disjoint keys combine exactly::

    lse = log(e^lse_a + e^lse_b)       out = out_a · e^(lse_a − lse) + out_b · e^(lse_b − lse)

e.g. a query whose scores are [0] in block a and [log 3] in block b: lse_a = 0, lse_b = log 3,
lse = log 4, weights 1/4 and 3/4 — the softmax over all four "units" of mass, as one block would.
"""

from __future__ import annotations

from enum import Enum

import torch


class Block(Enum):
    """The block ring rank ``r`` computes against rank ``j``'s keys and values."""

    DIAGONAL = "causal: all queries x all keys"
    EARLY_KEYS = "all queries x the first half of the keys"
    LATE_QUERIES = "the second half of the queries x all keys"


def ring_block(r: int, j: int) -> Block:
    """The block of ring step with rank ``j``'s K/V (module docstring).

    >>> [ring_block(1, j).name for j in (0, 1, 2)]
    ['EARLY_KEYS', 'DIAGONAL', 'LATE_QUERIES']
    """
    if j == r:
        return Block.DIAGONAL
    return Block.EARLY_KEYS if j < r else Block.LATE_QUERIES


def zigzag_chunks(ring_rank: int, ring: int) -> tuple[int, int]:
    """The two chunks (of ``2 · ring``) ring rank ``ring_rank`` holds.

    >>> [zigzag_chunks(g, 4) for g in range(4)]
    [(0, 7), (1, 6), (2, 5), (3, 4)]
    """
    return ring_rank, 2 * ring - 1 - ring_rank


def shard_ranges(length: int, *, ring: int, ulysses: int, ring_rank: int, ulysses_rank: int) -> list[tuple[int, int]]:
    """Token ranges ``[lo, hi)`` of one sequence of ``length`` that a rank holds, in order.

    Without a ring this is the contiguous ``1/ulysses`` shard; with one, the rank's part of the
    zigzag layout (module docstring).

    >>> shard_ranges(16, ring=1, ulysses=4, ring_rank=0, ulysses_rank=2)
    [(8, 12)]
    >>> [shard_ranges(16, ring=2, ulysses=2, ring_rank=0, ulysses_rank=u) for u in (0, 1)]
    [[(0, 4)], [(12, 16)]]
    >>> shard_ranges(16, ring=2, ulysses=1, ring_rank=1, ulysses_rank=0)
    [(4, 8), (8, 12)]
    >>> shard_ranges(24, ring=2, ulysses=3, ring_rank=0, ulysses_rank=1)  # a shard across the seam
    [(4, 6), (18, 20)]
    """
    if ring == 1:
        shard = length // ulysses
        return [(ulysses_rank * shard, (ulysses_rank + 1) * shard)]
    if length % (2 * ring) or (2 * (length // (2 * ring))) % ulysses:
        raise ValueError(f"length {length} cannot be cut into {2 * ring} chunks split over {ulysses} Ulysses ranks")
    chunk = length // (2 * ring)
    early, late = zigzag_chunks(ring_rank, ring)
    local = 2 * chunk // ulysses
    lo, hi = ulysses_rank * local, (ulysses_rank + 1) * local  # inside [early chunk | late chunk]
    out: list[tuple[int, int]] = []
    if lo < chunk:
        out.append((early * chunk + lo, early * chunk + min(hi, chunk)))
    if hi > chunk:
        out.append((late * chunk + max(lo, chunk) - chunk, late * chunk + hi - chunk))
    return out


def shard_indices(length: int, *, ring: int, ulysses: int, ring_rank: int, ulysses_rank: int) -> list[int]:
    """:func:`shard_ranges` as a flat list of token indices.

    >>> shard_indices(8, ring=2, ulysses=1, ring_rank=0, ulysses_rank=0)
    [0, 1, 6, 7]
    """
    return [i for lo, hi in shard_ranges(length, ring=ring, ulysses=ulysses, ring_rank=ring_rank,
                                         ulysses_rank=ulysses_rank) for i in range(lo, hi)]


def merge_into(out: torch.Tensor, lse: torch.Tensor, block_out: torch.Tensor, block_lse: torch.Tensor) -> None:
    """Fold a block's ``(block_out, block_lse)`` into the running ``(out, lse)``, in place (fp32).

    ``out``/``block_out`` are (..., s, d), ``lse``/``block_lse`` (..., s); ``lse`` starts at −inf.

    >>> out, lse = torch.zeros(1, 1), torch.full((1,), float("-inf"))
    >>> merge_into(out, lse, torch.tensor([[2.0]]), torch.tensor([0.0]))
    >>> merge_into(out, lse, torch.tensor([[6.0]]), torch.tensor([3.0]).log())
    >>> round(out.item(), 4), round(lse.exp().item(), 4)  # (2·1 + 6·3) / 4, 1 + 3
    (5.0, 4.0)
    """
    new = torch.logaddexp(lse, block_lse)
    out.mul_(torch.exp(lse - new).unsqueeze(-1)).add_(block_out * torch.exp(block_lse - new).unsqueeze(-1))
    lse.copy_(new)
