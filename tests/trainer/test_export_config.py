"""The exported ``config.json`` read by a transformers-4.x-style reader (issue 25 item 3).

transformers 5 keeps RoPE in ``rope_parameters``; transformers 4.x, converters and inference
servers read only ``rope_theta`` and ``rope_scaling``. :func:`legacy_reader_inv_freq` below knows
only those keys and computes the inverse frequencies the way transformers 4.x does
(``_compute_default_rope_parameters`` / ``_compute_llama3_parameters``); they must equal the ones
the exported model runs with in transformers 5.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import torch
from transformers import AutoConfig, AutoModelForCausalLM

from ctxext_trainer.export import export_model
from ctxext_trainer.model_loading import load_causal_lm
from ctxext_trainer.tokenizer import ByteTokenizer

from .conftest import make_tiny_model

LLAMA3 = {"rope_type": "llama3", "rope_theta": 10000.0, "factor": 8.0, "low_freq_factor": 1.0,
          "high_freq_factor": 4.0, "original_max_position_embeddings": 64}


def legacy_reader_inv_freq(config: dict[str, Any]) -> torch.Tensor:
    """inv_freq as transformers 4.x derives it from ``rope_theta`` + ``rope_scaling`` (nothing else)."""
    base = config.get("rope_theta", 10000.0)  # 4.x LlamaConfig's default when the key is missing
    dim = config.get("head_dim") or config["hidden_size"] // config["num_attention_heads"]
    inv_freq = 1.0 / (base ** (torch.arange(0, dim, 2, dtype=torch.int64).float() / dim))
    scaling = config.get("rope_scaling")
    rope_type = "default" if scaling is None else scaling.get("rope_type", scaling.get("type"))
    if rope_type == "default":
        return inv_freq
    assert rope_type == "llama3", rope_type
    factor, low, high = scaling["factor"], scaling["low_freq_factor"], scaling["high_freq_factor"]
    old = scaling["original_max_position_embeddings"]
    wavelen = 2 * math.pi / inv_freq
    scaled = torch.where(wavelen > old / low, inv_freq / factor, inv_freq)
    smooth = (old / wavelen - low) / (high - low)
    smoothed = (1 - smooth) * scaled / factor + smooth * scaled
    medium = ~(wavelen < old / high) * ~(wavelen > old / low)
    return torch.where(medium, smoothed, scaled)


@pytest.mark.parametrize("rope", [None, LLAMA3], ids=["default", "llama3"])
def test_export_carries_the_keys_transformers_4_reads(tmp_path: Path, rope: dict[str, Any] | None) -> None:
    base = make_tiny_model(tmp_path / "base", rope=dict(rope) if rope else None, max_positions=128)
    theta = 3580165449.0
    loaded = load_causal_lm(base, theta=theta, seq_len=1024, device="cpu", activation_checkpointing=False)
    engine = SimpleNamespace(module=loaded.model)  # what export_model reads of a ZeRO-0 engine
    out = export_model(engine, loaded.model, ByteTokenizer(), tmp_path / "stage", zero_stage=0, is_rank0=True)

    saved = json.loads((out / "config.json").read_text())
    assert saved["rope_theta"] == theta
    if rope is None:
        assert saved["rope_scaling"] is None
    else:
        assert saved["rope_scaling"] == {k: v for k, v in LLAMA3.items() if k != "rope_theta"}
    legacy = legacy_reader_inv_freq(saved)

    # transformers 5 reads the same file to the same RoPE: rope_parameters unchanged, same frequencies
    assert AutoConfig.from_pretrained(str(out)).rope_parameters == {**(rope or {"rope_type": "default"}),
                                                                     "rope_theta": theta}
    reloaded = AutoModelForCausalLM.from_pretrained(str(out), dtype=torch.float32)
    assert torch.allclose(reloaded.model.rotary_emb.inv_freq, legacy, rtol=1e-6, atol=0)
    # and a 4.x reader of the config as transformers 5 alone wrote it would have used the default base
    without = {k: v for k, v in saved.items() if k not in ("rope_theta", "rope_scaling")}
    assert not torch.allclose(legacy_reader_inv_freq(without), legacy)
