"""How one sequence's ranks are split between DeepSpeed-Ulysses and ring attention. Pure.

A sequence-parallel degree ``sp`` is ``ulysses × ring``:

* **Ulysses** (DeepSpeed-Ulysses) swaps sequence shards for head shards with two all-to-alls per
  attention layer, so each of its ``ulysses`` ranks attends over the ring rank's whole local
  sequence for ``heads / ulysses`` of the heads. It needs ``ulysses`` to divide the attention heads,
  and the key/value heads and ``ulysses`` to divide one another (each KV head is split, or
  replicated on ``ulysses / kv`` ranks, which multiplies its K/V all-to-all traffic).
* **Ring** (zigzag ring attention, :mod:`ctxext_trainer.ring_attention`) passes K/V blocks around
  ``ring`` groups and merges the partial softmaxes exactly; it has no head limit, only a length one:
  the sequence is cut into ``2 · ring`` chunks (zigzag load balance), each split over the Ulysses
  ranks, so ``seqLen`` must be a multiple of ``2 · sp``.

The automatic split (``spec.parallelism.ringDegree`` unset) keeps Ulysses within the key/value
heads — ``ulysses = gcd(sp, kv heads)``, the largest Ulysses degree that splits KV heads without
replicating them — and runs the rest as a ring. Worked examples for Llama-3-8B (32 heads, 8 KV)::

    sp  8  → ulysses 8 × ring 1     (plain Ulysses)
    sp 16  → ulysses 8 × ring 2
    sp 32  → ulysses 8 × ring 4
    sp 12  → ulysses 4 × ring 3     (12 and 8 share 4)

An explicit ``ringDegree`` r gives ``ulysses = sp / r``; ``ringDegree: 1`` asks for Ulysses only
and is refused where Ulysses cannot split the heads (sp 12 on 8 KV heads: neither divides the
other; sp 64 on 32 attention heads).
"""

from __future__ import annotations

import math
from dataclasses import dataclass


class LayoutError(ValueError):
    """A sequence-parallel layout that cannot run; the message says why in plain words."""


@dataclass(frozen=True)
class SPLayout:
    """Ranks of one sequence: ``ulysses`` head-sharding ranks inside each of ``ring`` ring ranks."""

    ulysses: int
    ring: int
    kv_heads: int | None = None

    @property
    def degree(self) -> int:
        return self.ulysses * self.ring

    @property
    def token_multiple(self) -> int:
        """Sequence lengths must be a multiple of this: ``sp``, or ``2 · sp`` with a ring (zigzag).

        >>> SPLayout(8, 1).token_multiple, SPLayout(8, 2).token_multiple
        (8, 32)
        """
        return self.degree * (2 if self.ring > 1 else 1)

    def describe(self) -> str:
        """One line for ``ctxext plan``.

        >>> SPLayout(8, 2, kv_heads=8).describe()
        'SP 16 = Ulysses 8 (1 KV head per rank) x ring 2 (zigzag)'
        >>> SPLayout(4, 1, kv_heads=2).describe()
        'SP 4 = Ulysses 4 (each of 2 KV heads replicated on 2 ranks)'
        """
        if self.degree == 1:
            return "no sequence parallelism"
        parts = [f"SP {self.degree} ="]
        if self.ulysses > 1:
            kv = ""
            if self.kv_heads:
                kv = (f" ({self.kv_heads // self.ulysses} KV head{'s' if self.kv_heads // self.ulysses > 1 else ''}"
                      " per rank)" if self.kv_heads % self.ulysses == 0 else
                      f" (each of {self.kv_heads} KV heads replicated on {self.ulysses // self.kv_heads} ranks)")
            parts.append(f"Ulysses {self.ulysses}{kv}")
        if self.ring > 1:
            parts.append(("x " if self.ulysses > 1 else "") + f"ring {self.ring} (zigzag)")
        return " ".join(parts)


def ulysses_problem(ulysses: int, heads: int | None, kv_heads: int | None) -> str | None:
    """Why Ulysses cannot split ``heads`` / ``kv_heads`` over ``ulysses`` ranks (None: it can).

    >>> ulysses_problem(8, 32, 8) is None, ulysses_problem(16, 32, 8) is None
    (True, True)
    >>> ulysses_problem(12, 32, 8)
    'Ulysses 12 must divide the 32 attention heads'
    >>> ulysses_problem(6, 24, 8)
    'Ulysses 6 and the 8 key/value heads must divide one another (split or replicate each KV head)'
    """
    if ulysses <= 1 or heads is None:
        return None
    if heads % ulysses:
        return f"Ulysses {ulysses} must divide the {heads} attention heads"
    kv = kv_heads or heads
    if kv % ulysses and ulysses % kv:
        return (f"Ulysses {ulysses} and the {kv} key/value heads must divide one another "
                "(split or replicate each KV head)")
    return None


def choose_layout(sp: int, heads: int | None, kv_heads: int | None, ring: int | None = None) -> SPLayout:
    """The Ulysses × ring split of ``sp``; ``ring`` None = automatic. :class:`LayoutError` if impossible.

    >>> choose_layout(16, 32, 8), choose_layout(12, 32, 8).ring, choose_layout(4, 4, 2, ring=1).ulysses
    (SPLayout(ulysses=8, ring=2, kv_heads=8), 3, 4)
    >>> choose_layout(16, None, None)  # no architecture known: Ulysses only, as before
    SPLayout(ulysses=16, ring=1, kv_heads=None)
    >>> choose_layout(12, 32, 8, ring=1)
    Traceback (most recent call last):
    ...
    ctxext.sp_layout.LayoutError: sequence-parallel degree 12 with ringDegree 1 runs Ulysses 12, but Ulysses 12 \
must divide the 32 attention heads; leave ringDegree unset for the automatic split (Ulysses 4 x ring 3) or ...
    """
    kv = (kv_heads or heads) if heads else None
    if ring is None:
        ring = sp // math.gcd(sp, kv) if kv else 1
    if sp % ring:
        raise LayoutError(f"ringDegree {ring} must divide the sequence-parallel degree {sp}")
    layout = SPLayout(ulysses=sp // ring, ring=ring, kv_heads=kv)
    problem = ulysses_problem(layout.ulysses, heads, kv)
    if problem:
        auto = choose_layout(sp, heads, kv)
        raise LayoutError(f"sequence-parallel degree {sp} with ringDegree {ring} runs Ulysses {layout.ulysses}, but "
                          f"{problem}; leave ringDegree unset for the automatic split (Ulysses {auto.ulysses} x ring "
                          f"{auto.ring}) or pick a ringDegree that divides {sp}")
    return layout


def length_problem(seq_len: int, layout: SPLayout) -> str | None:
    """Why ``seq_len`` cannot be cut for ``layout`` (None: it can).

    >>> length_problem(4096, SPLayout(8, 2)) is None
    True
    >>> length_problem(4080, SPLayout(8, 2))
    'seqLen 4080 must be a multiple of 32 (2 x SP 16: zigzag ring attention cuts each sequence into 2 x ring ...'
    """
    m = layout.token_multiple
    if seq_len % m == 0:
        return None
    if layout.ring > 1:
        return (f"seqLen {seq_len} must be a multiple of {m} (2 x SP {layout.degree}: zigzag ring attention cuts "
                "each sequence into 2 x ring chunks, each split over the Ulysses ranks)")
    return f"seqLen {seq_len} must be a multiple of the sequence-parallel degree {layout.degree}"
