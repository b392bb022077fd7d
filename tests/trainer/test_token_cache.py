"""The stage's corpus is tokenized once into a memory-mapped cache shared by ranks and retries
(issue 25 item 6): same sequences as the tokenized lists, a few bytes per token instead of ~49,
one build however many processes start at once, and a retry that finds it."""

from __future__ import annotations

import json
import multiprocessing
import subprocess
import tracemalloc
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from ctxext.stage_config import StageConfig
from ctxext_trainer import exit_codes
from ctxext_trainer.data.augment import split_documents
from ctxext_trainer.data.batches import Layout, StageData, build_stage_data
from ctxext_trainer.data.sources import load_documents
from ctxext_trainer.data.token_cache import stage_token_corpus
from ctxext_trainer.tokenizer import ByteTokenizer

from .conftest import SENTENCES, run_trainer, stage_config, trainer_env

TOK = ByteTokenizer()


def big_corpus(directory: Path, docs: int, doc_chars: int) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    for i in range(docs):
        text = "".join(SENTENCES[(i * 7 + j) % len(SENTENCES)] for j in range(doc_chars // 70))
        (directory / f"doc{i:04d}.txt").write_text(f"Document {i}. {text}")
    (directory / "empty.txt").write_text("x")  # a one-token document still counts
    return directory


def config_of(model: Path, corpus: Path, out: Path, **data: Any) -> StageConfig:
    wire = stage_config(model, corpus, out, seq_len=96, min_seq_len=48)
    wire["data"].update(data)
    return StageConfig.model_validate(wire)


def test_the_cached_stream_equals_the_tokenized_lists(tiny_model: Path, tmp_path: Path) -> None:
    corpus = big_corpus(tmp_path / "corpus", docs=30, doc_chars=900)
    config = config_of(tiny_model, corpus, tmp_path / "out", validationFraction=0.3, seed=11,
                       longContextUpsampling=True, syntheticRetrievalRatio=0.3)
    cached = build_stage_data(config, TOK, tiny_model)
    train, held = split_documents(load_documents(f"file://{corpus}"), 0.3, 11)
    assert held  # the split holds documents out, and the cache leaves the same ones out
    lists = StageData([TOK.encode(d) for d in train], eos_id=TOK.eos_id, seed=11, seq_len=96, min_seq_len=48,
                      upsample_long=True, synthetic_ratio=0.3, encode=TOK.encode, tokenizer=TOK)
    layout = Layout(dp_rank=1, dp_size=2, sp_rank=1, sp_size=2, batch_size=2, accumulation=2)
    for step in range(40):  # several epochs of the 21-odd training documents
        for a, b in zip(cached.step_batches(step, layout), lists.step_batches(step, layout), strict=True):
            assert {k: v.tolist() for k, v in a.items()} == {k: v.tolist() for k, v in b.items()}
        assert cached.state == lists.state


def test_a_rank_holds_under_half_a_byte_per_token_of_heap(tiny_model: Path, tmp_path: Path) -> None:
    corpus = big_corpus(tmp_path / "corpus", docs=200, doc_chars=2000)
    config = config_of(tiny_model, corpus, tmp_path / "out")
    tracemalloc.start()
    try:
        built = build_stage_data(config, TOK, tiny_model)  # the rank that tokenizes
        held_by_builder = tracemalloc.get_traced_memory()[0]
        tracemalloc.reset_peak()
        start = tracemalloc.get_traced_memory()[0]
        opened = build_stage_data(config, TOK, tiny_model)  # another rank, or a retry
        held_by_reader = tracemalloc.get_traced_memory()[0] - start
    finally:
        tracemalloc.stop()
    tokens = stage_token_corpus(config, TOK, tiny_model).meta["tokens"]
    assert tokens > 400_000
    # the lists held 8.5 B/token here (byte ids are CPython's shared small ints) and ~49 B/token with a
    # real vocabulary (bench/token_cache.py); the mapped cache costs its per-document index only
    assert held_by_builder / tokens < 0.5, held_by_builder / tokens
    assert held_by_reader / tokens < 0.5, held_by_reader / tokens
    assert built.step_batches(0, Layout())[0]["input_ids"].tolist() == \
        opened.step_batches(0, Layout())[0]["input_ids"].tolist()


def _open_cache(args: tuple[str, str, str]) -> tuple[bool, int, int]:
    model, corpus, out = (Path(a) for a in args)
    corpus_cache = stage_token_corpus(config_of(model, corpus, out), TOK, model)
    return corpus_cache.built, int(corpus_cache.meta["tokens"]), int(np.asarray(corpus_cache.tokens, np.int64).sum())


def test_processes_starting_together_build_the_cache_once(tiny_model: Path, tmp_path: Path) -> None:
    corpus = big_corpus(tmp_path / "corpus", docs=60, doc_chars=4000)
    args = (str(tiny_model), str(corpus), str(tmp_path / "out"))
    with multiprocessing.get_context("spawn").Pool(4) as pool:
        results = pool.map(_open_cache, [args] * 4)
    assert sorted(built for built, _, _ in results) == [False, False, False, True]
    assert len({(n, checksum) for _, n, checksum in results}) == 1
    root = tmp_path / "out" / "token-cache"
    (cache,) = (p for p in root.iterdir() if p.is_dir())  # no temporary directory left behind
    assert json.loads((cache / "meta.json").read_text())["tokens"] == results[0][1]
    assert _open_cache(args)[0] is False  # a retry maps what is there
    (corpus / "doc0000.txt").write_text("Document 0 changed.")
    assert _open_cache(args)[0] is True  # a changed corpus gets a cache of its own


@pytest.mark.distributed
def test_two_ranks_share_one_cache_and_the_retry_reuses_it(tiny_model: Path, corpus: Path, tmp_path: Path) -> None:
    out = tmp_path / "stage"
    first = run_trainer(stage_config(tiny_model, corpus, out, zero_stage=2, steps=4), nproc=2,
                        env=trainer_env(CTXEXT_STOP_AFTER_STEP="2"))
    assert isinstance(first, subprocess.CompletedProcess)
    assert first.returncode == exit_codes.PREEMPTED, first.stdout[-3000:] + first.stderr[-3000:]
    (cache,) = (p for p in (out / "token-cache").iterdir() if p.is_dir())
    meta_before = (cache / "meta.json").read_text()
    stat_before = (cache / "tokens.u32").stat()
    again = run_trainer(stage_config(tiny_model, corpus, out, zero_stage=2, steps=4, attempt=2), nproc=2)
    assert isinstance(again, subprocess.CompletedProcess)
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    assert (cache / "meta.json").read_text() == meta_before  # mapped, not rebuilt
    assert (cache / "tokens.u32").stat().st_ino == stat_before.st_ino
    assert [p.name for p in (out / "token-cache").iterdir() if p.is_dir()] == [cache.name]


@pytest.mark.distributed
def test_two_rank_baseline_evaluation_builds_the_cache_once_and_stage_1_trains_on_it(
        tiny_model: Path, corpus: Path, tmp_path: Path) -> None:
    """The base model's evaluation runs first, on stage 1's two ranks: one of them tokenizes the corpus
    into stage 1's cache, both evaluate from it; stage 1 then maps it (no second tokenization)."""
    job = tmp_path / "job"
    common = dict(seq_len=160, original_context_length=128, eval_lengths=[128, 160],
                  data={"source": f"file://{corpus}", "seed": 7, "validationFraction": 0.3})
    baseline = stage_config(tiny_model, corpus, job / "baseline", stage=0, steps=0, evaluate_only=True,
                            rope_theta=10000.0, evaluation={"enabled": True, "tasks": ["perplexity"],
                                                             "samplesPerCell": 2}, **common)
    first = run_trainer(baseline, nproc=2)
    assert isinstance(first, subprocess.CompletedProcess)
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    assert not (job / "baseline" / "token-cache").exists()
    (cache,) = (p for p in (job / "stage-1" / "token-cache").iterdir() if p.is_dir())  # no second build's leftovers
    assert sorted(p.name for p in cache.parent.iterdir()) == [cache.name, f"{cache.name}.lock"]
    assert ":" in json.loads((cache / "meta.json").read_text())["builtBy"]  # one process (host:pid) tokenized
    meta, inode = (cache / "meta.json").read_text(), (cache / "tokens.u32").stat().st_ino
    evaluation = json.loads((job / "baseline" / "result.json").read_text())["evaluation"]
    assert set(evaluation["perplexity"]) == {"128", "160"} and "notes" not in evaluation
    stage1 = run_trainer(stage_config(tiny_model, corpus, job / "stage-1", zero_stage=2, steps=2, **common), nproc=2)
    assert isinstance(stage1, subprocess.CompletedProcess)
    assert stage1.returncode == 0, stage1.stdout[-3000:] + stage1.stderr[-3000:]
    assert (cache / "meta.json").read_text() == meta and (cache / "tokens.u32").stat().st_ino == inode
