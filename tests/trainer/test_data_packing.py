"""Corpus sources, packing, augmentation, length curriculum and per-rank batches."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ctxext_trainer.data.augment import is_synthetic, split_documents, upsampling_weights
from ctxext_trainer.data.batches import Layout, StageData, step_length
from ctxext_trainer.data.packing import StreamState, TokenStream, next_packed
from ctxext_trainer.data.sources import DataSourceError, load_documents, resolve_source
from ctxext_trainer.tokenizer import ByteTokenizer

TOK = ByteTokenizer()


def test_worked_example_of_a_packed_batch() -> None:
    stream = TokenStream([TOK.encode("ab"), TOK.encode("cd")], eos_id=TOK.eos_id, seed=0, shuffle=False)
    first = next_packed(stream, 4)
    assert first.input_ids == [101, 102, 2, 103] and first.labels == [102, 2, 103, 104]
    assert first.position_ids == [0, 1, 2, 3]
    second = next_packed(stream, 4)
    assert second.input_ids == [104, 2, 101, 102]
    assert stream.state == StreamState(epoch=1, doc=0, offset=2)


@settings(max_examples=40, deadline=None)
@given(docs=st.lists(st.lists(st.integers(4, 259), min_size=1, max_size=30), min_size=1, max_size=8),
       n=st.integers(1, 40), cut=st.integers(0, 6), seed=st.integers(0, 1000))
def test_resume_continues_at_the_exact_token(docs: list[list[int]], n: int, cut: int, seed: int) -> None:
    straight = TokenStream(docs, eos_id=2, seed=seed)
    expected = [next_packed(straight, n) for _ in range(8)]
    first = TokenStream(docs, eos_id=2, seed=seed)
    got = [next_packed(first, n) for _ in range(cut)]
    saved = json.loads(json.dumps(first.state.to_dict()))
    resumed = TokenStream(docs, eos_id=2, seed=seed, state=StreamState.from_dict(saved))
    got += [next_packed(resumed, n) for _ in range(8 - cut)]
    assert got == expected
    # no token lost or duplicated: labels are the inputs shifted by one across sequence seams
    flat = [t for s in expected for t in s.input_ids]
    assert all(s.labels[-1] == flat[(i + 1) * n] for i, s in enumerate(expected[:-1]))


def test_epochs_shuffle_deterministically() -> None:
    docs = [[10 + i] for i in range(6)]
    a, b = TokenStream(docs, eos_id=2, seed=3), TokenStream(docs, eos_id=2, seed=3)
    assert a.take(40) == b.take(40)
    assert TokenStream(docs, eos_id=2, seed=4).take(40) != TokenStream(docs, eos_id=2, seed=3).take(40)


def test_synthetic_retrieval_samples_carry_the_answer_at_the_end() -> None:
    docs = [TOK.encode("filler text that goes on and on. " * 20)]
    data = StageData(docs, eos_id=2, seed=5, seq_len=256, synthetic_ratio=1.0, synthetic_task="passkey",
                     encode=TOK.encode)
    sample = data.next_sequence(256)
    text = TOK.decode(sample.input_ids)
    assert len(sample.input_ids) == 256
    key = text.split("The pass key is ")[1][:5]
    assert text.endswith(f"What is the pass key? The pass key is {key}.")
    needle = StageData(docs, eos_id=2, seed=5, seq_len=256, synthetic_ratio=1.0, synthetic_task="needle",
                       encode=TOK.encode).next_sequence(256)
    assert "special magic number" in TOK.decode(needle.input_ids)


def test_filler_haystack_samples_are_the_evaluation_prompt_answered() -> None:
    docs = [TOK.encode("corpus words that go on and on. " * 20)]
    data = StageData(docs, eos_id=2, seed=5, seq_len=256, synthetic_ratio=1.0, synthetic_task="passkey",
                     encode=TOK.encode, synthetic_haystack="filler", tokenizer=TOK)
    for n in (128, 200, 512):
        sample = data.next_sequence(n)
        assert len(sample.input_ids) == len(sample.labels) == n
        assert sample.labels[:-1] == sample.input_ids[1:] and sample.labels[-1] == -100
        text = TOK.decode(sample.input_ids)
        key = text.split("The pass key is ")[1][:5]
        assert key.isdigit() and text.endswith(f"What is the pass key? The pass key is {key}.")
        assert "The grass is green." in text and "corpus words" not in text.split("The pass key is")[0][-80:]
    assert data.next_sequence(64).input_ids != []  # too short for the prompt: plain text instead
    mixed = StageData(docs, eos_id=2, seed=5, seq_len=256, synthetic_ratio=1.0, synthetic_task="passkey",
                      encode=TOK.encode, synthetic_haystack="mixed", tokenizer=TOK)
    kinds = ["The grass is green." in TOK.decode(mixed.next_sequence(256).input_ids) for _ in range(200)]
    assert 0.35 < sum(kinds) / len(kinds) < 0.65
    again = StageData(docs, eos_id=2, seed=5, seq_len=256, synthetic_ratio=1.0, synthetic_task="passkey",
                      encode=TOK.encode, synthetic_haystack="mixed", tokenizer=TOK)
    assert kinds == ["The grass is green." in TOK.decode(again.next_sequence(256).input_ids) for _ in range(200)]


def test_synthetic_ratio_is_respected_and_deterministic() -> None:
    chosen = [is_synthetic(1, i, 0.25) for i in range(4000)]
    assert 0.22 < sum(chosen) / len(chosen) < 0.28
    assert chosen == [is_synthetic(1, i, 0.25) for i in range(4000)]
    assert not any(is_synthetic(1, i, 0.0) for i in range(100))


def test_upsampling_and_validation_split() -> None:
    assert upsampling_weights([1, 63, 64, 200, 9999], seq_len=512) == [1, 1, 2, 3, 4]
    train, val = split_documents([f"d{i}" for i in range(200)], 0.1, seed=2)
    assert len(train) + len(val) == 200 and 5 < len(val) < 40
    assert split_documents([f"d{i}" for i in range(200)], 0.1, seed=2) == (train, val)


def test_length_curriculum_multiple_of_sp_and_deterministic() -> None:
    lengths = [step_length(s, seed=9, seq_len=1024, min_seq_len=256, multiple=4) for s in range(200)]
    assert all(256 <= n <= 1024 and n % 4 == 0 for n in lengths)
    assert len(set(lengths)) > 20
    assert lengths == [step_length(s, seed=9, seq_len=1024, min_seq_len=256, multiple=4) for s in range(200)]


def test_rank_batches_tile_the_step() -> None:
    docs = [list(range(4, 200))]
    whole = StageData(docs, eos_id=2, seed=1, seq_len=16).step_batches(0, Layout(accumulation=2, batch_size=2,
                                                                                  dp_size=1))
    pieces = {}
    for dp in range(2):
        for sp in range(2):
            layout = Layout(dp_rank=dp, dp_size=2, sp_rank=sp, sp_size=2, batch_size=1, accumulation=2)
            pieces[dp, sp] = StageData(docs, eos_id=2, seed=1, seq_len=16).step_batches(0, layout)
    for micro in range(2):
        for b in range(2):  # dp rank b holds what a single rank sees as batch row b
            for key in ("input_ids", "labels", "position_ids"):
                joined = [*pieces[b, 0][micro][key][0].tolist(), *pieces[b, 1][micro][key][0].tolist()]
                assert joined == whole[micro][key][b].tolist()


def test_sources_text_jsonl_parquet_directory(tmp_path: Path) -> None:
    (tmp_path / "a.txt").write_text("plain document")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "b.jsonl").write_text(json.dumps({"text": "json one"}) + "\n\n" + json.dumps({"text": "two"}))
    pq.write_table(pa.table({"text": ["parquet doc", ""]}), tmp_path / "sub" / "c.parquet")
    (tmp_path / ".hidden.txt").write_text("skipped")
    assert load_documents(f"file://{tmp_path}") == ["plain document", "json one", "two", "parquet doc"]
    (tmp_path / "bad.jsonl").write_text('{"body": "x"}\n')
    with pytest.raises(DataSourceError, match=r"bad\.jsonl:1: record has no string field 'text'"):
        load_documents(f"file://{tmp_path}")


def test_source_uris() -> None:
    assert resolve_source("pvc://corpora/slim/train", pvc_root=Path("/data")) == Path("/data/corpora/slim/train")
    assert resolve_source("builtin://tiny-corpus").name == "tiny-corpus"
    with pytest.raises(DataSourceError, match=r"s3:// is not supported yet"):
        resolve_source("s3://bucket/key")
    with pytest.raises(DataSourceError, match="does not exist"):
        load_documents("file:///nonexistent/corpus")
