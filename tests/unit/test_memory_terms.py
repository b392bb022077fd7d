"""The planner's DeepSpeed terms (:func:`ctxext.memory.deepspeed_terms`) pinned against DeepSpeed's own
config values for the config the trainer generates, and each term's formula (issue 25 item 4)."""

from __future__ import annotations

from typing import Any

import pytest

from ctxext.api.spec import ModelArchitecture
from ctxext.memory import GIB, ZERO_SETTINGS, deepspeed_terms, estimate_memory, parameter_count, parameter_sizes
from ctxext.stage_config import StageConfig

LLAMA3_8B = ModelArchitecture(num_layers=32, hidden_size=4096, intermediate_size=14336, num_attention_heads=32,
                              num_key_value_heads=8, vocab_size=128256)
TINY = ModelArchitecture(num_layers=4, hidden_size=128, intermediate_size=512, num_attention_heads=4,
                         num_key_value_heads=4, vocab_size=260, tie_word_embeddings=True)
HEAD = 128256 * 4096  # lm_head (and embed_tokens): the largest tensor


def trainer_zero_config(zero: int, device: str) -> Any:
    """DeepSpeed's parsed ZeRO config of the trainer's generated config."""
    from deepspeed.runtime.zero.config import DeepSpeedZeroConfig

    from ctxext_trainer.engine import deepspeed_config

    config = StageConfig(job="j", job_name="j-s1-a1", stage=1, total_stages=1, model_path="/m", output_dir="/o",
                         seq_len=256, rope_theta=1e4, original_context_length=128, steps=1, learning_rate=1e-3,
                         device=device, zero_stage=zero)
    return deepspeed_config(config), DeepSpeedZeroConfig(**deepspeed_config(config)["zero_optimization"])


@pytest.mark.parametrize("zero", [1, 2, 3])
@pytest.mark.parametrize("device", ["cpu", "cuda"])
def test_the_settings_are_those_deepspeed_runs_the_trainer_s_config_with(zero: int, device: str) -> None:
    _, parsed = trainer_zero_config(zero, device)
    assert parsed.reduce_bucket_size == ZERO_SETTINGS.reduce_bucket_size == 500_000_000
    assert parsed.allgather_bucket_size == ZERO_SETTINGS.allgather_bucket_size
    assert parsed.prefetch_bucket_size == ZERO_SETTINGS.prefetch_bucket_size == 50_000_000
    assert parsed.param_persistence_threshold == ZERO_SETTINGS.param_persistence_threshold == 100_000
    assert parsed.max_live_parameters == ZERO_SETTINGS.max_live_parameters
    assert parsed.max_reuse_distance == ZERO_SETTINGS.max_reuse_distance == 1_000_000_000
    assert parsed.contiguous_gradients is True  # the buckets are allocated
    assert parsed.overlap_comm is (device == "cuda")  # two buckets at ZeRO 1/2 on CUDA


def test_zero_1_under_bf16_runs_the_zero_optimizer_not_the_bf16_optimizer() -> None:
    """DeepSpeed picks BF16_Optimizer (an fp32 gradient buffer of the whole model) for ZeRO 1 only with
    grad_accum_dtype fp32; the trainer's ZeRO-1 config leaves it at the model dtype."""
    ds, _ = trainer_zero_config(1, "cuda")
    assert ds["bf16"]["enabled"] and "data_types" not in ds
    assert trainer_zero_config(2, "cuda")[0]["data_types"] == {"grad_accum_dtype": "fp32"}


def test_parameter_sizes_add_up() -> None:
    assert sum(parameter_sizes(LLAMA3_8B)) == parameter_count(LLAMA3_8B) == 8_030_261_248
    assert sum(parameter_sizes(TINY)) == parameter_count(TINY) and max(parameter_sizes(TINY)) == 128 * 512


def test_each_term_s_formula_at_llama3_8b() -> None:
    def terms(zero: int, gpu: bool = True, world: int = 8) -> dict[str, float]:
        return deepspeed_terms(LLAMA3_8B, zero_stage=zero, on_gpu=gpu, world_size=world, weight_bytes=2 if gpu else 4)

    assert sum(terms(0).values()) == 0
    assert terms(1) == {"reduceBuckets": 2 * 5e8 * 2, "masterWeights": 0, "persistentParameters": 0,
                        "liveParameters": 0, "fullGradient": 0}  # two bf16 buckets (overlap_comm), no bf16 optimizer
    assert terms(2)["reduceBuckets"] == 2 * 5e8 * 2 and terms(2)["fullGradient"] == HEAD * 2
    z3 = terms(3)
    assert z3["reduceBuckets"] == 5e8 * 2  # one ipg bucket at ZeRO 3
    assert z3["persistentParameters"] == pytest.approx(65 * 4096 * 2 * (1 - 1 / 8))  # the norms only
    assert z3["liveParameters"] == (1e9 + 5e7 + HEAD) * 2  # max_reuse_distance + prefetch + the head
    assert z3["fullGradient"] == HEAD * 2
    assert sum(z3.values()) / GIB == pytest.approx(4.84, abs=0.01)
    cpu = terms(2, gpu=False, world=2)  # fp32: the master copy of the partition; the bucket's touched pages only
    assert cpu["masterWeights"] == 4 * 8_030_261_248 / 2 and cpu["reduceBuckets"] == 5e8 * 4


def test_the_tiny_model_persists_whole_under_zero_3_on_cpu() -> None:
    psi = parameter_count(TINY)
    z3 = deepspeed_terms(TINY, zero_stage=3, on_gpu=False, world_size=2, weight_bytes=4)
    assert z3["persistentParameters"] == psi * 4 / 2 and z3["liveParameters"] == 0  # every tensor ≤ 1e5
    assert z3["reduceBuckets"] == psi * 4  # only the pages the gradients fill
    z1 = deepspeed_terms(TINY, zero_stage=1, on_gpu=False, world_size=2, weight_bytes=4)
    assert z1["masterWeights"] == psi * 4 / 2 and z1["fullGradient"] == 0


def test_without_checkpointing_one_layer_s_backward_is_counted() -> None:
    kw: dict[str, Any] = dict(batch_size=1, world_size=2, sequence_parallel=1, zero_stage=0, on_gpu=False)
    off = estimate_memory(TINY, seq_len=4096, activation_checkpointing=False, **kw)
    e = 11 * 128 + 3 * 128 + 4 * 512  # elements per token and layer
    assert off.activations * GIB == pytest.approx((4 + 1) * 4096 * e * 4 * 1.1)
