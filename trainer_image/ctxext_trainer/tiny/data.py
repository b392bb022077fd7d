"""Training data of the tiny base model: the shipped corpus and passkey rows.

Corpus (``builtin://tiny-corpus``): each record (``{"text": ...}``) of each ``*.jsonl`` file in the
corpus directory is one document (SOURCE.txt, the licence note, is not). Every ``holdout_every``-th
document is held out for evaluation and never trained on.

Passkey rows are in the evaluation's own prompt format.

The rows come from :func:`ctxext_trainer.eval.tasks.build_sample` — the prompts the evaluation
scores — followed by the answer, so the base model is trained on exactly the form it is tested on::

    … The grass is green. The pass key is 48213. Remember it. 48213 is the pass key. The sky is blue.
    What is the pass key? The pass key is 48213.

Half of the rows use the classic filler haystack (the evaluation's), half real corpus sentences
(like the trainer's synthetic retrieval samples in the extension stages). The key's depth is uniform
in [0, 1]. Rows shorter than the batch length are padded on the right; padding carries label -100.
Training seeds are drawn from [10^9, 2·10^9), apart from every evaluation seed of the examples.

Short-fact rows (``short=True``) state the key once, ``" The pass key is 48213."`` (23 bytes instead of
the evaluation's 59), so at 128 tokens the key can sit anywhere from right before the question to
~100 tokens back, where the evaluation's own prompt leaves only 23 bytes of haystack to move it in.

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

import json
import random
from pathlib import Path

from ctxext.model_info import BUILTIN_DIR
from ctxext_trainer.eval.haystack import SentencePool, insert_facts
from ctxext_trainer.eval.tasks import build_sample
from ctxext_trainer.tokenizer import ByteTokenizer

CORPUS_DIR = BUILTIN_DIR / "tiny-corpus"


def corpus_documents(directory: str | Path = CORPUS_DIR) -> list[str]:
    """All documents of the corpus files, in file-name order."""
    docs: list[str] = []
    for path in sorted(Path(directory).glob("*.jsonl")):
        for line in path.read_text(encoding="utf-8").splitlines():
            text = json.loads(line)["text"] if line.strip() else ""
            if text.strip():
                docs.append(text.strip())
    if not docs:
        raise FileNotFoundError(f"no corpus documents in {directory}")
    return docs


def split_documents(docs: list[str], holdout_every: int = 20) -> tuple[list[str], list[str]]:
    """(train, held_out): every ``holdout_every``-th document is held out.

    >>> split_documents([str(i) for i in range(6)], holdout_every=3)
    (['1', '2', '4', '5'], ['0', '3'])
    """
    train = [d for i, d in enumerate(docs) if i % holdout_every]
    held = [d for i, d in enumerate(docs) if not i % holdout_every]
    return train, held


class TokenStream:
    """Random windows of a token stream made of documents joined by newlines (bytes: ``\\n`` = 14)."""

    def __init__(self, ids: list[int]):
        self.ids = ids

    @classmethod
    def from_documents(cls, docs: list[str], encode: object) -> TokenStream:
        text = "\n".join(docs) + "\n"
        return cls(encode(text))  # type: ignore[operator]

    def window(self, rng: random.Random, length: int) -> list[int]:
        start = rng.randrange(0, len(self.ids) - length)
        return self.ids[start:start + length]

    def windows_in_order(self, length: int, count: int) -> list[list[int]]:
        """The first ``count`` non-overlapping windows (held-out evaluation, deterministic)."""
        return [self.ids[i * length:(i + 1) * length] for i in range(min(count, len(self.ids) // length))]


IGNORE = -100
SEED_RANGE = (10**9, 2 * 10**9)


def passkey_pools(tokenizer: ByteTokenizer, corpus_texts: list[str]) -> tuple[SentencePool, SentencePool]:
    """(classic filler, corpus sentences) haystack pools."""
    return SentencePool.classic(tokenizer.encode), SentencePool.from_texts(corpus_texts, tokenizer.encode)


def passkey_row(rng: random.Random, tokenizer: ByteTokenizer, pools: tuple[SentencePool, SentencePool], *,
                length: int, short: bool = False) -> tuple[list[int], list[int], int]:
    """(input_ids, labels, answer start) of one passkey sample padded to ``length``.

    >>> tok = ByteTokenizer()
    >>> ids, labels, at = passkey_row(random.Random(1), tok, passkey_pools(tok, ["A b. C d."]), length=128,
    ...                               short=True)
    >>> text = tok.decode(ids[:at + 6])
    >>> text.count("pass key is") == 2 and "Remember" not in text and text[-5:] == text.split("key is ")[1][:5]
    True
    """
    pool = pools[rng.randrange(2)]
    if short:
        return _short_row(rng, tokenizer, pool, length)
    sample = build_sample("passkey", length=length, depth=rng.random(), index=rng.randrange(1 << 30),
                          seed=rng.randrange(*SEED_RANGE), tokenizer=tokenizer, pool=pool)
    return _padded(tokenizer, sample.input_ids + tokenizer.encode(f" {sample.answer}."), length,
                   answer_at=len(sample.input_ids))


def _padded(tokenizer: ByteTokenizer, ids: list[int], length: int, *, answer_at: int
            ) -> tuple[list[int], list[int], int]:
    """(input_ids, labels, answer start) of ``ids`` cut or right-padded to ``length`` (padding labels -100)."""
    ids = ids[:length]
    pad = length - len(ids)
    return ids + [tokenizer.pad_id] * pad, ids + [IGNORE] * pad, min(answer_at, length)


def _short_row(rng: random.Random, tokenizer: ByteTokenizer, pool: SentencePool, length: int
               ) -> tuple[list[int], list[int], int]:
    key = str(rng.randint(10_000, 99_999))
    fact = tokenizer.encode(f" The pass key is {key}.")
    question, answer = tokenizer.encode(" What is the pass key? The pass key is"), tokenizer.encode(f" {key}.")
    haystack = pool.take(max(0, length - len(fact) - len(question) - len(answer)), rng)
    body, _ = insert_facts(haystack, [(rng.random(), fact)])
    return _padded(tokenizer, body + question + answer, length, answer_at=len(body) + len(question))
