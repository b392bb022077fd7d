"""Fixtures of the trainer tests: a tiny Llama on disk, a small corpus, stage configs, a torchrun launcher.

The tiny model (2 layers, hidden 64, 4 heads / 2 KV heads, byte vocabulary of 260) trains a step
in milliseconds on one CPU thread. Multi-process runs use torchrun with gloo and
``OMP_NUM_THREADS=1`` (default threading makes CPU steps 20–40× slower on shared machines).
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

TINY_THETA = 10000.0
SENTENCES = [
    "The quick brown fox jumps over the lazy dog while the river runs north. ",
    "A long context model must remember the pass key it read many tokens ago. ",
    "Rotary position embeddings rotate query and key pairs by angles that grow with position. ",
    "Every curriculum stage raises the base frequency and trains on longer sequences. ",
]


def make_tiny_model(directory: Path, *, seed: int = 0, theta: float = TINY_THETA,
                    rope: dict[str, Any] | None = None, max_positions: int = 128) -> Path:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from ctxext_trainer.tokenizer import ByteTokenizer

    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=260, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=max_positions,
                         rope_parameters=rope or {"rope_type": "default", "rope_theta": theta},
                         tie_word_embeddings=False,
                         bos_token_id=1, eos_token_id=2, pad_token_id=0)
    model = LlamaForCausalLM(config)
    directory.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(directory), safe_serialization=True)
    ByteTokenizer().save(directory)
    return directory


def make_corpus(directory: Path, docs: int = 24) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    for i in range(docs):
        text = "".join(SENTENCES[(i + j) % len(SENTENCES)] for j in range(1 + i % 5))
        (directory / f"doc{i:02d}.txt").write_text(f"Document {i}. {text}")
    return directory


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_model(tmp_path_factory.mktemp("tiny-model"))


@pytest.fixture(scope="session")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_corpus(tmp_path_factory.mktemp("corpus"))


def stage_config(model: Path, corpus_dir: Path, output: Path, **overrides: Any) -> dict[str, Any]:
    """A stage config (wire form) for the tiny model; overrides use the snake_case field names."""
    from ctxext.stage_config import StageConfig

    base: dict[str, Any] = dict(
        job="tiny", namespace="default", job_name="tiny-s1-a1", stage=1, total_stages=1, model_path=str(model),
        output_dir=str(output), seq_len=64, rope_theta=40000.0, original_context_length=32, steps=6,
        learning_rate=3e-3, warmup_steps=0, lr_schedule="constant", batch_size=1, gradient_accumulation=1,
        sequence_parallel=1, zero_stage=0, activation_checkpointing=False, device="cpu",
        data={"source": f"file://{corpus_dir}", "seed": 7, "validationFraction": 0.0},
        evaluation={"enabled": False}, checkpoint_interval=1000, keep_checkpoints=2, metrics_port=0)
    base.update(overrides)
    return StageConfig.model_validate(base).to_wire()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def trainer_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_PORT")}
    env.update(OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false", **extra)
    return env


def run_trainer(config: dict[str, Any], *, nproc: int = 1, env: dict[str, str] | None = None,
                timeout: float = 300, wait: bool = True) -> subprocess.CompletedProcess[str] | subprocess.Popen[str]:
    """Run ``python -m ctxext_trainer`` on a config written next to it; with nproc > 1 through
    ``python -m ctxext_trainer.launch`` (torchrun that keeps the trainer's exit code)."""
    path = Path(config["outputDir"]).parent / f"{Path(config['outputDir']).name}-config.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(config))
    cmd = [sys.executable, "-m", "ctxext_trainer", "--stage-config", str(path)]
    if nproc > 1:
        cmd = [sys.executable, "-m", "ctxext_trainer.launch", f"--nproc-per-node={nproc}",
               f"--master-port={free_port()}", "-m", "ctxext_trainer", "--stage-config", str(path)]
    full_env = env or trainer_env()
    if not wait:
        return subprocess.Popen(cmd, env=full_env, text=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    return subprocess.run(cmd, env=full_env, text=True, capture_output=True, timeout=timeout)


def train_log(output: Path) -> list[dict[str, Any]]:
    path = output / "train_log.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []
