"""Stage evaluation takes its corpus from the stage's token cache (issue 25 item 6): no corpus file
read and no perplexity text tokenized when the cache exists, held-out tokens disjoint from the
training tokens, the texts of the full read for a corpus within the budget (the shipped tiny corpus
included), and the base model's evaluation building the cache stage 1 then maps."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from ctxext.stage_config import StageConfig
from ctxext_trainer.data.augment import split_documents
from ctxext_trainer.data.sources import load_documents
from ctxext_trainer.data.token_cache import cache_root, stage_token_corpus
from ctxext_trainer.eval.corpus import MIN_TOKENS, NO_HELD_OUT, eval_token_budget, stage_eval_corpus
from ctxext_trainer.eval.perplexity import pack_documents, packed_sequences
from ctxext_trainer.eval.stage import evaluate_stage
from ctxext_trainer.tokenizer import ByteTokenizer
from tests.trainer.conftest import SENTENCES, stage_config

TOK = ByteTokenizer()
_OPENED: list[str] = []
_WATCH: list[str] = []


def _audit(event: str, args: tuple[Any, ...]) -> None:
    if event == "open" and _WATCH and isinstance(args[0], str | Path) and str(args[0]).startswith(_WATCH[0]):
        _OPENED.append(str(args[0]))


sys.addaudithook(_audit)  # counts every open() of a file under the watched corpus directory


class CountingTokenizer(ByteTokenizer):
    """The byte tokenizer, counting the characters it encodes."""

    def __init__(self) -> None:
        self.encoded = self.decoded = 0

    def encode(self, text: str) -> list[int]:
        self.encoded += len(text)
        return super().encode(text)

    def decode(self, ids: list[int]) -> str:
        self.decoded += len(ids)
        return super().decode(ids)


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


def config_of(source: str, out: Path, fraction: float, model: Path | None = None, **evaluation: Any) -> StageConfig:
    wire = stage_config(model or out / "model", out, out, seq_len=256, original_context_length=128,
                        eval_lengths=[128, 256])
    wire["data"].update(source=source, validationFraction=fraction, seed=5)
    wire["evaluation"] = {"enabled": True, **evaluation}
    return StageConfig.model_validate(wire)


def test_with_the_cache_built_evaluation_reads_no_corpus_file_and_tokenizes_no_perplexity_text(
        model: Any, tmp_path: Path) -> None:
    source_dir = corpus(tmp_path / "c", docs=40, doc_chars=1400)
    config = config_of(f"file://{source_dir}", tmp_path / "stage-1", 0.3, tasks=["perplexity"], samplesPerCell=2)
    tok = CountingTokenizer()
    built = stage_token_corpus(config, tok, Path(config.model_path))  # what the stage's training did
    assert built.built and tok.encoded == sum(len(t) for t in load_documents(f"file://{source_dir}"))
    tok.encoded, _OPENED[:] = 0, []
    _WATCH[:] = [str(source_dir)]
    try:
        evaluation = evaluate_stage(model, tok, config, output_dir=tmp_path / "stage-1", is_rank0=True)
    finally:
        _WATCH.clear()
    assert _OPENED == [] and tok.encoded == 0  # before: the corpus prefix read again and 2 × 256 tokens encoded
    assert set(evaluation["perplexity"]) == {"128", "256"} and "notes" not in evaluation


def test_evaluation_s_held_out_tokens_are_never_trained_on(tmp_path: Path) -> None:
    source = f"file://{corpus(tmp_path / 'c', docs=60, doc_chars=700)}"
    config = config_of(source, tmp_path / "stage-1", 0.2, samplesPerCell=3)
    evaluation = stage_eval_corpus(config, TOK, Path(config.model_path))
    cache = evaluation.cache
    train, held = set(cache.training().ids.tolist()), set(evaluation.perplexity.ids.tolist())
    assert held and not train & held and train | held == set(range(cache.meta["documents"]))
    assert evaluation.note is None
    # the split is the token array's: held-out spans are the documents training never streams
    spans = np.zeros(len(cache.tokens), dtype=np.int8)
    for ids, mark in ((train, 1), (held, 2)):
        for i in ids:
            spans[cache.offsets[i]:cache.offsets[i + 1]] += mark
    assert set(np.unique(spans).tolist()) == {1, 2}
    docs = load_documents(source)
    _, held_texts = split_documents(docs, 0.2, 5)  # the same documents as the text split always held out
    assert [TOK.decode(d.tolist()) for d in evaluation.perplexity] == held_texts
    assert pack_documents(evaluation.perplexity, TOK.eos_id, length=256, count=3) == \
        packed_sequences(held_texts, TOK, length=256, count=3)


@pytest.mark.parametrize("fraction", [0.0, 0.3])
@pytest.mark.parametrize("jsonl", [False, True])
def test_within_the_budget_evaluation_sees_the_whole_corpus_s_texts(tmp_path: Path, fraction: float,
                                                                    jsonl: bool) -> None:
    source = f"file://{corpus(tmp_path / 'c', docs=40, doc_chars=700, jsonl=jsonl)}"
    config = config_of(source, tmp_path / "stage-1", fraction)
    docs = load_documents(source)
    _, held = split_documents(docs, fraction, 5)
    got = stage_eval_corpus(config, TOK, Path(config.model_path))
    assert got.haystack == docs
    assert [TOK.decode(d.tolist()) for d in got.perplexity] == (held or docs)
    assert got.note == (None if held else NO_HELD_OUT)


def test_without_a_corpus_task_evaluation_decodes_nothing(tmp_path: Path) -> None:
    """passkey (the classic filler) and perplexity (tokens) need no haystack text."""
    from ctxext_trainer.eval.stage import stage_corpus

    source = f"file://{corpus(tmp_path / 'c', docs=40, doc_chars=700)}"
    tok = CountingTokenizer()
    config = config_of(source, tmp_path / "stage-1", 0.3, tasks=["passkey", "perplexity"])
    haystack, tokens, texts, note = stage_corpus(config, tok)
    assert haystack == [] and tokens is not None and len(tokens) and texts is None and note is None
    assert tok.decoded == 0
    with_needle = config.model_copy(update={"evaluation": config.evaluation.model_copy(
        update={"tasks": ["needle", "perplexity"]})})
    assert stage_corpus(with_needle, tok)[0] == load_documents(source) and tok.decoded > 0


def test_beyond_the_budget_the_haystack_is_the_cache_s_first_tokens(tmp_path: Path) -> None:
    source = f"file://{corpus(tmp_path / 'c', docs=120, doc_chars=1400)}"
    config = config_of(source, tmp_path / "stage-1", 0.2)
    cache = stage_token_corpus(config, TOK, Path(config.model_path))
    from ctxext_trainer.eval.corpus import haystack_texts

    bound = 20_000
    kept, docs = haystack_texts(cache, TOK.decode, bound), load_documents(source)
    assert sum(map(len, kept)) == bound < sum(map(len, docs))
    assert kept[:-1] == docs[:len(kept) - 1] and docs[len(kept) - 1].startswith(kept[-1])
    assert eval_token_budget([1024], 4) == MIN_TOKENS and eval_token_budget([1 << 20], 4) == 5 << 20
    tiny = config_of("builtin://tiny-corpus", tmp_path / "tiny" / "stage-1", 0.01, lengths=[128, 1024])
    tiny_docs = load_documents("builtin://tiny-corpus")  # 1.4 M byte tokens: its first 256 Ki
    haystack = stage_eval_corpus(tiny, TOK, Path(tiny.model_path)).haystack
    assert abs(sum(len(t.encode()) for t in haystack) - MIN_TOKENS) <= 3 and tiny_docs[0].startswith(haystack[0])


def test_the_baseline_builds_the_cache_stage_1_maps(tmp_path: Path) -> None:
    """Both paths name the directories so: the operator's and `ctxext run`'s."""
    from ctxext.controller.paths import stage_output_dir
    from ctxext.local_run.layout import Workdir

    job = tmp_path / "job"
    workdir = Workdir(job)
    assert workdir.baseline_dir.parent == workdir.stage_dir(1).parent
    assert (workdir.baseline_dir.name, workdir.stage_dir(1).name) == \
        tuple(Path(stage_output_dir(_spec(), "ns", "j", s)).name for s in (0, 1))
    source = f"file://{corpus(tmp_path / 'c', docs=20, doc_chars=700)}"
    stage1 = config_of(source, workdir.stage_dir(1), 0.3)
    baseline = stage1.model_copy(update={"stage": 0, "evaluate_only": True, "output_dir": str(workdir.baseline_dir)})
    assert cache_root(baseline) == cache_root(stage1) == workdir.stage_dir(1) / "token-cache"
    tok = CountingTokenizer()
    assert stage_eval_corpus(baseline, tok, Path(baseline.model_path)).cache.built  # the baseline runs first
    tokenized = tok.encoded
    assert not stage_token_corpus(stage1, tok, Path(stage1.model_path)).built and tok.encoded == tokenized


def _spec() -> Any:
    from ctxext.api.job import ContextExtensionJobSpec

    return ContextExtensionJobSpec.model_validate({"model": {"source": "builtin://tiny"}, "targetContextLength": 512,
                                                   "curriculum": {"stages": [{"seqLen": 256}, {"seqLen": 512}]}})
