"""Haystacks: filler or corpus sentences, tokenized one by one, with facts inserted at depths.

A haystack is a list of sentences, each tokenized on its own with a leading space, so its exact
token count is known while it is built and a fact can only land on a sentence boundary. Depth
``d`` (0 = start, 1 = end) puts the fact after the boundary whose token offset is closest to
``d · (haystack tokens)``, so it sits at the requested depth ± half a sentence.

Worked example with the classic passkey filler (Mohtashami & Jaggi), byte tokens::

    sentences : " The grass is green."(20) " The sky is blue."(17) " The sun is yellow."(19) ...
    budget 60 : the first three fit (56 tokens); the fourth (" Here we go." 12) would not
    depth 0.5 : target offset 28 → boundaries are 0, 20, 37, 56 → after sentence 1 (offset 20)
    result    : " The grass is green." + FACT + " The sky is blue. The sun is yellow."

>>> import random
>>> from ctxext_trainer.tokenizer import ByteTokenizer
>>> sentences = SentencePool.classic(ByteTokenizer().encode).take(60, random.Random(0))
>>> [len(s) for s in sentences]
[20, 17, 19]
>>> ids, starts = insert_facts(sentences, [(0.5, [9, 9])])
>>> starts, len(ids)
([20], 58)

Corpus haystacks (needle tasks) start at a seeded sentence of the corpus and run on, wrapping
around at the end, so each sample sees different real text.
"""

from __future__ import annotations

import random
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

CLASSIC_FILLER = ("The grass is green.", "The sky is blue.", "The sun is yellow.", "Here we go.",
                  "There and back again.")
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")
_MAX_SENTENCE_CHARS = 400


def split_sentences(text: str) -> list[str]:
    """Sentences of a text; whitespace collapsed; very long runs cut at spaces (≤ 400 characters).

    >>> split_sentences("One. Two!  Three?\\nFour")
    ['One.', 'Two!', 'Three?', 'Four']
    """
    out: list[str] = []
    for raw in _SENTENCE_END.split(text):
        sentence = " ".join(raw.split())
        while len(sentence) > _MAX_SENTENCE_CHARS:
            cut = sentence.rfind(" ", 0, _MAX_SENTENCE_CHARS)
            cut = cut if cut > 0 else _MAX_SENTENCE_CHARS
            out.append(sentence[:cut])
            sentence = sentence[cut:].strip()
        if sentence:
            out.append(sentence)
    return out


def read_corpus_texts(path: str | Path) -> list[str]:
    """Documents of a local corpus: a text file, or every .txt/.md/.jsonl ("text" field) file of a
    directory in sorted order. Raises FileNotFoundError with the path when there is nothing."""
    import json

    root = Path(path)
    files = [root] if root.is_file() else sorted(p for p in root.rglob("*") if p.is_file()) if root.is_dir() else []
    texts: list[str] = []
    for f in files:
        if f.suffix in (".jsonl", ".json", ".ndjson"):
            for line in f.read_text(encoding="utf-8", errors="replace").splitlines():
                if line.strip():
                    record = json.loads(line)
                    text = record.get("text") if isinstance(record, dict) else None
                    if isinstance(text, str) and text.strip():
                        texts.append(text)
        elif f.suffix in (".txt", ".md", ".text", ""):
            text = f.read_text(encoding="utf-8", errors="replace")
            if text.strip():
                texts.append(text)
    if not texts:
        raise FileNotFoundError(f"no corpus text (.txt, .md or .jsonl) found at {root}")
    return texts


@dataclass
class SentencePool:
    """Sentences to draw haystacks from, tokenized lazily (each once) with a leading space."""

    sentences: Sequence[str]
    encode: Callable[[str], list[int]]
    cycle_from_start: bool = False
    """True for the classic filler (always start at its first sentence), False for a corpus."""
    _cache: dict[int, list[int]] = field(default_factory=dict, repr=False)

    @classmethod
    def classic(cls, encode: Callable[[str], list[int]]) -> SentencePool:
        return cls(CLASSIC_FILLER, encode, cycle_from_start=True)

    @classmethod
    def from_texts(cls, texts: Sequence[str], encode: Callable[[str], list[int]]) -> SentencePool:
        sentences = [s for t in texts for s in split_sentences(t)]
        if not sentences:
            raise ValueError("the corpus texts hold no sentences")
        return cls(sentences, encode)

    def tokens(self, i: int) -> list[int]:
        i %= len(self.sentences)
        if i not in self._cache:
            self._cache[i] = self.encode(" " + self.sentences[i])
        return self._cache[i]

    def take(self, budget: int, rng: random.Random) -> list[list[int]]:
        """Whole sentences, in order, whose tokens add up to at most ``budget``."""
        i = 0 if self.cycle_from_start else rng.randrange(len(self.sentences))
        out: list[list[int]] = []
        used = 0
        while True:  # every sentence has ≥ 1 token, so this ends
            toks = self.tokens(i)
            if used + len(toks) > budget:
                break
            out.append(toks)
            used += len(toks)
            i += 1
        return out


def boundary_offsets(sentences: Sequence[Sequence[int]]) -> list[int]:
    """Token offsets of the sentence boundaries, 0 and the total included.

    >>> boundary_offsets([[1, 2], [3], [4, 5, 6]])
    [0, 2, 3, 6]
    """
    offsets = [0]
    for s in sentences:
        offsets.append(offsets[-1] + len(s))
    return offsets


def insert_facts(sentences: Sequence[Sequence[int]], facts: Sequence[tuple[float, Sequence[int]]]
                 ) -> tuple[list[int], list[int]]:
    """Join the haystack with each ``(depth, fact_tokens)`` inserted at the boundary nearest to
    ``depth · total``. Facts landing on the same boundary keep their given order. Returns the
    tokens and the start position of each fact (in the order given).

    >>> ids, starts = insert_facts([[10, 11], [12], [13, 14]], [(0.5, [99]), (1.0, [98])])
    >>> ids, starts
    ([10, 11, 99, 12, 13, 14, 98], [2, 6])
    """
    offsets = boundary_offsets(sentences)
    total = offsets[-1]
    slots: list[tuple[int, int]] = []  # (boundary index, fact index)
    for j, (depth, _) in enumerate(facts):
        target = min(max(depth, 0.0), 1.0) * total
        k = min(range(len(offsets)), key=lambda b: (abs(offsets[b] - target), b))
        slots.append((k, j))
    slots.sort()
    ids: list[int] = []
    starts = [0] * len(facts)
    pending = 0
    for k in range(len(offsets)):
        while pending < len(slots) and slots[pending][0] == k:
            j = slots[pending][1]
            starts[j] = len(ids)
            ids.extend(facts[j][1])
            pending += 1
        if k < len(sentences):
            ids.extend(sentences[k])
    return ids, starts
