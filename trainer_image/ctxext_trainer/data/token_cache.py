"""The stage's corpus tokenized once into memory-mapped files that every rank, node and retry shares.

Before, every rank tokenized the whole corpus into Python lists (49 B per token, measured with
tracemalloc: 400 GB per 8-rank node for a 1B-token corpus) at every stage start and retry. Now the
first process to take the cache's lock reads and tokenizes the corpus once, streaming, and writes::

    <output_dir>/token-cache/<key>/tokens.u32    every document's tokens, uint32, back to back
                                   offsets.npy   int64, documents + 1: document i is tokens[o[i]:o[i+1]]
                                   train.npy     bool per document: False = held out for validation
                                   meta.json     counts, bytes per token, build seconds, who built it

It writes into a temporary directory and renames it into place, so a reader never sees half a
cache; the other ranks wait on the lock (``fcntl.flock`` on ``<key>.lock``), then map the files
read-only. The operating system's page cache holds one copy of the tokens per node, whatever the
number of ranks: 4 B per token plus 9 B per document, against 49 B per token per rank before.

Evaluation reads the same cache (:mod:`ctxext_trainer.eval.corpus`): needle haystacks decoded from
its first tokens, perplexity on its held-out documents, so a stage's corpus is read and tokenized
once for training and evaluation together. The base model's evaluation before stage 1 (stage
config ``evaluate_only``, output directory ``<job>/baseline``) runs on stage 1's processes with
stage 1's corpus and tokenizer, so its cache is stage 1's (:func:`cache_root`): whichever runs first
builds it, the other maps it.

**The split** is one boolean per document, ``train.npy``, drawn once at build time (``held_out``:
a seeded draw per document index, probability ``validationFraction``). Training streams the
documents ``i`` with ``train[i]`` (:meth:`TokenCorpus.training`), evaluation's perplexity the token
spans ``tokens[offsets[i]:offsets[i+1]]`` with ``not train[i]`` (:meth:`TokenCorpus.held_out`): two
complementary index sets of one array, so no token is in both.

``<key>`` hashes what the tokens depend on: the corpus files (path, size, mtime), ``data.format``,
``data.textField``, the validation split (``validationFraction``, ``seed``: the same split as
:func:`ctxext_trainer.data.augment.split_documents`), the tokenizer's files and a format version.
A retry or a resumed attempt of the stage (same ``output_dir``) finds the cache and starts at once;
a changed corpus or tokenizer gets a new key. ``$CTXEXT_TOKEN_CACHE`` moves the cache elsewhere
(a node-local disk, for instance).
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import os
import random
import shutil
import socket
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ctxext_trainer.data.sources import corpus_files, read_documents, resolve_source

log = logging.getLogger(__name__)

CACHE_VERSION = 1
CACHE_ENV = "CTXEXT_TOKEN_CACHE"
TOKENIZER_FILES = ("ctxext_tokenizer.json", "tokenizer.json", "tokenizer_config.json", "tokenizer.model",
                   "special_tokens_map.json", "vocab.json", "merges.txt")
_CHUNK = 1 << 20  # tokens buffered before a write


class DocumentTokens(Sequence[np.ndarray]):
    """Documents as read-only views into the mapped token array (no copy).

    >>> d = DocumentTokens(np.arange(5, dtype=np.uint32), np.array([0, 2, 5]), np.array([0, 1]))
    >>> len(d), d[1].tolist(), d.lengths().tolist()
    (2, [2, 3, 4], [2, 3])
    """

    def __init__(self, tokens: np.ndarray, offsets: np.ndarray, ids: np.ndarray):
        self.tokens, self.offsets, self.ids = tokens, offsets, ids

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, i: Any) -> Any:
        if isinstance(i, slice):
            raise TypeError("DocumentTokens takes one document index")
        j = int(self.ids[i])
        return self.tokens[self.offsets[j]:self.offsets[j + 1]]

    def lengths(self) -> np.ndarray:
        return (self.offsets[self.ids + 1] - self.offsets[self.ids]).astype(np.int64)


@dataclass
class TokenCorpus:
    """A mapped cache: all documents, their split, and what building it cost."""

    directory: Path
    tokens: np.ndarray
    offsets: np.ndarray
    train: np.ndarray
    meta: dict[str, Any]
    built: bool
    """Whether this process built the cache (False: it was there, or another process built it)."""

    def training(self) -> DocumentTokens:
        """The training documents, empty ones left out (as :func:`build_stage_data` always did)."""
        nonempty = self.offsets[1:] > self.offsets[:-1]
        return DocumentTokens(self.tokens, self.offsets, np.flatnonzero(self.train & nonempty))

    def held_out(self) -> DocumentTokens:
        """The validation documents (never in :meth:`training`), empty ones left out."""
        nonempty = self.offsets[1:] > self.offsets[:-1]
        return DocumentTokens(self.tokens, self.offsets, np.flatnonzero(~self.train & nonempty))


def held_out(index: int, fraction: float, seed: int) -> bool:
    """The validation draw of document ``index`` (the one of ``split_documents``)."""
    return fraction > 0 and random.Random(f"ctxext-val:{seed}:{index}").random() < fraction


def cache_key(source: str, *, fmt: str, text_field: str, validation_fraction: float, seed: int,
              tokenizer_dir: Path) -> str:
    """Hex key of everything the cached tokens depend on."""
    root = resolve_source(source)
    files = [(str(p.relative_to(root)) if p != root else p.name, p.stat().st_size, p.stat().st_mtime_ns)
             for p in corpus_files(root)]
    tok = hashlib.sha256()
    for name in TOKENIZER_FILES:
        path = tokenizer_dir / name
        if path.is_file():
            tok.update(name.encode() + b"\0" + path.read_bytes())
    payload = json.dumps({"v": CACHE_VERSION, "root": str(root), "files": files, "format": fmt,
                          "textField": text_field, "validationFraction": validation_fraction, "seed": seed,
                          "tokenizer": tok.hexdigest(), "tokenizerSource": str(tokenizer_dir)}, sort_keys=True)
    return hashlib.sha256(payload.encode()).hexdigest()[:24]


def _documents(source: str, fmt: str, text_field: str) -> Iterator[str]:
    for path in corpus_files(resolve_source(source)):
        yield from read_documents(path, fmt=fmt, text_field=text_field)


def build_cache(directory: Path, documents: Iterator[str], encode: Any, *, validation_fraction: float,
                seed: int) -> dict[str, Any]:
    """Tokenize ``documents`` into ``directory`` (created; streaming: one chunk of tokens in memory)."""
    started = time.monotonic()
    directory.mkdir(parents=True)
    offsets, held, buffer, total, pending = [0], [], [], 0, 0
    with (directory / "tokens.u32").open("wb") as fh:
        for i, text in enumerate(documents):
            ids = encode(text)
            buffer.append(np.asarray(ids, dtype=np.uint32))
            total, pending = total + len(ids), pending + len(ids)
            offsets.append(total)
            held.append(held_out(i, validation_fraction, seed))
            if pending >= _CHUNK:
                np.concatenate(buffer).tofile(fh)
                buffer, pending = [], 0
        if buffer:
            np.concatenate(buffer).tofile(fh)
    docs = len(held)
    if docs < 2:  # split_documents: fewer than two documents are never split, and one always trains
        held = [False] * docs
    elif all(held):
        held[0] = False
    np.save(directory / "offsets.npy", np.asarray(offsets, dtype=np.int64))
    np.save(directory / "train.npy", ~np.asarray(held, dtype=bool))
    meta: dict[str, Any] = {"version": CACHE_VERSION, "documents": docs, "tokens": total,
            "heldOutDocuments": int(sum(held)), "buildSeconds": round(time.monotonic() - started, 3),
            "bytes": sum(p.stat().st_size for p in directory.iterdir()),
            "builtBy": f"{socket.gethostname()}:{os.getpid()}"}
    meta["bytesPerToken"] = round(meta["bytes"] / max(1, total), 3)
    (directory / "meta.json").write_text(json.dumps(meta, sort_keys=True))
    return meta


def _open(directory: Path, built: bool) -> TokenCorpus:
    meta = json.loads((directory / "meta.json").read_text())
    size = int(meta["tokens"])
    tokens = (np.memmap(directory / "tokens.u32", dtype=np.uint32, mode="r", shape=(size,)) if size
              else np.zeros(0, dtype=np.uint32))
    return TokenCorpus(directory=directory, tokens=tokens, offsets=np.load(directory / "offsets.npy"),
                       train=np.load(directory / "train.npy"), meta=meta, built=built)


def open_or_build(root: Path, key: str, documents: Any, encode: Any, *, validation_fraction: float,
                  seed: int) -> TokenCorpus:
    """The cache ``root/key``: mapped if complete, else built first by whichever process holds the lock.

    ``documents``: a callable returning the documents' iterator (called only when building)."""
    final = root / key
    if (final / "meta.json").is_file():
        return _open(final, built=False)
    root.mkdir(parents=True, exist_ok=True)
    with (root / f"{key}.lock").open("a") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes, also if this process dies
        except OSError as exc:  # a file system without locks: builders race, the first rename wins
            log.warning("token cache %s: no file lock (%s); this process may tokenize in vain", final, exc)
        if (final / "meta.json").is_file():
            return _open(final, built=False)
        tmp = root / f"{key}.tmp-{socket.gethostname()}-{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        try:
            meta = build_cache(tmp, documents(), encode, validation_fraction=validation_fraction, seed=seed)
            if final.is_dir() and not (final / "meta.json").is_file():
                shutil.rmtree(final, ignore_errors=True)  # an incomplete leftover of an older version
            tmp.rename(final)  # fails if another builder's complete cache is there: then that one is used
        except OSError:
            shutil.rmtree(tmp, ignore_errors=True)
            if not (final / "meta.json").is_file():  # not another node winning the rename: a real error
                raise
            return _open(final, built=False)
        log.info("token cache %s: %d documents, %d tokens, %.2f B/token, built in %.1f s", final,
                 meta["documents"], meta["tokens"], meta["bytesPerToken"], meta["buildSeconds"])
        return _open(final, built=True)


