"""Tokenizers the trainer and the evaluation use: a byte tokenizer for the tiny demo models, and any
Hugging Face tokenizer saved with a real model. Both expose the same small interface.

A model directory holding ``ctxext_tokenizer.json`` with ``{"type": "bytes"}`` uses
:class:`ByteTokenizer`: ids 0–3 are special (pad, bos, eos, sep), byte ``b`` is id ``b + 4``, so
the vocabulary has 260 entries.

>>> tok = ByteTokenizer()
>>> tok.encode("Hi")
[76, 109]
>>> tok.decode([76, 109, tok.eos_id])
'Hi'
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Protocol

BYTE_TOKENIZER_FILE = "ctxext_tokenizer.json"


class Tokenizer(Protocol):
    """What ctxext needs from a tokenizer."""

    @property
    def vocab_size(self) -> int: ...

    @property
    def eos_id(self) -> int: ...

    @property
    def bos_id(self) -> int | None: ...

    @property
    def pad_id(self) -> int: ...

    def encode(self, text: str) -> list[int]: ...

    def decode(self, ids: list[int]) -> str: ...


class ByteTokenizer:
    """UTF-8 bytes shifted by 4; 0 pad, 1 bos, 2 eos, 3 sep."""

    OFFSET = 4
    vocab_size = 256 + OFFSET
    pad_id, bos_id, eos_id, sep_id = 0, 1, 2, 3

    def encode(self, text: str) -> list[int]:
        return [b + self.OFFSET for b in text.encode("utf-8")]

    def decode(self, ids: list[int]) -> str:
        return bytes(i - self.OFFSET for i in ids if i >= self.OFFSET).decode("utf-8", errors="replace")

    def save(self, directory: str | Path) -> None:
        Path(directory, BYTE_TOKENIZER_FILE).write_text(json.dumps({"type": "bytes", "vocab_size": self.vocab_size}))


class HFTokenizer:
    """Adapter around a transformers tokenizer (loaded offline from the model directory)."""

    def __init__(self, tok: Any):
        self._tok = tok
        self.vocab_size = len(tok)
        self.eos_id = tok.eos_token_id if tok.eos_token_id is not None else 0
        self.bos_id = tok.bos_token_id
        self.pad_id = tok.pad_token_id if tok.pad_token_id is not None else self.eos_id

    def encode(self, text: str) -> list[int]:
        return list(self._tok.encode(text, add_special_tokens=False))

    def decode(self, ids: list[int]) -> str:
        return str(self._tok.decode(ids, skip_special_tokens=True))

    def save(self, directory: str | Path) -> None:
        self._tok.save_pretrained(str(directory))


def load_tokenizer(model_dir: str | Path) -> ByteTokenizer | HFTokenizer:
    """The tokenizer saved with a model directory."""
    marker = Path(model_dir, BYTE_TOKENIZER_FILE)
    if marker.exists():
        return ByteTokenizer()
    from transformers import AutoTokenizer

    return HFTokenizer(AutoTokenizer.from_pretrained(str(model_dir), local_files_only=True))
