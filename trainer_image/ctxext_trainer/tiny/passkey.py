"""Passkey samples for training the tiny base model (the prompt format of the evaluation).

The classic passkey task (Mohtashami & Jaggi 2023), sized for byte-level models: repeated filler
sentences, one needle sentence with a random 5-digit key at a chosen depth, and the question at the
end. The whole sample (prompt + answer) is exactly ``length`` tokens, so samples of one length stack
into a batch without padding. When :mod:`ctxext_trainer.eval` provides a passkey generator this
module delegates to it, so the base model is trained on the format it is evaluated with.

>>> from ctxext_trainer.tokenizer import ByteTokenizer
>>> import random
>>> s = make_passkey_sample(random.Random(0), ByteTokenizer(), length=128, depth=0.5)
>>> len(s.prompt_ids) + len(s.answer_ids)
128
>>> ByteTokenizer().decode(s.answer_ids) == " " + s.key
True
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from ctxext_trainer.tokenizer import ByteTokenizer, Tokenizer

FILLER = "The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again. "
NEEDLE = "The pass key is {key}. "
QUESTION = "What is the pass key? The pass key is"
ANSWER = " {key}"


@dataclass(frozen=True)
class PasskeySample:
    """One sample: the prompt, the expected greedy continuation, and where the key sits."""

    prompt_ids: list[int]
    answer_ids: list[int]
    key: str
    depth: float
    needle_position: int


def _filler(n_chars: int) -> str:
    reps = n_chars // len(FILLER) + 2
    return (FILLER * reps)[:n_chars]


def make_passkey_sample(rng: random.Random, tokenizer: Tokenizer, *, length: int, depth: float) -> PasskeySample:
    """A sample of exactly ``length`` byte tokens with the needle at relative ``depth`` of the filler.

    The needle goes at the sentence boundary nearest to ``depth`` · filler length, so the filler
    stays well-formed; the filler is truncated mid-sentence only at its very end.
    """
    if not isinstance(tokenizer, ByteTokenizer):
        raise TypeError("the tiny passkey generator sizes samples in bytes; use a ByteTokenizer")
    key = f"{rng.randrange(10000, 100000)}"
    needle, answer = NEEDLE.format(key=key), ANSWER.format(key=key)
    budget = length - len(needle) - len(QUESTION) - len(answer)
    if budget < 0:
        raise ValueError(f"length {length} is too short for a passkey sample (needs {length - budget})")
    filler = _filler(budget)
    target = round(depth * budget)
    cuts = [0, len(filler)] + [i + 2 for i in range(len(filler) - 1) if filler[i:i + 2] == ". "]
    cut = min(cuts, key=lambda c: abs(c - target))
    prompt = filler[:cut] + needle + filler[cut:] + QUESTION
    return PasskeySample(prompt_ids=tokenizer.encode(prompt), answer_ids=tokenizer.encode(answer), key=key,
                         depth=depth, needle_position=cut)


def passkey_batch(rng: random.Random, tokenizer: Tokenizer, *, length: int, count: int) -> list[list[int]]:
    """``count`` training sequences (prompt + answer) of ``length`` tokens at uniform random depths."""
    out = []
    for _ in range(count):
        s = make_passkey_sample(rng, tokenizer, length=length, depth=rng.random())
        out.append(s.prompt_ids + s.answer_ids)
    return out
