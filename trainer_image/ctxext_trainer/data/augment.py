"""Long-context augmentation: upsampling long documents and synthetic retrieval samples.

``data.longContextUpsampling`` (after Gradient's SlimPajama recipe): short-document corpora rarely
need the full window, so documents of at least ``seq_len / 8`` tokens appear more often in every
epoch — ``min(4, 1 + len // (seq_len / 8) // 2)`` times — which makes sequences that span one long
document more frequent than the corpus mix alone would.

``data.syntheticRetrievalRatio``: that fraction of sequences (chosen per sequence from the seed and
the sequence's number, so resumes see the same choice) carries a retrieval task. The corpus tokens
of the sequence become a haystack; a fact is inserted at a random depth and the sequence ends with
the question and its answer, so the loss on the answer teaches retrieval across the distance::

    passkey: "The pass key is 48213. Remember it. 48213 is the pass key."
             ... haystack ... "What is the pass key? The pass key is 48213."
    needle:  "The special magic number for amber-falcon is 7302114."
             ... haystack ... "What is the special magic number for amber-falcon?
             The special magic number for amber-falcon is 7302114."
"""

from __future__ import annotations

import random
from collections.abc import Callable

from ctxext_trainer.data.packing import PackedSequence, TokenStream

WORDS = ("amber", "falcon", "river", "cobalt", "maple", "quartz", "harbor", "willow", "ember", "summit",
         "lantern", "meadow", "cedar", "orbit", "velvet", "canyon")


def upsampling_weights(doc_lengths: list[int], seq_len: int) -> list[int]:
    """How often each document appears per epoch with long-context upsampling.

    >>> upsampling_weights([10, 200, 1000, 5000], seq_len=1024)
    [1, 2, 4, 4]
    """
    unit = max(1, seq_len // 8)
    return [1 if n < unit else min(4, 1 + (n // unit + 1) // 2) for n in doc_lengths]


def split_documents(docs: list[str], fraction: float, seed: int) -> tuple[list[str], list[str]]:
    """(train, validation): each document is held out with probability ``fraction``; ≥ 1 train doc.

    >>> split_documents(["a", "b", "c"], 0.0, seed=1)
    (['a', 'b', 'c'], [])
    """
    if fraction <= 0 or len(docs) < 2:
        return list(docs), []
    held = [random.Random(f"ctxext-val:{seed}:{i}").random() < fraction for i in range(len(docs))]
    if all(held):
        held[0] = False
    return [d for d, h in zip(docs, held, strict=True) if not h], [d for d, h in zip(docs, held, strict=True) if h]


def retrieval_texts(task: str, rng: random.Random) -> tuple[str, str, str]:
    """(fact, question, answer) of one synthetic retrieval sample."""
    if task == "needle":
        key = f"{rng.choice(WORDS)}-{rng.choice(WORDS)}"
        value = str(rng.randint(1_000_000, 9_999_999))
        fact = f" The special magic number for {key} is {value}. "
        question = f" What is the special magic number for {key}? The special magic number for {key} is"
        return fact, question, f" {value}."
    value = str(rng.randint(10_000, 99_999))
    fact = f" The pass key is {value}. Remember it. {value} is the pass key. "
    return fact, " What is the pass key? The pass key is", f" {value}."


def is_synthetic(seed: int, sequence_number: int, ratio: float) -> bool:
    """Whether sequence ``sequence_number`` carries a synthetic retrieval task."""
    return ratio > 0 and random.Random(f"ctxext-synth:{seed}:{sequence_number}").random() < ratio


def synthetic_sequence(stream: TokenStream, n: int, *, task: str, seed: int, sequence_number: int,
                       encode: Callable[[str], list[int]]) -> PackedSequence | None:
    """A retrieval sample of ``n`` tokens built on the stream's next tokens; None if it cannot fit."""
    rng = random.Random(f"ctxext-synth-sample:{seed}:{sequence_number}")
    fact, question, answer = (encode(t) for t in retrieval_texts(task, rng))
    filler_len = n - len(fact) - len(question) - len(answer)
    if filler_len < 1:
        return None
    haystack = stream.take(filler_len)
    depth = rng.randint(0, filler_len)
    tokens = haystack[:depth] + fact + haystack[depth:] + question + answer
    return PackedSequence(input_ids=tokens, labels=[*tokens[1:], -100])