BASELINE_DIR, FIRST_STAGE_DIR = "baseline", "stage-1"
"""The directory names of the base model's evaluation and of stage 1 under the job's directory, on
both paths (``ctxext.controller.paths.stage_output_dir``, ``ctxext.local_run.layout``)."""


def cache_root(config: Any) -> Path:
    """Where a stage config's token caches live: ``$CTXEXT_TOKEN_CACHE``, else ``<output_dir>/token-cache``;
    for the base model's evaluation (``evaluate_only`` in ``<job>/baseline``) stage 1's, ``<job>/stage-1/token-cache``.

    >>> from types import SimpleNamespace as C
    >>> str(cache_root(C(output_dir="/ckpt/ns/j/stage-2", evaluate_only=False)))
    '/ckpt/ns/j/stage-2/token-cache'
    >>> str(cache_root(C(output_dir="/ckpt/ns/j/baseline", evaluate_only=True)))
    '/ckpt/ns/j/stage-1/token-cache'
    """
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV])
    out = Path(config.output_dir)
    if getattr(config, "evaluate_only", False) and out.name == BASELINE_DIR:
        out = out.parent / FIRST_STAGE_DIR
    return out / "token-cache"


def stage_token_corpus(config: Any, tokenizer: Any, tokenizer_dir: Path) -> TokenCorpus:
    """The token cache of a stage config's corpus (in :func:`cache_root`), built if it is not there."""
    data = config.data
    fmt, field = str(data.format), data.text_field
    key = cache_key(data.source, fmt=fmt, text_field=field, validation_fraction=data.validation_fraction,
                    seed=data.seed, tokenizer_dir=tokenizer_dir)
    corpus = open_or_build(cache_root(config), key, lambda: _documents(data.source, fmt, field), tokenizer.encode,
                           validation_fraction=data.validation_fraction, seed=data.seed)
    if corpus.meta["documents"] == 0:
        from ctxext_trainer.data.sources import DataSourceError

        raise DataSourceError(f"data.source {data.source!r} holds no non-empty documents")
    return corpus
