"""Perplexity by length, and loss by position bucket, on packed held-out text.

Held-out documents (text, or the token cache's documents: :func:`pack_documents`) are packed as in
training (each followed by ``eos``) into one stream, cut into
sequences of exactly ``length`` tokens (the first ``count`` of them, the same text start at every
length). Perplexity at a length is ``exp(mean next-token loss)`` over all its sequences.

Position buckets show whether the loss keeps falling past the old context limit L0: the edges are
L0 and its multiples, and the loss of predicting token ``p`` (from tokens ``0..p-1``) counts in the
bucket holding ``p``. Example, L0 = 128, length 512::

    buckets  [0,128) [128,256) [256,384) [384,512)
    output   "positionLoss": [{"from": 0, "to": 128, "loss": 2.31}, {"from": 128, "to": 256, ...}, ...]

(The first bucket has 127 predictions: token 0 has no context.) Lengths that are not a multiple of
the bucket width end with a shorter bucket.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from ctxext_trainer.eval.generate import token_losses
from ctxext_trainer.eval.parallel import Split, gather, shard
from ctxext_trainer.eval.sharded import sharded_token_losses
from ctxext_trainer.tokenizer import Tokenizer

_CHUNK_CHARS = 20_000


def packed_sequences(texts: Sequence[str], tokenizer: Tokenizer, *, length: int, count: int) -> list[list[int]]:
    """Up to ``count`` sequences of exactly ``length`` tokens from the packed texts.

    >>> from ctxext_trainer.tokenizer import ByteTokenizer
    >>> packed_sequences(["ab", "cd"], ByteTokenizer(), length=3, count=5)
    [[101, 102, 2], [103, 104, 2]]
    """
    need = length * count
    stream: list[int] = []
    for text in texts:
        pos = 0
        while pos < len(text) and len(stream) < need:
            end = min(len(text), pos + _CHUNK_CHARS)
            if end < len(text):  # cut at whitespace so no word is split between chunks
                space = text.rfind(" ", pos + 1, end)
                end = space if space > pos else end
            stream.extend(tokenizer.encode(text[pos:end]))
            pos = end
        if pos >= len(text):
            stream.append(tokenizer.eos_id)
        if len(stream) >= need:
            break
    return [stream[i * length:(i + 1) * length] for i in range(min(count, len(stream) // length))]


def pack_documents(docs: Sequence[Sequence[int]], eos_id: int, *, length: int, count: int) -> list[list[int]]:
    """:func:`packed_sequences` of already tokenized documents (e.g. views into the token cache):
    only the ``length × count`` tokens used are copied.

    >>> import numpy as np
    >>> pack_documents([np.array([5, 6], dtype=np.uint32), [7, 8, 9, 10]], 2, length=3, count=5)
    [[5, 6, 2], [7, 8, 9]]
    """
    need = length * count
    stream: list[int] = []
    for doc in docs:
        stream.extend(np.asarray(doc[:need - len(stream)], dtype=np.int64).tolist())
        if len(stream) < need:
            stream.append(eos_id)
        if len(stream) >= need:
            break
    return [stream[i * length:(i + 1) * length] for i in range(min(count, len(stream) // length))]


def bucket_edges(length: int, width: int) -> list[tuple[int, int]]:
    """``[from, to)`` position buckets of a length.

    >>> bucket_edges(512, 128)
    [(0, 128), (128, 256), (256, 384), (384, 512)]
    >>> bucket_edges(300, 128)
    [(0, 128), (128, 256), (256, 300)]
    """
    width = max(1, width)
    return [(a, min(a + width, length)) for a in range(0, length, width)]


@dataclass(frozen=True)
class SequenceLoss:
    """Loss sums of one evaluated sequence."""

    length: int
    index: int
    nll_sum: float
    tokens: int
    bucket_sums: list[float]
    bucket_counts: list[int]


def sequence_loss(nll: torch.Tensor, *, length: int, index: int, width: int) -> SequenceLoss:
    """Sums of one sequence's ``[length - 1]`` next-token losses, overall and per bucket."""
    sums, counts = [], []
    for a, b in bucket_edges(length, width):
        part = nll[max(a, 1) - 1:b - 1]  # predictions of tokens a..b-1
        sums.append(float(part.double().sum()))
        counts.append(int(part.numel()))
    return SequenceLoss(length, index, float(nll.double().sum()), int(nll.numel()), sums, counts)


def run_perplexity(model: Any, tokenizer: Tokenizer, texts: Sequence[str] | None, *, lengths: Sequence[int],
                   count: int, bucket_width: int, rank: int, world_size: int, tokens_per_batch: int,
                   split: Callable[[int], Split] | None = None, token_docs: Sequence[Sequence[int]] | None = None
                   ) -> tuple[dict[int, float], dict[int, list[dict[str, float]]]]:
    """(perplexity by length, position-loss buckets by length); lengths without text are left out.
    ``token_docs`` (tokenized documents) replace ``texts`` when given. ``split(length)``: how that
    length's sequences are spread (default: each rank alone)."""
    def pack(length: int) -> list[list[int]]:
        if token_docs is not None:
            return pack_documents(token_docs, tokenizer.eos_id, length=length, count=count)
        return packed_sequences(texts or [], tokenizer, length=length, count=count)

    pool = pack(max(lengths))
    local: list[SequenceLoss] = []
    for length in sorted(lengths):
        # Shorter lengths reuse the start of the longest sequences, or pack afresh if there are none.
        seqs = [s[:length] for s in pool] if pool else pack(length)
        how = split(length) if split else Split(rank, world_size)
        per_call = 1 if how.group is not None else max(1, tokens_per_batch // length)
        for batch in shard(seqs, rank=how.part, world_size=how.parts, batch=per_call):
            if how.group is not None:
                nll = sharded_token_losses(model, batch[0][1], how.group, tokenizer.pad_id)[None]
            else:
                nll = token_losses(model, torch.tensor([s for _, s in batch], dtype=torch.long)).cpu()
            local += [sequence_loss(nll[j], length=length, index=i, width=bucket_width)
                      for j, (i, _) in enumerate(batch) if i >= 0 and how.lead]
    results = gather(local, world_size)
    perplexity: dict[int, float] = {}
    buckets: dict[int, list[dict[str, float]]] = {}
    for length in sorted(lengths):
        mine = [r for r in results if r.length == length]
        tokens = sum(r.tokens for r in mine)
        if not tokens:
            continue
        perplexity[length] = math.exp(min(sum(r.nll_sum for r in mine) / tokens, 700.0))
        rows = []
        for k, (a, b) in enumerate(bucket_edges(length, bucket_width)):
            n = sum(r.bucket_counts[k] for r in mine)
            if n:
                rows.append({"from": a, "to": b, "loss": sum(r.bucket_sums[k] for r in mine) / n})
        buckets[length] = rows
    return perplexity, buckets
