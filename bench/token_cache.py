"""Stage data start-up: the memory-mapped token cache against the per-rank Python token lists it replaced.

A synthetic corpus of ``--tokens`` tokens (``--docs`` text files) is tokenized with the byte
tokenizer, its ids shifted past 256 (``WideTokenizer``): a real vocabulary's ids are mostly above
CPython's small-int cache, so each listed token is its own int object, as with Llama-3's 128K
vocabulary. Per approach, in one fresh process each (``--worker``):

* ``lists`` — what every rank did before (issue 25 item 6): read the corpus, tokenize each
  training document into a list, and keep the stream's copy of it (``[*doc, eos]``);
* ``cache-build`` — the first rank of a stage: tokenize into ``<out>/token-cache`` and map it;
* ``cache-open`` — every other rank, node, retry and resumed attempt: map the finished cache;
* ``eval-full`` — what stage evaluation did on every rank first: read the whole corpus as text,
  split off the held-out documents (``load_documents`` + ``split_documents``), tokenize the
  perplexity sequences (``packed_sequences``);
* ``eval-bounded`` — what it did next (:func:`bounded_text_read`, the code before evaluation read
  the cache): a prefix of at most max(2 MiB, 8 chars/token · longest · (samples + 1)) characters
  of documents and of held-out documents, streaming the whole corpus while the held-out prefix is
  short; then the same tokenization;
* ``eval-cache`` — what it does now (``eval.corpus.stage_eval_corpus``) with the default tasks
  (passkey, perplexity): map the cache the stage's training built and copy the perplexity
  sequences out of the held-out documents' tokens (no corpus file read, nothing tokenized);
* ``eval-cache-needle`` — the same with a corpus task (needle): also decode the cache's first
  max(256 Ki, longest · (samples + 1)) tokens into haystack text.

Every row uses ``validationFraction`` 0.01 (the API's default); evaluation at 4096 tokens, 4 samples.

Reported: seconds until the stage's data object exists, Python heap kept (tracemalloc, after the
build) and peak, per token; resident set growth (``/proc/self/status`` VmRSS, which counts mapped
pages that were touched — none are before the first step); the cache's bytes on disk; for the
evaluation rows (seconds until its haystack texts and perplexity sequences exist) the bytes read
from files (``/proc/self/io`` rchar: the corpus for the text rows, the cache's index for the cache rows).

    OMP_NUM_THREADS=1 .venv/bin/python bench/token_cache.py             # 20M tokens: ~2 min
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path
from typing import Any

import _harness as h

EVAL_LENGTH, EVAL_SAMPLES, EVAL_FRACTION = 4096, 4, 0.01
WORDS = ("context", "window", "rotary", "position", "theta", "stage", "curriculum", "token", "memory",
         "attention", "sequence", "parallel", "gradient", "checkpoint", "evaluation", "needle")


class WideTokenizer:
    """Byte tokenizer with ids shifted by 1000 (ids above the small-int cache, like a real vocabulary)."""

    vocab_size, eos_id, bos_id, pad_id = 1260, 2, 1, 0

    def encode(self, text: str) -> list[int]:
        return [b + 1000 for b in text.encode("utf-8")]

    def decode(self, ids: list[int]) -> str:
        return bytes(i - 1000 for i in ids if i >= 1000).decode("utf-8", errors="replace")


def make_corpus(directory: Path, tokens: int, docs: int) -> None:
    directory.mkdir(parents=True)
    per_doc = tokens // docs
    for i in range(docs):
        words = [WORDS[(i * 31 + j * 7) % len(WORDS)] for j in range(per_doc // 8 + 1)]
        (directory / f"doc{i:05d}.txt").write_text(" ".join(words)[:per_doc])


def bounded_text_read(source: str, validation_fraction: float, seed: int, max_chars: int
                      ) -> tuple[list[str], list[str]]:
    """(documents, held-out documents), prefixes of at most ``max_chars`` characters: the evaluation's
    corpus read before it took the token cache (``eval/corpus.py`` at 1000b3e, its split corner cases left out)."""
    from ctxext_trainer.data.sources import corpus_files, read_documents, resolve_source
    from ctxext_trainer.data.token_cache import held_out

    docs: list[str] = []
    held: list[str] = []
    doc_chars = held_chars = index = 0
    for path in corpus_files(resolve_source(source)):
        for text in read_documents(path):
            is_held = held_out(index, validation_fraction, seed)
            index += 1
            if doc_chars < max_chars:
                docs.append(text[:max_chars - doc_chars])
                doc_chars += len(docs[-1])
            if is_held and held_chars < max_chars:
                held.append(text[:max_chars - held_chars])
                held_chars += len(held[-1])
            if doc_chars >= max_chars and held_chars >= max_chars:
                return docs, held
    return docs, held


def _bytes_read() -> int:
    """Bytes this process read through read(2) and the like (``/proc/self/io`` rchar; a mapped file's
    pages are not counted)."""
    return int(dict(line.split(": ") for line in Path("/proc/self/io").read_text().splitlines())["rchar"])


def _rss() -> int:
    return h.parse_proc_status(Path("/proc/self/status").read_text()).get("VmRSS", 0)


def worker(mode: str, corpus: Path, out: Path, model: Path) -> dict[str, Any]:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "trainer"))
    from conftest import stage_config

    from ctxext.stage_config import StageConfig
    from ctxext_trainer.data.augment import split_documents
    from ctxext_trainer.data.batches import Layout, StageData, build_stage_data
    from ctxext_trainer.data.sources import load_documents

    wire = stage_config(model, corpus, out, seq_len=EVAL_LENGTH, eval_lengths=[EVAL_LENGTH],
                        evaluation={"enabled": True, "samplesPerCell": EVAL_SAMPLES})
    wire["data"]["validationFraction"] = EVAL_FRACTION
    config = StageConfig.model_validate(wire)
    tok = WideTokenizer()
    from ctxext_trainer.eval.corpus import stage_eval_corpus
    from ctxext_trainer.eval.perplexity import pack_documents, packed_sequences

    rss0, read0 = _rss(), _bytes_read()
    tracemalloc.start()
    started = time.perf_counter()
    if mode.startswith("eval-"):  # stage evaluation's corpus: haystack texts and perplexity sequences
        length, count = EVAL_LENGTH, EVAL_SAMPLES
        if mode.startswith("eval-cache"):
            corpus = stage_eval_corpus(config, tok, model, haystack=mode == "eval-cache-needle")
            haystack, seqs = corpus.haystack, pack_documents(corpus.perplexity, tok.eos_id, length=length, count=count)
        else:
            if mode == "eval-full":
                haystack = load_documents(config.data.source)
                held = split_documents(haystack, EVAL_FRACTION, config.data.seed)[1]
            else:
                budget = max(2 << 20, 8 * length * (count + 1))
                haystack, held = bounded_text_read(config.data.source, EVAL_FRACTION, config.data.seed, budget)
            seqs = packed_sequences(held, tok, length=length, count=count)
        seconds, read = time.perf_counter() - started, _bytes_read() - read0
        kept, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        assert len(seqs) == count, len(seqs)
        tokens = sum(len(tok.encode(d)) for d in load_documents(config.data.source))  # the corpus's, for B/tok
        return {"mode": mode, "tokens": tokens, "seconds": seconds, "kept_bytes_per_token": kept / tokens,
                "peak_bytes_per_token": peak / tokens, "rss_growth_bytes_per_token": (_rss() - rss0) / tokens,
                "disk_bytes_per_token": None, "haystack_chars": sum(map(len, haystack)),
                "perplexity_checksum": sum(map(sum, seqs)), "bytes_read": read}
    if mode == "lists":  # the code before issue 25 item 6 (build_stage_data + TokenStream's copy)
        train, _ = split_documents(load_documents(f"file://{corpus}"), EVAL_FRACTION, 7)
        token_docs = [d for d in (tok.encode(t) for t in train) if d]
        streamed = [[*d, tok.eos_id] for d in token_docs]
        del token_docs, train
        data: Any = StageData([[1]], eos_id=tok.eos_id, seed=7, seq_len=4096)
        data.stream.docs = streamed
        tokens = sum(len(d) - 1 for d in streamed)
    else:
        data = build_stage_data(config, tok, model)
        tokens = int(data.stream.docs.lengths().sum())
    seconds = time.perf_counter() - started
    kept, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    data.step_batches(0, Layout())  # the first step's batch (touches one sequence of the mapped tokens)
    cache = next((out / "token-cache").glob("*/meta.json"), None) if mode != "lists" else None
    return {"mode": mode, "tokens": tokens, "seconds": seconds, "kept_bytes_per_token": kept / tokens,
            "peak_bytes_per_token": peak / tokens, "rss_growth_bytes_per_token": (_rss() - rss0) / tokens,
            "disk_bytes_per_token": json.loads(cache.read_text())["bytesPerToken"] if cache else None}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=20_000_000)
    parser.add_argument("--docs", type=int, default=2000)
    parser.add_argument("--worker", nargs=4, metavar=("MODE", "CORPUS", "OUT", "MODEL"))
    args = parser.parse_args()
    if args.worker:
        mode, corpus, out, model = args.worker
        print("RESULT " + json.dumps(worker(mode, Path(corpus), Path(out), Path(model))), flush=True)
        return
    from ctxext_trainer.tokenizer import ByteTokenizer

    work = Path(tempfile.mkdtemp(prefix="token-cache-bench-"))
    try:
        make_corpus(work / "corpus", args.tokens, args.docs)
        (work / "model").mkdir()
        ByteTokenizer().save(work / "model")  # the cache key hashes the tokenizer's files
        rows, cells = [], []
        for mode in ("lists", "cache-build", "cache-open", "eval-full", "eval-bounded", "eval-cache",
                     "eval-cache-needle"):
            proc = subprocess.run([sys.executable, __file__, "--worker", mode, str(work / "corpus"), str(work / "out"),
                                   str(work / "model")], capture_output=True, text=True, check=True)
            cell = json.loads(next(line for line in proc.stdout.splitlines() if line.startswith("RESULT "))[7:])
            cells.append(cell)
            rows.append([mode, cell["tokens"], cell["seconds"], cell["kept_bytes_per_token"],
                         cell["peak_bytes_per_token"], cell["rss_growth_bytes_per_token"],
                         cell["disk_bytes_per_token"], cell.get("bytes_read")])
        h.print_table(["approach", "tokens", "start s", "kept B/tok", "peak B/tok", "RSS B/tok", "disk B/tok",
                       "eval bytes read"], rows,
                      title=f"data and eval text start, {args.tokens:,} tokens in {args.docs} docs, one process each")
        h.emit_json("token_cache", {"tokens": args.tokens, "docs": args.docs, "cells": cells})
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
