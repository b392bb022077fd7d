"""Stage evaluation reads a bounded prefix of the corpus on each rank, not the whole corpus as text
(issue 25 item 6): the same texts as the full read for a corpus within the bound (the shipped tiny
corpus included), a prefix of them beyond it, and a heap that does not grow with the corpus."""

from __future__ import annotations

import json
import tracemalloc
from pathlib import Path
from typing import Any

import pytest

from ctxext.stage_config import StageConfig
from ctxext_trainer.data.augment import split_documents
from ctxext_trainer.data.sources import load_documents
from ctxext_trainer.eval.corpus import MIN_CHARS, eval_char_budget, read_eval_texts
from ctxext_trainer.eval.stage import stage_texts
from tests.trainer.conftest import SENTENCES, stage_config


def corpus(directory: Path, docs: int, doc_chars: int, jsonl: bool = False) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    texts = [f"Document {i}. " + "".join(SENTENCES[(i * 7 + j) % len(SENTENCES)] for j in range(doc_chars // 70))
             for i in range(docs)]
    if jsonl:
        (directory / "docs.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))
    else:
        for i, text in enumerate(texts):
            (directory / f"doc{i:05d}.txt").write_text(text)
    return directory


def config_of(source: str, out: Path, fraction: float, **evaluation: Any) -> StageConfig:
    wire = stage_config(out / "model", out, out, seq_len=256, original_context_length=128)
    wire["data"].update(source=source, validationFraction=fraction, seed=5)
    wire["evaluation"] = {"enabled": True, **evaluation}
    return StageConfig.model_validate(wire)


def full_read(source: str, fraction: float) -> tuple[list[str], list[str]]:
    docs = load_documents(source)
    return docs, split_documents(docs, fraction, 5)[1]


@pytest.mark.parametrize("fraction", [0.0, 0.3, 0.45])
@pytest.mark.parametrize("jsonl", [False, True])
def test_within_the_bound_the_texts_are_those_of_the_full_read(tmp_path: Path, fraction: float, jsonl: bool) -> None:
    source = f"file://{corpus(tmp_path / 'c', docs=40, doc_chars=700, jsonl=jsonl)}"
    config = config_of(source, tmp_path, fraction)
    docs, held = full_read(source, fraction)
    note = "perplexity measured on the training corpus (the validation split holds no document)"
    assert stage_texts(config) == (docs, held or docs, None if held else note)


@pytest.mark.parametrize("docs", [1, 2, 5])
def test_the_split_s_corner_cases_are_those_of_split_documents(tmp_path: Path, docs: int) -> None:
    """Fewer than two documents are never split; when all are held out, the first trains."""
    source = f"file://{corpus(tmp_path / 'c', docs=docs, doc_chars=140)}"
    got = read_eval_texts(source, fmt="auto", text_field="text", validation_fraction=0.999, seed=5,
                          max_chars=MIN_CHARS)
    assert got == full_read(source, 0.999)


def test_the_shipped_tiny_corpus_is_read_whole(tmp_path: Path) -> None:
    config = config_of("builtin://tiny-corpus", tmp_path, 0.01, lengths=[128, 512, 1024], samplesPerCell=10)
    docs, held = full_read("builtin://tiny-corpus", 0.01)
    assert held and sum(map(len, docs)) < MIN_CHARS
    assert stage_texts(config)[:2] == (docs, held)


@pytest.mark.parametrize("fraction", [0.2, 0.99])
def test_beyond_the_bound_the_texts_are_prefixes_of_the_full_read(tmp_path: Path, fraction: float) -> None:
    source = f"file://{corpus(tmp_path / 'c', docs=120, doc_chars=1400)}"
    docs, held = full_read(source, fraction)
    bound = 20_000
    mine, mine_held = read_eval_texts(source, fmt="auto", text_field="text", validation_fraction=fraction, seed=5,
                                      max_chars=bound)
    for kept, full in ((mine, docs), (mine_held, held)):
        assert sum(map(len, kept)) == bound < sum(map(len, full))
        assert kept[:-1] == full[:len(kept) - 1] and full[len(kept) - 1].startswith(kept[-1])


def test_a_rank_s_heap_stays_bounded_on_a_large_corpus(tmp_path: Path) -> None:
    """12 MB of text: the whole-corpus read kept all of it (and more) on every rank."""
    source = f"file://{corpus(tmp_path / 'c', docs=600, doc_chars=20_000)}"
    config = config_of(source, tmp_path, 0.3, lengths=[128, 256], samplesPerCell=4)
    assert eval_char_budget([128, 256], 4) == MIN_CHARS
    tracemalloc.start()
    haystack, perplexity, _ = stage_texts(config)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    # measured: peak 5.9 MB here (two 2 MiB prefixes); 13.8 MB with the whole-corpus read
    assert peak < 4 * MIN_CHARS, f"peak {peak / 1e6:.1f} MB while reading a 12 MB corpus"
    assert sum(map(len, haystack)) == MIN_CHARS and sum(map(len, perplexity)) == MIN_CHARS
