"""RoPE theta applied for real: inv_freq / cos / sin of the trainer's model against transformers'
own rotary implementation and the float64 reference, for every theta rule."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from transformers import AutoConfig, LlamaConfig
from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding

from ctxext.theta import inverse_frequencies, stage_theta
from ctxext_trainer.model_loading import load_causal_lm
from ctxext_trainer.rope import keep_rope_fp32, rope_tables, rotary_module, set_rope_theta

from .conftest import make_tiny_model

SEQ_LEN = 4096
RULES = {
    "scaling-law": dict(rule="scaling-law"),
    "ntk": dict(rule="ntk"),
    "ntk-alpha": dict(rule="ntk", ntk_alpha=29.0),
    "fixed": dict(rule="fixed", override=1.25e6),
}


def theta_for(case: str) -> float:
    kwargs = dict(RULES[case])
    return stage_theta(kwargs.pop("rule"), base_theta=10000.0, original_length=128, seq_len=SEQ_LEN, head_dim=16,
                       **kwargs)


@pytest.mark.parametrize("case", sorted(RULES))
def test_loaded_model_uses_stage_theta(tiny_model: Path, case: str) -> None:
    theta = theta_for(case)
    model = load_causal_lm(tiny_model, theta=theta, seq_len=SEQ_LEN, device="cpu",
                           activation_checkpointing=False).model
    rotary = rotary_module(model)
    assert model.config.rope_parameters == {"rope_type": "default", "rope_theta": theta}
    assert model.config.max_position_embeddings >= SEQ_LEN

    reference_config = LlamaConfig(**{**model.config.to_dict(), "rope_parameters": {"rope_type": "default",
                                                                                     "rope_theta": theta}})
    hf = LlamaRotaryEmbedding(reference_config)
    assert rotary.inv_freq.dtype == torch.float32
    assert torch.equal(rotary.inv_freq, hf.inv_freq)
    expected = torch.tensor(inverse_frequencies(theta, 16), dtype=torch.float64)
    assert torch.allclose(rotary.inv_freq.double(), expected, rtol=1e-6, atol=0)

    positions = torch.tensor([[0, 1, 255, 256, 257, 1000, SEQ_LEN - 1]])
    x = torch.zeros(1, 1, 16)
    cos, sin = rotary(x, positions)
    hf_cos, hf_sin = hf(x, positions)
    assert torch.equal(cos, hf_cos) and torch.equal(sin, hf_sin)
    ref_cos, ref_sin = rope_tables(theta, 16, positions)
    # fp32 angles at position 4095 carry ~4095 · 2^-24 rad of rounding
    assert torch.allclose(cos.double(), ref_cos, atol=1e-3) and torch.allclose(sin.double(), ref_sin, atol=1e-3)


def test_bare_rope_theta_is_ignored_but_set_rope_theta_works(tiny_model: Path) -> None:
    """Why the trainer rebuilds the rotary module: transformers 5.x reads rope_parameters once."""
    model = load_causal_lm(tiny_model, theta=10000.0, seq_len=128, device="cpu", activation_checkpointing=False).model
    before = rotary_module(model).inv_freq.clone()
    model.config.rope_theta = 1e6
    assert torch.equal(rotary_module(model).inv_freq, before)
    set_rope_theta(model, 1e6, 256)
    assert torch.allclose(rotary_module(model).inv_freq.double(),
                          torch.tensor(inverse_frequencies(1e6, 16), dtype=torch.float64), rtol=1e-6)


def test_rope_stays_fp32_after_bf16_cast(tiny_model: Path) -> None:
    model = load_causal_lm(tiny_model, theta=5e5, seq_len=128, device="cpu", activation_checkpointing=False).model
    model.to(torch.bfloat16)  # what DeepSpeed's bf16 mode does to every buffer
    assert rotary_module(model).inv_freq.dtype == torch.bfloat16
    keep_rope_fp32(model)
    assert rotary_module(model).inv_freq.dtype == torch.float32
    assert torch.allclose(rotary_module(model).inv_freq.double(),
                          torch.tensor(inverse_frequencies(5e5, 16), dtype=torch.float64), rtol=1e-6)


LLAMA3 = {"rope_type": "llama3", "rope_theta": 10000.0, "factor": 8.0, "low_freq_factor": 1.0,
          "high_freq_factor": 4.0, "original_max_position_embeddings": 64}


def test_llama3_rope_type_keeps_its_frequency_scaling_through_a_stage(tmp_path: Path) -> None:
    """A Llama-3.1/3.2-style base (rope_type llama3) keeps its scaling; only the theta changes."""
    base = make_tiny_model(tmp_path / "llama3-base", rope=dict(LLAMA3), max_positions=512)
    theta = 2.5e6
    model = load_causal_lm(base, theta=theta, seq_len=SEQ_LEN, device="cpu", activation_checkpointing=False).model
    assert model.config.rope_parameters == {**LLAMA3, "rope_theta": theta}  # 64, not the raised 4096
    assert model.config.max_position_embeddings == SEQ_LEN

    reference = LlamaRotaryEmbedding(LlamaConfig(
        hidden_size=64, num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=SEQ_LEN,
        rope_parameters={**LLAMA3, "rope_theta": theta}))
    rotary = rotary_module(model)
    assert rotary.inv_freq.dtype == torch.float32 and torch.equal(rotary.inv_freq, reference.inv_freq)
    plain = torch.tensor(inverse_frequencies(theta, 16), dtype=torch.float32)
    assert not torch.allclose(rotary.inv_freq, plain)  # llama3's low-frequency division by 8 is applied
    assert torch.allclose(rotary.inv_freq[-1], plain[-1] / 8)  # the longest wavelength is divided by factor

    model.save_pretrained(str(tmp_path / "exported"))
    saved = AutoConfig.from_pretrained(str(tmp_path / "exported"))
    assert saved.rope_parameters == {**LLAMA3, "rope_theta": theta}
    again = load_causal_lm(tmp_path / "exported", theta=theta * 4, seq_len=2 * SEQ_LEN, device="cpu",
                           activation_checkpointing=False).model  # the next stage starts from the export
    assert again.config.rope_parameters == {**LLAMA3, "rope_theta": theta * 4}


def test_saved_config_round_trips_theta(tiny_model: Path, tmp_path: Path) -> None:
    model = load_causal_lm(tiny_model, theta=691374.25, seq_len=512, device="cpu", activation_checkpointing=False).model
    model.save_pretrained(str(tmp_path))
    config = AutoConfig.from_pretrained(str(tmp_path))
    assert config.rope_parameters["rope_theta"] == 691374.25
    assert config.max_position_embeddings == 512
