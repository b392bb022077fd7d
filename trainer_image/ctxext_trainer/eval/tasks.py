"""Retrieval tasks: build one prompt of an exact token budget, and score the greedy answer.

Every prompt is ``[prefix] [instruction] haystack-with-facts question`` and the model must
continue with the answer. The fact and question wording matches the trainer's synthetic retrieval
samples (``ctxext_trainer.data.augment``), so a stage trained with them is tested on the same form.
The one-line instruction is included only when it leaves ≥ 3/4 of the length for the haystack
(short lengths of byte-level models have no room for it). Layouts (``…`` = haystack)::

    passkey           There is an important info hidden inside a lot of irrelevant text. ...
                      … The pass key is 48213. Remember it. 48213 is the pass key. …
                      What is the pass key? The pass key is            → " 48213"
    needle            … The special magic number for amber-falcon is 7302114. …
                      What is the special magic number for amber-falcon?
                      The special magic number for amber-falcon is       → " 7302114"
    multiKeyNiah      four such needles with different keys (the asked one at the depth, the
                      others at seeded depths); the question names one key → its number
    multiValueNiah    four needles of ONE key with different numbers ("One of the special magic
                      numbers for amber-falcon is 7302114.", the first at the depth, the others at
                      seeded depths); "What are all the special magic numbers for amber-falcon?"
                                                                         → all four, any order
    variableTracking  … VAR QXKTB = 48213. … VAR LMOPA = VAR QXKTB. … (4 hops, the first at the
                      depth, the rest spread evenly to the end)
                      Question: Which variables are assigned the value 48213? Answer: they are
                                                                         → " QXKTB LMOPA ..."

passkey uses the classic repeated filler (Mohtashami & Jaggi); the others use corpus text.
Token counts are exact: ``len(prompt) + max_new_tokens <= length`` for every sample.

Scoring is exact: for the single-answer tasks the first run of digits in the generated text must
equal the number; for multiValueNiah every number and for variableTracking every variable of the
chain must appear in it (RULER's all-match). The last three are RULER's (Hsieh et al. 2024) NIAH
multi-key, multi-value and variable-tracking tasks, on this corpus.
"""

from __future__ import annotations

import random
import re
import string
from dataclasses import dataclass

from ctxext_trainer.eval.haystack import SentencePool, insert_facts
from ctxext_trainer.tokenizer import Tokenizer

RETRIEVAL_TASKS = ("passkey", "needle", "multiKeyNiah", "multiValueNiah", "variableTracking")
CORPUS_TASKS = ("needle", "multiKeyNiah", "multiValueNiah", "variableTracking")
ALL_MATCH_TASKS = ("multiValueNiah", "variableTracking")
"""Tasks whose answer is several items, every one of which must appear."""
WORDS = ("amber", "falcon", "river", "cobalt", "maple", "quartz", "harbor", "willow", "ember", "summit",
         "lantern", "meadow", "cedar", "orbit", "velvet", "canyon")
INSTRUCTIONS = {
    "passkey": "There is an important info hidden inside a lot of irrelevant text. Find it and memorize it. "
               "I will quiz you about the important information there.",
    "needle": "A special magic number is hidden within the following text. Make sure to memorize it. "
              "I will quiz you about it afterwards.",
    "multiKeyNiah": "Some special magic numbers are hidden within the following text. Make sure to memorize "
                    "them. I will quiz you about one of them afterwards.",
    "multiValueNiah": "Some special magic numbers are hidden within the following text. Make sure to memorize "
                      "them. I will quiz you about all of them afterwards.",
    "variableTracking": "Memorize and track the chain of variable assignments hidden in the following text.",
}
MULTI_KEYS = 4
MULTI_VALUES = 4
VT_HOPS = 4
_ANSWER_MARGIN = 2


class PromptTooLong(ValueError):
    """The prompt without any haystack does not fit the length."""


@dataclass(frozen=True)
class Sample:
    """One prompt of a (task, length, depth) cell."""

    task: str
    length: int
    depth: float
    index: int
    input_ids: list[int]
    answer: str
    """Expected answer: the number, or the numbers / variable names separated by spaces."""
    max_new_tokens: int
    fact_starts: list[int]
    """Positions in input_ids where each fact starts (the one asked about first)."""
    haystack_tokens: int
    """Tokens of haystack text (facts excluded)."""


def _key(rng: random.Random, taken: set[str]) -> str:
    while True:
        key = f"{rng.choice(WORDS)}-{rng.choice(WORDS)}"
        if key not in taken:
            taken.add(key)
            return key


