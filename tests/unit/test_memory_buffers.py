"""The planner's buffer terms (ring attention; DeepSpeed's in test_memory_terms.py) and its
evaluation memory: worked numbers, and a plan refused in plain words when evaluation does not fit."""

from __future__ import annotations

import pytest

from ctxext.api.spec import ModelArchitecture
from ctxext.errors import SpecError
from ctxext.eval_memory import EVAL_LOSS_CHUNK, EVAL_TOKENS_PER_BATCH, PREFILL_CHUNK, estimate_eval_memory
from ctxext.memory import GIB, estimate_memory, ring_attention_bytes
from tests.unit.helpers import example, with_path
from tests.unit.test_planner import plan_of

LLAMA3_8B = ModelArchitecture(num_layers=32, hidden_size=4096, intermediate_size=14336, num_attention_heads=32,
                              num_key_value_heads=8, vocab_size=128256)


def test_ring_terms_at_1m_with_ulysses_8_ring_4():
    saved, transient = ring_attention_bytes(LLAMA3_8B, tokens=32768, ring=4, saved_layers=1, act_bytes=2)
    assert saved == 32768 * 4096 * 4 + 32768 * 32 * 4  # fp32 out + lse of the one recomputed layer
    gqa = (4 * 2 + 8) * 32768 * 4096  # K/V and dK/dV expanded from 8 to 32 heads: 2 GiB
    assert transient == 4 * 32768 * 4096 + 16 * 32768 * 1024 + 2 * 2 * 32768 * 1024 + gqa
    assert 3 * GIB < transient + saved < 5 * GIB  # the "roughly 3-5 GiB transient"
    no_gqa = LLAMA3_8B.model_copy(update={"num_key_value_heads": 32})
    s, q = 32768, 4096  # kv = q: no expansion, the dK/dV terms grow to the query width
    no_gqa_transient = ring_attention_bytes(no_gqa, tokens=s, ring=4, saved_layers=1, act_bytes=2)[1]
    assert no_gqa_transient == 4 * s * q + 16 * s * q + 4 * s * q
    assert ring_attention_bytes(LLAMA3_8B, tokens=32768, ring=1, saved_layers=1, act_bytes=2) == (0.0, 0.0)
    assert ring_attention_bytes(LLAMA3_8B, tokens=32768, ring=4, saved_layers=32, act_bytes=2)[0] == 32 * saved


def test_estimate_counts_the_new_terms_only_where_they_apply():
    kw = dict(seq_len=1048576, batch_size=1, world_size=64, sequence_parallel=32, activation_checkpointing=True,
              on_gpu=True)
    ring = estimate_memory(LLAMA3_8B, zero_stage=3, ring_degree=4, **kw)
    ulysses = estimate_memory(LLAMA3_8B, zero_stage=3, ring_degree=1, **kw)
    assert ulysses.attention == 0 and ring.attention == pytest.approx((0.504 + 3.125) * 1.1, abs=0.01)
    assert ring.total - ulysses.total == pytest.approx(ring.attention)
    assert estimate_memory(LLAMA3_8B, zero_stage=0, **kw).buffers == 0
    assert ring.buffers == pytest.approx(4.84, abs=0.01)  # tests/unit/test_memory_terms.py


def test_eval_constants_are_the_trainers():
    from ctxext_trainer.eval import generate, suite

    assert (EVAL_TOKENS_PER_BATCH, PREFILL_CHUNK, EVAL_LOSS_CHUNK) == (
        suite.TOKENS_PER_BATCH, generate.PREFILL_CHUNK, generate.LOSS_CHUNK)


def test_eval_memory_falls_with_the_sequence_parallel_degree():
    totals = [estimate_eval_memory(LLAMA3_8B, length=1048576, sequence_parallel=sp, original_length=8192,
                                   on_gpu=True).total for sp in (1, 8, 16, 32)]
    assert totals == sorted(totals, reverse=True) and totals[0] > 140 and totals[-1] < 25


def test_example_plan_carries_the_evaluation_estimate():
    stages = plan_of(example("llama3-8b-1m.yaml")).stages
    assert [s.estimated_eval_memory_gib for s in stages] == pytest.approx([20.97, 20.97, 20.97, 24.14], abs=0.01)
    assert stages[3].memory_breakdown_gib["attention"] > 3 and stages[0].memory_breakdown_gib["attention"] == 0


def test_evaluation_that_does_not_fit_is_refused_in_plain_words():
    # without the example's gates: they need lengths this test leaves out (ctxext.decide.gate_problems)
    obj = with_path(with_path(example("llama3-8b-1m.yaml"), "spec.evaluation.gates", []),
                    "spec.evaluation.lengths", [8192, 1048576])
    assert plan_of(obj).stages[0].estimated_eval_memory_gib == pytest.approx(43.53, abs=0.01)  # 1M over SP 8 fits
    obj = with_path(obj, "spec.curriculum.stages.0.sequenceParallel", 4)  # training fits, 1M over 4 ranks does not
    with pytest.raises(SpecError) as err:
        plan_of(obj)
    assert err.value.field == "spec.evaluation.lengths"
    assert str(err.value).startswith("spec.evaluation.lengths: stage 1's evaluation at length 1048576 (sharded over "
                                     "sequenceParallel 4) needs about ")
    assert "GiB per GPU but gpuMemoryGiB is 48" in str(err.value) and "Traceback" not in str(err.value)


def test_evaluation_is_not_counted_when_disabled():
    obj = with_path(with_path(example("llama3-8b-1m.yaml"), "spec.evaluation.gates", []),
                    "spec.evaluation.enabled", False)  # gates with evaluation disabled are refused
    assert all(s.estimated_eval_memory_gib is None for s in plan_of(obj).stages)
