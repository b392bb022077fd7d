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

``data.syntheticHaystack``: ``corpus`` (above: the fact at a random token of the training text),
``filler`` (the evaluation's own prompt, built by :func:`ctxext_trainer.eval.tasks.build_sample` on
the classic repeated filler, the fact on a sentence boundary, then the answer), or ``mixed`` (each
sample picks one from its seed). A filler prompt is shorter than the sequence, so the sequence
starts with the stream's next text and an ``eos`` before it::

    n = 128:  "...end of a corpus document" EOS " The grass is green. The pass key is 48213. Remember
              it. 48213 is the pass key. The sky is blue. What is the pass key? The pass key is 48213."

The evaluation scores passkey on the classic filler, so a small model that must learn retrieval
during the extension learns it on exactly the form it is tested on. Measured on the tiny demo
(examples/tiny-cpu.yaml, 80% filler samples): passkey at 1024 went from 0.00 to 0.94 in two stages;
from an earlier base, 90% ``mixed`` samples instead lost retrieval in stage 2 (0.40 at 128).
"""

from __future__ import annotations

import random
from collections.abc import Callable

from ctxext_trainer.data.packing import PackedSequence, TokenStream
from ctxext_trainer.eval.haystack import SentencePool
from ctxext_trainer.eval.tasks import PromptTooLong, build_sample
from ctxext_trainer.tokenizer import Tokenizer

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
                       encode: Callable[[str], list[int]], haystack: str = "corpus",
                       tokenizer: Tokenizer | None = None, filler: SentencePool | None = None
                       ) -> PackedSequence | None:
    """A retrieval sample of ``n`` tokens built on the stream's next tokens; None if it cannot fit.

    ``haystack`` "filler" and "mixed" need ``tokenizer`` (and reuse ``filler``, the classic pool)."""
    rng = random.Random(f"ctxext-synth-sample:{seed}:{sequence_number}")
    if haystack == "filler" or (haystack == "mixed" and rng.random() < 0.5):
        if tokenizer is None:
            raise ValueError("a filler haystack needs the tokenizer")
        return filler_sequence(stream, n, task=task, rng=rng, tokenizer=tokenizer,
                               pool=filler or SentencePool.classic(tokenizer.encode))
    fact, question, answer = (encode(t) for t in retrieval_texts(task, rng))
    filler_len = n - len(fact) - len(question) - len(answer)
    if filler_len < 1:
        return None
    text = stream.take(filler_len)
    depth = rng.randint(0, filler_len)
    tokens = text[:depth] + fact + text[depth:] + question + answer
    return PackedSequence(input_ids=tokens, labels=[*tokens[1:], -100])


def filler_sequence(stream: TokenStream, n: int, *, task: str, rng: random.Random, tokenizer: Tokenizer,
                    pool: SentencePool) -> PackedSequence | None:
    """The evaluation's prompt for ``task`` on the classic filler, answered, after the stream's next
    tokens and an ``eos``, ``n`` tokens in all; None when the prompt cannot fit ``n``."""
    try:
        sample = build_sample(task, length=n, depth=rng.random(), index=rng.randrange(1 << 30),
                              seed=rng.randrange(1 << 31), tokenizer=tokenizer, pool=pool)
    except PromptTooLong:
        return None
    body = sample.input_ids + tokenizer.encode(f" {sample.answer}.")
    lead = n - len(body)  # ≥ 1: the prompt leaves max_new_tokens ≥ len(answer) + 2 free
    tokens = ([*stream.take(lead - 1), tokenizer.eos_id] if lead > 0 else []) + body[:n]
    return PackedSequence(input_ids=tokens, labels=[*tokens[1:], -100])
