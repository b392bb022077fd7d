"""Fixtures of the evaluation tests: a tiny random byte-level Llama (2 layers, hidden 64, vocab 260)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from ctxext_trainer.tokenizer import ByteTokenizer

CORPUS = [
    "Hackers value competence above all. A kludge is a clumsy but working solution. "
    "Real programmers do not comment their code! Why would they? The code is obvious. "
    "A daemon is a program that runs in the background. It waits for something to happen.",
    "The jargon file collects the slang of computer hackers. It grew over decades of use. "
    "Some terms are old; others are new. Many are jokes that only insiders understand.",
] * 20


def tiny_llama(seed: int = 0):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=260, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                         bos_token_id=1, eos_token_id=2, pad_token_id=0, attn_implementation="sdpa")
    return LlamaForCausalLM(config).eval()


@pytest.fixture(scope="session")
def model():
    return tiny_llama()


@pytest.fixture(scope="session")
def tokenizer() -> ByteTokenizer:
    return ByteTokenizer()


@pytest.fixture(scope="session")
def model_dir(tmp_path_factory, model, tokenizer) -> Path:
    """The tiny model saved as a ctxext model directory (safetensors + ctxext_tokenizer.json)."""
    path = tmp_path_factory.mktemp("tiny-model")
    model.save_pretrained(str(path))
    tokenizer.save(path)
    return path


def is_png(path: Path) -> bool:
    """PNG signature, and an IHDR with non-zero width and height."""
    data = Path(path).read_bytes()
    if len(data) < 33 or data[:8] != b"\x89PNG\r\n\x1a\n" or data[12:16] != b"IHDR":
        return False
    width, height = int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
    return width > 100 and height > 100
