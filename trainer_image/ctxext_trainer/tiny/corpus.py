"""The demo corpus shipped with ctxext (``builtin://tiny-corpus``): documents, split and streamed.

Each record (``{"text": ...}``) of each ``*.jsonl`` file in the corpus directory is one document
(SOURCE.txt, the licence note, is not). Every ``holdout_every``-th document is held out for
evaluation and never trained on.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

from ctxext.model_info import BUILTIN_DIR

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
