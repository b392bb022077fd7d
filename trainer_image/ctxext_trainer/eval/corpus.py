"""Evaluation's corpus text, read in the bounded amount evaluation uses (issue 25 item 6).

Stage evaluation runs on every rank. It used to load every document of the corpus as text and
split off the validation documents (``load_documents`` + ``split_documents``): for a 1B-token
corpus, gigabytes of Python strings per rank, only to draw a few haystacks and perplexity
sequences. Evaluation uses at most ``count × longest`` tokens of perplexity text (``packed_sequences``)
and haystacks of at most ``longest`` tokens each; so each rank now streams the corpus in its
deterministic order and keeps a prefix of at most ``max_chars`` characters of documents (the needle
haystack) and ``max_chars`` of held-out documents (perplexity), where::

    max_chars = max(MIN_CHARS, CHARS_PER_TOKEN · longest length · (samples per cell + 1))

``CHARS_PER_TOKEN`` = 8 covers English BPE (about 4 characters per token) with margin, and the byte
tokenizer (1). ``MIN_CHARS`` (2 MiB) keeps small corpora whole, so the needle haystacks, which start
at a seeded sentence of all the sentences read, stay those of the whole corpus for the shipped tiny
corpus (1.4 MB): its evaluation results are unchanged. Documents are classified with the same
seeded draw as ``split_documents`` (and the token cache), so the texts kept are a prefix of what
the full read gave. A text file larger than the
bound is read only up to it; Parquet is read in record batches. Reading stops as soon as both
prefixes are full and a training document has been seen (``split_documents`` keeps the first
document for training when all are held out); with a small ``validationFraction`` the held-out
prefix may need a longer read, but only the kept documents stay in memory.

>>> eval_char_budget([128, 256], samples_per_cell=3)  # the floor
2097152
>>> eval_char_budget([1_048_576], samples_per_cell=4)  # 40 MiB of text at 1M tokens
41943040
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path

from ctxext_trainer.data.sources import _kind, corpus_files, read_documents, resolve_source
from ctxext_trainer.data.token_cache import held_out

CHARS_PER_TOKEN = 8
MIN_CHARS = 2 << 20


def eval_char_budget(lengths: Sequence[int], samples_per_cell: int) -> int:
    """Characters of haystack (and of held-out) text an evaluation at ``lengths`` keeps per rank."""
    return max(MIN_CHARS, CHARS_PER_TOKEN * max(lengths) * (samples_per_cell + 1))


def _file_documents(path: Path, fmt: str, text_field: str, limit: int) -> Iterator[str]:
    kind = _kind(path, fmt)
    if kind == "text":
        with path.open(encoding="utf-8", errors="replace") as fh:
            text = fh.read(limit)
        if text.strip():
            yield text
    elif kind == "parquet":
        import pyarrow.parquet as pq

        for batch in pq.ParquetFile(path).iter_batches(columns=[text_field], batch_size=256):
            for value in batch.column(0).to_pylist():
                if isinstance(value, str) and value.strip():
                    yield value
    else:  # jsonl streams one record at a time
        yield from read_documents(path, fmt=fmt, text_field=text_field)


def read_eval_texts(source: str, *, fmt: str, text_field: str, validation_fraction: float, seed: int,
                    max_chars: int) -> tuple[list[str], list[str]]:
    """(documents, held-out documents): prefixes of at most ``max_chars`` characters each.

    Equal to ``(docs, split_documents(docs, ...)[1])`` of the whole corpus when it holds at most
    ``max_chars`` characters; otherwise their prefixes (the last document cut at the bound).
    """
    docs: list[str] = []
    held: list[str] = []
    doc_chars = held_chars = index = 0
    seen_train = False
    complete = True
    for path in corpus_files(resolve_source(source)):
        for text in _file_documents(path, fmt, text_field, max_chars):
            is_held = held_out(index, validation_fraction, seed)
            index += 1
            seen_train = seen_train or not is_held
            if doc_chars < max_chars:
                docs.append(text[:max_chars - doc_chars])
                doc_chars += len(docs[-1])
            if is_held and held_chars < max_chars:
                held.append(text[:max_chars - held_chars])
                held_chars += len(held[-1])
            if doc_chars >= max_chars and seen_train and (held_chars >= max_chars or validation_fraction <= 0):
                complete = False
                break
        if not complete:
            break
    if complete and index < 2:  # split_documents never splits fewer than two documents
        held = []
    elif complete and not seen_train and held:  # all held out: the first document trains
        held = held[1:]
    return docs, held
