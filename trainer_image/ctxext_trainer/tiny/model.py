"""The tiny Llama-shaped demo model: its shape, construction, and greedy passkey scoring.

Shape (measured good for passkey retrieval at 128 tokens on CPU): 4 layers, hidden 128, 4 heads of
32, MLP 512, byte vocabulary (260), tied embeddings, RoPE theta 10000 — about 1.08M parameters.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch
from transformers import LlamaConfig, LlamaForCausalLM

from ctxext_trainer.tokenizer import ByteTokenizer

TINY_SHAPE: dict[str, Any] = {
    "vocab_size": ByteTokenizer.vocab_size, "hidden_size": 128, "intermediate_size": 512,
    "num_hidden_layers": 4, "num_attention_heads": 4, "num_key_value_heads": 4, "tie_word_embeddings": True,
}


def tiny_config(*, original_length: int = 128, rope_theta: float = 10000.0) -> LlamaConfig:
    tok = ByteTokenizer()
    return LlamaConfig(**TINY_SHAPE, max_position_embeddings=original_length,
                       rope_parameters={"rope_type": "default", "rope_theta": float(rope_theta)},
                       bos_token_id=tok.bos_id, eos_token_id=tok.eos_id, pad_token_id=tok.pad_id)


def new_tiny_model(seed: int, **kwargs: Any) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    return LlamaForCausalLM(tiny_config(**kwargs))


DEPTHS = (0.0, 0.25, 0.5, 0.75, 1.0)


def passkey_accuracy(model: LlamaForCausalLM, *, length: int, samples: int, seed: int) -> float:
    """Passkey accuracy at ``length`` as the evaluation scores it (``samples`` spread over 5 depths)."""
    from ctxext_trainer.eval.suite import evaluate_model

    evaluation = evaluate_model(model, ByteTokenizer(), tasks=["passkey"], lengths=[length], depths=DEPTHS,
                                samples_per_cell=max(1, samples // len(DEPTHS)), seed=seed,
                                original_length=length, output_dir=None)
    return float(evaluation["passkeyAccuracy"][str(length)])


@torch.no_grad()
def text_perplexity(model: LlamaForCausalLM, windows: list[list[int]]) -> float:
    """exp(mean next-token loss) over held-out windows of one length."""
    was_training = model.training
    model.eval()
    ids = torch.tensor(windows, dtype=torch.long)
    losses = [float(model(input_ids=ids[i:i + 16], labels=ids[i:i + 16]).loss) for i in range(0, len(ids), 16)]
    model.train(was_training)
    return math.exp(sum(losses) / len(losses))


def save_tiny(model: LlamaForCausalLM, directory: str | Path) -> Path:
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(out), safe_serialization=True)
    ByteTokenizer().save(out)
    return out
