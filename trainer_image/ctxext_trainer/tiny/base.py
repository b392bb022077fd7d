"""``ctxext init-tiny``: train the tiny base model at its original length L0 (single process, CPU).

Recipe: each step draws one sequence length uniformly from [``min_len``, L0] and fills a batch with
windows of real text (the shipped corpus) and passkey samples (the key at a uniform random depth).
Varying both the depth and the length is what makes the model learn retrieval rather than a
position lookup: a base trained mostly at one length scores well there and carries retrieval
nowhere. AdamW, linear warm-up, cosine decay to 10%. Passkey accuracy at L0 typically jumps from
chance to ~1.0 in a sudden phase transition after a few hundred steps. Deterministic given the seed
(single thread).
"""

from __future__ import annotations

import json
import math
import random
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from ctxext_trainer.tiny.corpus import TokenStream, corpus_documents, split_documents
from ctxext_trainer.tiny.model import new_tiny_model, passkey_accuracy, save_tiny, text_perplexity
from ctxext_trainer.tiny.passkey import passkey_pools, passkey_row
from ctxext_trainer.tokenizer import ByteTokenizer

#: Passkey samples used to check the bar; their seed differs from every training seed.
CHECK_SEED = 987_654_321
PASS_BAR = 0.95


@dataclass(kw_only=True)
class BaseTrainingConfig:
    """Settings of ``ctxext init-tiny`` (the defaults are the committed model's)."""

    seed: int = 0
    """Seed of the weights, the data order and the passkey samples."""
    original_length: int = 128
    """L0: the longest training length and the model's max_position_embeddings."""
    min_len: int = 112
    """Shortest training length (the evaluation's passkey prompt and answer need 104 bytes)."""
    steps: int = 1200
    """Optimizer steps."""
    batch_size: int = 16
    """Sequences per step."""
    passkey_ratio: float = 0.5
    """Fraction of each batch that is passkey samples."""
    learning_rate: float = 2e-3
    """Peak learning rate."""
    warmup_steps: int = 50
    """Linear warm-up steps."""
    eval_every: int = 100
    """Steps between progress checks (passkey accuracy at L0 on 50 samples)."""
    check_samples: int = 200
    """Samples in the final check at L0."""


def train_base(out_dir: str | Path, cfg: BaseTrainingConfig,
               log: Callable[[str], None] = print) -> dict[str, float | int]:
    """Train, check and save the base model; returns the final metrics (also in training.json)."""
    torch.set_num_threads(1)
    tok = ByteTokenizer()
    train_docs, held_docs = split_documents(corpus_documents())
    stream = TokenStream.from_documents(train_docs, tok.encode)
    pools = passkey_pools(tok, train_docs)
    held = TokenStream.from_documents(held_docs, tok.encode).windows_in_order(cfg.original_length, 64)
    model = new_tiny_model(cfg.seed, original_length=cfg.original_length)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.learning_rate, betas=(0.9, 0.95), weight_decay=0.01)

    def lr_at(step: int) -> float:
        if step < cfg.warmup_steps:
            return cfg.learning_rate * (step + 1) / cfg.warmup_steps
        progress = (step - cfg.warmup_steps) / max(1, cfg.steps - cfg.warmup_steps)
        return cfg.learning_rate * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))

    rng = random.Random(cfg.seed)
    n_pk = round(cfg.batch_size * cfg.passkey_ratio)
    started, loss_sum = time.monotonic(), 0.0
    model.train()
    for step in range(cfg.steps):
        length = rng.randint(cfg.min_len, cfg.original_length)
        rows = [passkey_row(rng, tok, pools, length=length) for _ in range(n_pk)]
        rows += [(w, w) for w in (stream.window(rng, length) for _ in range(cfg.batch_size - n_pk))]
        ids = torch.tensor([r[0] for r in rows], dtype=torch.long)
        labels = torch.tensor([r[1] for r in rows], dtype=torch.long)
        for group in opt.param_groups:
            group["lr"] = lr_at(step)
        loss = model(input_ids=ids, labels=labels).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        loss_sum += float(loss.detach())
        if (step + 1) % cfg.eval_every == 0 or step + 1 == cfg.steps:
            acc = passkey_accuracy(model, length=cfg.original_length, samples=50, seed=CHECK_SEED + step)
            log(f"step {step + 1}/{cfg.steps} loss {loss_sum / cfg.eval_every:.3f} passkey@{cfg.original_length} "
                f"{acc:.2f} ({time.monotonic() - started:.0f}s)")
            loss_sum = 0.0
    metrics: dict[str, float | int] = {
        "passkeyAccuracy": passkey_accuracy(model, length=cfg.original_length, samples=cfg.check_samples,
                                            seed=CHECK_SEED),
        "heldOutPerplexity": text_perplexity(model, held),
        "steps": cfg.steps, "wallSeconds": round(time.monotonic() - started, 1),
        "parameters": sum(p.numel() for p in model.parameters()),
    }
    save_tiny(model, out_dir)
    Path(out_dir, "training.json").write_text(json.dumps({"config": asdict(cfg), "metrics": metrics}, indent=2))
    return metrics
