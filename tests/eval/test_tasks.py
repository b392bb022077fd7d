"""Prompts of the retrieval tasks: layout, exact token budgets, depth placement, determinism, scoring."""

from __future__ import annotations

import re

import pytest

from ctxext_trainer.eval.haystack import SentencePool, boundary_offsets, insert_facts, split_sentences
from ctxext_trainer.eval.tasks import PromptTooLong, Sample, build_sample, score
from ctxext_trainer.tokenizer import ByteTokenizer
from tests.eval.conftest import CORPUS

TOK = ByteTokenizer()


def pool_for(task: str) -> SentencePool:
    return SentencePool.classic(TOK.encode) if task == "passkey" else SentencePool.from_texts(CORPUS, TOK.encode)


@pytest.mark.parametrize("length", [128, 300, 512, 2048])
@pytest.mark.parametrize("depth", [0.0, 0.1, 0.5, 0.77, 1.0])
def test_passkey_sits_at_the_requested_depth_within_one_filler_sentence(length, depth):
    s = build_sample("passkey", length=length, depth=depth, index=0, seed=7, tokenizer=TOK, pool=pool_for("passkey"))
    assert len(s.input_ids) + s.max_new_tokens <= length
    assert len(s.input_ids) + s.max_new_tokens > length - 25  # filled up to within one filler sentence
    text = TOK.decode(s.input_ids)
    fact = f" The pass key is {s.answer}. Remember it. {s.answer} is the pass key."
    assert text.count(fact) == 1 and text.endswith(" What is the pass key? The pass key is")
    assert len(s.answer) == 5 and s.answer.isdigit()
    # Position of the fact inside the haystack, in haystack tokens (the fact itself excluded).
    head = len(s.input_ids) - s.haystack_tokens - len(TOK.encode(fact)) - len(TOK.encode(" What is the pass key? "
                                                                                           "The pass key is"))
    before = s.fact_starts[0] - head
    longest_sentence = max(len(TOK.encode(" " + x)) for x in ("The grass is green.", "There and back again."))
    assert abs(before - depth * s.haystack_tokens) <= longest_sentence
    assert TOK.decode(s.input_ids[s.fact_starts[0]:]).startswith(fact)


@pytest.mark.parametrize("task", ["needle", "multiKeyNiah", "multiValueNiah", "variableTracking"])
@pytest.mark.parametrize("length", [512, 1024])
def test_corpus_tasks_are_well_formed(task, length):
    s = build_sample(task, length=length, depth=0.5, index=3, seed=1, tokenizer=TOK, pool=pool_for(task))
    text = TOK.decode(s.input_ids)
    assert len(s.input_ids) + s.max_new_tokens <= length
    assert "Hackers" in text or "jargon" in text or "daemon" in text or "terms" in text  # real corpus text
    if task == "variableTracking":
        names = s.answer.split()
        assert len(names) == 5 and len(re.findall(r"VAR [A-Z]{5} =", text)) == 5
        assert text.index(f"VAR {names[0]} = ") < text.index(f"VAR {names[1]} = VAR {names[0]}.")
        assert f"assigned the value {text.split(f'VAR {names[0]} = ')[1][:5]}?" in text
    elif task == "multiValueNiah":
        values = s.answer.split()
        assert len(set(values)) == 4 and all(len(v) == 7 and v.isdigit() for v in values)
        key = text.rsplit("What are all the special magic numbers for ", 1)[1].split("?")[0]
        assert all(f"One of the special magic numbers for {key} is {v}." in text for v in values)
        assert text.count("special magic number") == 4 + 2  # four facts, the question, its answer prefix
        assert text.endswith(f"The special magic numbers for {key} are")
        assert s.max_new_tokens >= len(TOK.encode(" " + ", ".join(values)))  # room for all four
    else:
        assert text.count("The special magic number for") == (2 if task == "needle" else 5)  # needles + question
        key = text.rsplit("What is the special magic number for ", 1)[1].split("?")[0]
        assert f"The special magic number for {key} is {s.answer}." in text
        assert text.endswith(f"The special magic number for {key} is")


def test_samples_are_deterministic_and_differ_by_index_and_seed():
    def make(index, seed):
        return build_sample("needle", length=512, depth=0.25, index=index, seed=seed, tokenizer=TOK,
                            pool=pool_for("needle"))

    assert make(0, 1) == make(0, 1)
    assert make(0, 1).answer != make(1, 1).answer
    assert make(0, 1).answer != make(0, 2).answer


def test_prompt_too_long_for_the_length():
    with pytest.raises(PromptTooLong, match="multiKeyNiah at 128: the prompt needs"):
        build_sample("multiKeyNiah", length=128, depth=0.5, index=0, seed=0, tokenizer=TOK,
                     pool=pool_for("multiKeyNiah"))


def test_instruction_only_when_it_leaves_room():
    short = build_sample("passkey", length=128, depth=0.5, index=0, seed=0, tokenizer=TOK, pool=pool_for("passkey"))
    long = build_sample("passkey", length=2048, depth=0.5, index=0, seed=0, tokenizer=TOK, pool=pool_for("passkey"))
    assert not TOK.decode(short.input_ids).startswith("There is an important info")
    assert TOK.decode(long.input_ids).startswith("There is an important info hidden inside a lot of irrelevant text.")


def test_insert_facts_keeps_order_on_shared_boundary():
    ids, starts = insert_facts([[1, 1], [2, 2]], [(1.0, [7]), (1.0, [8]), (0.0, [9])])
    assert ids == [9, 1, 1, 2, 2, 7, 8] and starts == [5, 6, 0]
    assert boundary_offsets([[1], [2, 3]]) == [0, 1, 3]


def test_split_sentences_cuts_run_ons():
    parts = split_sentences("word " * 300 + "end.")
    assert all(len(p) <= 400 for p in parts) and " ".join(parts).endswith("word end.")


@pytest.mark.parametrize(("task", "answer", "generated", "expected"), [
    ("passkey", "48213", " 48213.", True),
    ("passkey", "48213", "48213 is the pass key", True),
    ("passkey", "48213", " 48231", False),
    ("passkey", "48213", " 4821", False),
    ("passkey", "48213", " 482134", False),
    ("passkey", "48213", " the key", False),
    ("needle", "7302114", " 7302114. The", True),
    ("needle", "7302114", " 730 2114", False),
    ("variableTracking", "AAAAA BBBBB", " BBBBB AAAAA CCCCC", True),
    ("variableTracking", "AAAAA BBBBB", " AAAAA BBBBC", False),
    ("multiValueNiah", "1111111 2222222", " 2222222, 1111111, 3333333", True),
    ("multiValueNiah", "1111111 2222222", " 1111111 and 1111111", False),
])
def test_scoring_is_exact(task, answer, generated, expected):
    assert score(Sample(task, 512, 0.5, 0, [], answer, 8, [0], 0), generated) is expected
