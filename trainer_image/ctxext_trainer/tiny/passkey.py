"""Passkey training rows for the tiny base model, in the evaluation's own prompt format.

The rows come from :func:`ctxext_trainer.eval.tasks.build_sample` — the prompts the evaluation
scores — followed by the answer, so the base model is trained on exactly the form it is tested on::

    … The grass is green. The pass key is 48213. Remember it. 48213 is the pass key. The sky is blue.
    What is the pass key? The pass key is 48213.

Half of the rows use the classic filler haystack (the evaluation's), half real corpus sentences
(like the trainer's synthetic retrieval samples in the extension stages). The key's depth is uniform
in [0, 1]. Rows shorter than the batch length are padded on the right; padding carries label -100.
Training seeds are drawn from [10^9, 2·10^9), apart from every evaluation seed of the examples.

>>> import random
>>> from ctxext_trainer.tokenizer import ByteTokenizer
>>> tok = ByteTokenizer()
>>> pools = passkey_pools(tok, ["One sentence here. Another one there."])
>>> ids, labels, answer_at = passkey_row(random.Random(0), tok, pools, length=128)
>>> len(ids) == len(labels) == 128 and "The pass key is" in tok.decode(ids)
True
>>> tok.decode(ids[answer_at:answer_at + 6]).strip().isdigit()
True
"""

from __future__ import annotations

import random

from ctxext_trainer.eval.haystack import SentencePool
from ctxext_trainer.eval.tasks import build_sample
from ctxext_trainer.tokenizer import ByteTokenizer

IGNORE = -100
SEED_RANGE = (10**9, 2 * 10**9)


def passkey_pools(tokenizer: ByteTokenizer, corpus_texts: list[str]) -> tuple[SentencePool, SentencePool]:
    """(classic filler, corpus sentences) haystack pools."""
    return SentencePool.classic(tokenizer.encode), SentencePool.from_texts(corpus_texts, tokenizer.encode)


def passkey_row(rng: random.Random, tokenizer: ByteTokenizer, pools: tuple[SentencePool, SentencePool], *,
                length: int) -> tuple[list[int], list[int], int]:
    """(input_ids, labels, answer start) of one passkey sample padded to ``length``."""
    pool = pools[rng.randrange(2)]
    sample = build_sample("passkey", length=length, depth=rng.random(), index=rng.randrange(1 << 30),
                          seed=rng.randrange(*SEED_RANGE), tokenizer=tokenizer, pool=pool)
    ids = (sample.input_ids + tokenizer.encode(f" {sample.answer}."))[:length]
    pad = length - len(ids)
    return ids + [tokenizer.pad_id] * pad, ids + [IGNORE] * pad, min(len(sample.input_ids), length)
