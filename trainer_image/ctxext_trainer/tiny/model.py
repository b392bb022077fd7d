"""The tiny Llama-shaped demo model: its shape, construction, and greedy passkey scoring.

Shape (measured good for passkey retrieval at 128 tokens on CPU): 4 layers, hidden 128, 4 heads of
32, MLP 512, byte vocabulary (260), tied embeddings, RoPE theta 10000 — about 1.08M parameters.
"""

from __future__ import annotations

import math
import random
from pathlib import Path
from typing import Any

import torch
from transformers import LlamaConfig, LlamaForCausalLM

from ctxext_trainer.tiny.passkey import make_passkey_sample
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


@torch.no_grad()
def greedy_answers(model: LlamaForCausalLM, prompts: list[list[int]], n_tokens: int) -> list[list[int]]:
    """Greedy continuations of equal-length prompts (no cache: the prompts are short)."""
    ids = torch.tensor(prompts, dtype=torch.long)
    for _ in range(n_tokens):
        logits = model(input_ids=ids).logits[:, -1, :]
        ids = torch.cat([ids, logits.argmax(-1, keepdim=True)], dim=1)
    return ids[:, len(prompts[0]):].tolist()


@torch.no_grad()
def passkey_accuracy(model: LlamaForCausalLM, *, length: int, samples: int, seed: int, batch: int = 25) -> float:
    """Exact-match accuracy of the greedy answer over ``samples`` prompts at evenly spread depths."""
    tok, rng = ByteTokenizer(), random.Random(seed)
    was_training = model.training
    model.eval()
    correct = 0
    items = [make_passkey_sample(rng, tok, length=length, depth=i / max(samples - 1, 1)) for i in range(samples)]
    for start in range(0, samples, batch):
        chunk = items[start:start + batch]
        outs = greedy_answers(model, [s.prompt_ids for s in chunk], len(chunk[0].answer_ids))
        correct += sum(out == s.answer_ids for out, s in zip(outs, chunk, strict=True))
    model.train(was_training)
    return correct / samples


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
