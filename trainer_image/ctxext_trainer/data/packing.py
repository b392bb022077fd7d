"""Pack tokenized documents into full-length training sequences, deterministically and resumably.

Documents are concatenated, each followed by the tokenizer's ``eos`` id, into one endless token
stream; every training sequence is the next ``n`` tokens of the stream. No padding, no token is
dropped: a document that does not fit continues in the next sequence. Each epoch visits the
documents in a fresh order shuffled from ``seed`` and the epoch number. The stream's position is a
small :class:`StreamState` (epoch, document index, token offset) saved in every checkpoint, so a
resumed run continues at the exact token.

Labels are the inputs shifted by one (next-token prediction); the label of the last input is the
stream's next token (peeked, not consumed), so shards of the sequence can be cut *after* shifting
(sequence parallelism) without losing a label at the seams.

Worked example — ByteTokenizer (``a`` = 101, ``b`` = 102, ``c`` = 103, ``d`` = 104, eos = 2),
documents ``["ab", "cd"]``, epoch order [0, 1], sequences of 4 tokens::

    stream      a   b   EOS c   d   EOS | a   b ...      (epoch 1 may reorder the documents)
    sequence 1  input_ids [101, 102,   2, 103]   labels [102,   2, 103, 104]
                position_ids [0, 1, 2, 3]
    sequence 2  input_ids [104,   2, 101, 102]   labels [  2, 101, 102, <next token>]
                state after: epoch 1, document 0 of the epoch order, offset 2

Attention is plain causal over the whole packed sequence (documents see their predecessors
through the ``eos`` separator), the usual choice for long-context continued pre-training: it is
what teaches the model to use distant tokens, and it keeps SDPA / flash attention on the fast
``is_causal`` path. ``position_ids`` run 0..n−1 for the same reason.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np


@dataclass
class StreamState:
    """Position in the token stream: ``order[doc]`` of ``epoch``, token ``offset`` inside it."""

    epoch: int = 0
    doc: int = 0
    offset: int = 0
    sequences: int = 0
    """Sequences drawn so far (keys per-sequence randomness such as synthetic samples)."""

    def to_dict(self) -> dict[str, int]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, int]) -> StreamState:
        return cls(**{k: int(v) for k, v in data.items()})


def epoch_order(num_docs: int, seed: int, epoch: int, weights: list[int] | None = None) -> list[int]:
    """Document order of one epoch: each document ``weights[i]`` times (default once), shuffled.

    >>> epoch_order(4, seed=1, epoch=0) == epoch_order(4, seed=1, epoch=0)
    True
    >>> sorted(epoch_order(3, seed=1, epoch=0, weights=[1, 2, 1]))
    [0, 1, 1, 2]
    """
    order = [i for i in range(num_docs) for _ in range(weights[i] if weights else 1)]
    random.Random(f"ctxext-epoch:{seed}:{epoch}").shuffle(order)
    return order


class TokenStream:
    """Endless stream over ``docs`` (token lists), each followed by ``eos_id``.

    >>> s = TokenStream([[101, 102], [103, 104]], eos_id=2, seed=0, shuffle=False)
    >>> s.take(4), s.peek()
    ([101, 102, 2, 103], 104)
    >>> s.take(4), s.state.epoch
    ([104, 2, 101, 102], 1)
    """

    def __init__(self, docs: Sequence[Any], *, eos_id: int, seed: int, shuffle: bool = True,
                 weights: list[int] | None = None, state: StreamState | None = None):
        if not docs:
            raise ValueError("the token stream needs at least one document")
        self.docs = docs  # not copied: lists, or views into the memory-mapped token cache (numpy arrays)
        self.eos_id, self.seed, self.shuffle, self.weights = eos_id, seed, shuffle, weights
        self.state = state or StreamState()
        self._orders: dict[int, list[int]] = {}

    def _order(self, epoch: int) -> list[int]:
        if epoch not in self._orders:
            if self.shuffle:
                self._orders = {epoch: epoch_order(len(self.docs), self.seed, epoch, self.weights)}
            else:
                self._orders = {epoch: [i for i in range(len(self.docs))
                                        for _ in range(self.weights[i] if self.weights else 1)]}
        return self._orders[epoch]

    def _read(self, n: int, state: StreamState) -> list[int]:
        out: list[int] = []
        while len(out) < n:
            order = self._order(state.epoch)
            doc = self.docs[order[state.doc]]
            size = len(doc)  # the document is followed by eos, at offset ``size``
            end = min(size + 1, state.offset + n - len(out))
            if state.offset < min(end, size):
                piece = doc[state.offset:min(end, size)]
                out.extend(piece.tolist() if isinstance(piece, np.ndarray) else piece)
            if end > size:
                out.append(self.eos_id)
            state.offset = end
            if state.offset > size:
                state.doc, state.offset = state.doc + 1, 0
                if state.doc >= len(order):
                    state.epoch, state.doc = state.epoch + 1, 0
        return out

    def take(self, n: int) -> list[int]:
        """The next ``n`` tokens (consumed)."""
        return self._read(n, self.state)

    def peek(self) -> int:
        """The next token, not consumed."""
        probe = StreamState(**self.state.to_dict())
        return self._read(1, probe)[0]


@dataclass(frozen=True)
class PackedSequence:
    """One training sequence: inputs, next-token labels (−100 = ignored) and positions."""

    input_ids: list[int]
    labels: list[int]

    @property
    def position_ids(self) -> list[int]:
        return list(range(len(self.input_ids)))


def next_packed(stream: TokenStream, n: int) -> PackedSequence:
    """The next ``n``-token sequence of the stream, with its shifted labels."""
    tokens = stream.take(n)
    return PackedSequence(input_ids=tokens, labels=[*tokens[1:], stream.peek()])