def _texts(task: str, depth: float, rng: random.Random) -> tuple[list[tuple[float, str]], str, str]:
    """(facts as (depth, text) with the asked one first, question, answer) of one sample."""
    if task == "passkey":
        v = str(rng.randint(10_000, 99_999))
        return [(depth, f" The pass key is {v}. Remember it. {v} is the pass key.")], \
            " What is the pass key? The pass key is", v
    if task in ("needle", "multiKeyNiah"):
        taken: set[str] = set()
        keys = [_key(rng, taken) for _ in range(1 if task == "needle" else MULTI_KEYS)]
        values = [str(rng.randint(1_000_000, 9_999_999)) for _ in keys]
        depths = [depth] + [rng.random() for _ in keys[1:]]
        facts = [(d, f" The special magic number for {k} is {v}.")
                 for d, k, v in zip(depths, keys, values, strict=True)]
        k = keys[0]
        return facts, f" What is the special magic number for {k}? The special magic number for {k} is", values[0]
    if task == "multiValueNiah":
        k = _key(rng, set())
        taken_values: list[str] = []
        while len(taken_values) < MULTI_VALUES:
            value = str(rng.randint(1_000_000, 9_999_999))
            if value not in taken_values:
                taken_values.append(value)
        depths = [depth] + [rng.random() for _ in taken_values[1:]]
        facts = [(d, f" One of the special magic numbers for {k} is {v}.")
                 for d, v in zip(depths, taken_values, strict=True)]
        return facts, (f" What are all the special magic numbers for {k}? The special magic numbers for {k} are"), \
            " ".join(taken_values)
    if task == "variableTracking":
        v = str(rng.randint(10_000, 99_999))
        names: list[str] = []
        while len(names) < VT_HOPS + 1:
            name = "".join(rng.choice(string.ascii_uppercase) for _ in range(5))
            if name not in names:
                names.append(name)
        depths = [depth + (1.0 - depth) * i / VT_HOPS for i in range(VT_HOPS + 1)]
        facts = [(depths[0], f" VAR {names[0]} = {v}.")]
        facts += [(d, f" VAR {b} = VAR {a}.") for d, a, b in zip(depths[1:], names[:-1], names[1:], strict=True)]
        return facts, f" Question: Which variables are assigned the value {v}? Answer: they are", " ".join(names)
    raise ValueError(f"unknown retrieval task {task!r}; expected one of {', '.join(RETRIEVAL_TASKS)}")


def prefix_ids(tokenizer: Tokenizer) -> list[int]:
    """Special tokens the model's own tokenizer puts before a text (e.g. Llama-3's BOS); none for bytes."""
    inner = getattr(tokenizer, "_tok", None)  # HFTokenizer keeps the transformers tokenizer here
    if inner is None:
        return []
    with_special = list(inner.encode("a", add_special_tokens=True))
    plain = list(inner.encode("a", add_special_tokens=False))
    return with_special[: len(with_special) - len(plain)] if with_special[-len(plain):] == plain else []


def build_sample(task: str, *, length: int, depth: float, index: int, seed: int, tokenizer: Tokenizer,
                 pool: SentencePool) -> Sample:
    """Sample ``index`` of cell (task, length, depth), deterministic in ``seed``.

    Raises :class:`PromptTooLong` when even an empty haystack would not fit.
    """
    rng = random.Random(f"ctxext-eval:{seed}:{task}:{length}:{depth:.6g}:{index}")
    facts, question, answer = _texts(task, depth, rng)
    enc = tokenizer.encode
    prefix = prefix_ids(tokenizer)
    fact_ids = [(d, enc(t)) for d, t in facts]
    question_ids = enc(question)
    spoken = ", ".join(answer.split()) if task == "multiValueNiah" else answer
    max_new = len(enc(" " + spoken)) + _ANSWER_MARGIN
    fixed = len(prefix) + sum(len(f) for _, f in fact_ids) + len(question_ids) + max_new
    if fixed >= length:
        raise PromptTooLong(f"{task} at {length}: the prompt needs {fixed} tokens before any haystack")
    instruction = enc(INSTRUCTIONS[task])
    if length - fixed - len(instruction) >= 0.75 * length:
        prefix = prefix + instruction
        fixed += len(instruction)
    sentences = pool.take(length - fixed, rng)
    body, starts = insert_facts(sentences, fact_ids)
    ids = prefix + body + question_ids
    return Sample(task=task, length=length, depth=depth, index=index, input_ids=ids, answer=answer,
                  max_new_tokens=max_new, fact_starts=[s + len(prefix) for s in starts],
                  haystack_tokens=sum(len(s) for s in sentences))


_DIGITS = re.compile(r"\d+")
_VAR = re.compile(r"\b[A-Z]{5}\b")


def score(sample: Sample, generated: str) -> bool:
    """Exact-match score of a greedy continuation.

    >>> s = Sample("passkey", 128, 0.5, 0, [], "48213", 8, [0], 0)
    >>> score(s, " 48213. Remember"), score(s, " 4821"), score(s, " 482130")
    (True, False, False)
    >>> v = Sample("variableTracking", 512, 0.0, 0, [], "QXKTB LMOPA", 16, [0], 0)
    >>> score(v, " LMOPA, QXKTB."), score(v, " QXKTB only")
    (True, False)
    >>> m = Sample("multiValueNiah", 512, 0.0, 0, [], "7302114 4410923", 20, [0], 0)
    >>> score(m, " 4410923, 7302114."), score(m, " 7302114, 730211")
    (True, False)
    """
    if sample.task == "variableTracking":
        return set(sample.answer.split()) <= set(_VAR.findall(generated))
    if sample.task == "multiValueNiah":
        return set(sample.answer.split()) <= set(_DIGITS.findall(generated))
    found = _DIGITS.search(generated)
    return found is not None and found.group() == sample.answer
