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

from ctxext_trainer.rope import set_rope_theta
from ctxext_trainer.tiny.data import IGNORE, TokenStream, corpus_documents, passkey_pools, passkey_row, split_documents
from ctxext_trainer.tiny.model import new_tiny_model, passkey_accuracy, save_tiny, text_perplexity
from ctxext_trainer.tokenizer import ByteTokenizer

#: Passkey samples used to check the bar; their seed differs from every training seed.
CHECK_SEED = 987_654_321
PASS_BAR = 0.95


@dataclass(kw_only=True)
class BaseTrainingConfig:
    """Settings of ``ctxext init-tiny`` (the defaults are the committed model's)."""

    seed: int = 0
    """Seed of the weights, the data order and the passkey samples."""
    init_from: str | None = None
    """Continue from this saved tiny model instead of fresh weights (a second training phase)."""
    original_length: int = 128
    """L0: the longest training length and the model's max_position_embeddings."""
    min_len: int = 112
    """Shortest training length (the evaluation's passkey prompt and answer need 104 bytes)."""
    steps: int = 1500
    """Optimizer steps (the cosine schedule spans them)."""
    stop_accuracy: float | None = None
    """When set: once a progress check reaches this passkey accuracy at L0, the learning rate decays
    linearly to 10% over ``cooldown_steps`` more steps and training stops (None: train every step)."""
    cooldown_steps: int = 100
    """Steps after the check that reached ``stop_accuracy``."""
    batch_size: int = 16
    """Sequences per step."""
    passkey_ratio: float = 0.5
    """Fraction of each batch that is passkey samples."""
    short_fact_ratio: float = 0.0
    """Fraction of the passkey samples that state the key once, briefly (see
    :func:`ctxext_trainer.tiny.data.passkey_row`): the key's distance from the question then varies
    over most of L0 rather than over the evaluation prompt's 23 bytes of haystack."""
    answer_weight: float = 1.0
    """Loss weight of the passkey answer tokens (every other token weighs 1)."""
    learning_rate: float = 2e-3
    """Peak learning rate."""
    warmup_steps: int = 50
    """Linear warm-up steps."""
    eval_every: int = 100
    """Steps between progress checks (passkey accuracy at L0 on 50 samples)."""
    check_samples: int = 200
    """Samples in the final check at L0."""
    theta_jitter: tuple[float, float] | None = None
    """When set (lo, hi): each step trains with a RoPE theta drawn log-uniformly from [lo, hi] (its own
    seeded stream; checks and the saved model use ``base_theta``). A tiny base trained at one theta
    learns a retrieval tied to exact RoPE phases that any theta change erases (measured: passkey at 128
    1.00 at theta 10000, 0.00 at 12000); jitter makes it match on content, as large pretrained models do."""
    base_theta: float = 10000.0
    """The RoPE theta of the saved model."""


def weighted_loss(logits: torch.Tensor, labels: torch.Tensor, answer_at: list[int], weight: float) -> torch.Tensor:
    """Next-token cross-entropy; targets from ``answer_at[row]`` on weigh ``weight``, padding 0."""
    target = labels[:, 1:]
    nll = torch.nn.functional.cross_entropy(logits[:, :-1].flatten(0, 1).float(), target.flatten(),
                                            ignore_index=IGNORE, reduction="none").view_as(target)
    w = (target != IGNORE).float()
    pos = torch.arange(1, labels.shape[1]).unsqueeze(0)
    w = torch.where(pos >= torch.tensor(answer_at).unsqueeze(1), w * weight, w)
    return (nll * w).sum() / w.sum()


def train_base(out_dir: str | Path, cfg: BaseTrainingConfig,
               log: Callable[[str], None] = print) -> dict[str, float | int]:
    """Train, check and save the base model; returns the final metrics (also in training.json)."""
    torch.set_num_threads(1)
    tok = ByteTokenizer()
    train_docs, held_docs = split_documents(corpus_documents())
    stream = TokenStream.from_documents(train_docs, tok.encode)
    pools = passkey_pools(tok, train_docs)
    held = TokenStream.from_documents(held_docs, tok.encode).windows_in_order(cfg.original_length, 64)
    if cfg.init_from:
        from transformers import LlamaForCausalLM

        model = LlamaForCausalLM.from_pretrained(cfg.init_from, local_files_only=True)
    else:
        model = new_tiny_model(cfg.seed, original_length=cfg.original_length)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.learning_rate, betas=(0.9, 0.95), weight_decay=0.01)

    cooldown_from: int | None = None

    def lr_at(step: int) -> float:
        if cooldown_from is not None:
            peak = lr_at_schedule(cooldown_from)
            return peak * (1.0 - 0.9 * (step - cooldown_from) / cfg.cooldown_steps)
        return lr_at_schedule(step)

    def lr_at_schedule(step: int) -> float:
        if step < cfg.warmup_steps:
            return cfg.learning_rate * (step + 1) / cfg.warmup_steps
        progress = (step - cfg.warmup_steps) / max(1, cfg.steps - cfg.warmup_steps)
        return cfg.learning_rate * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))

    rng = random.Random(cfg.seed)
    theta_rng = random.Random(f"theta-jitter:{cfg.seed}")

    def use_theta(theta: float) -> None:
        if cfg.theta_jitter is not None:
            set_rope_theta(model, theta, cfg.original_length)

    n_pk = round(cfg.batch_size * cfg.passkey_ratio)
    short = cfg.short_fact_ratio
    started, loss_sum = time.monotonic(), 0.0
    model.train()
    step, end = 0, cfg.steps
    while step < end:
        length = rng.randint(cfg.min_len, cfg.original_length)
        rows = [passkey_row(rng, tok, pools, length=length, short=short > 0 and rng.random() < short)
                for _ in range(n_pk)]
        rows += [(w, w, length) for w in (stream.window(rng, length) for _ in range(cfg.batch_size - n_pk))]
        ids = torch.tensor([r[0] for r in rows], dtype=torch.long)
        labels = torch.tensor([r[1] for r in rows], dtype=torch.long)
        for group in opt.param_groups:
            group["lr"] = lr_at(step)
        if cfg.theta_jitter is not None:
            lo, hi = cfg.theta_jitter
            use_theta(math.exp(theta_rng.uniform(math.log(lo), math.log(hi))))
        loss = weighted_loss(model(input_ids=ids).logits, labels, [r[2] for r in rows], cfg.answer_weight)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        loss_sum += float(loss.detach())
        step += 1
        if step % cfg.eval_every == 0 and cooldown_from is None:
            use_theta(cfg.base_theta)
            acc = passkey_accuracy(model, length=cfg.original_length, samples=50, seed=CHECK_SEED + step)
            log(f"step {step}/{end} loss {loss_sum / cfg.eval_every:.3f} passkey@{cfg.original_length} "
                f"{acc:.2f} ({time.monotonic() - started:.0f}s)")
            loss_sum = 0.0
            if cfg.stop_accuracy is not None and acc >= cfg.stop_accuracy:
                cooldown_from, end = step, min(cfg.steps, step + cfg.cooldown_steps)
                log(f"passkey solved at step {step}: {cfg.cooldown_steps} cool-down steps, then stop")
    use_theta(cfg.base_theta)
    metrics: dict[str, float | int] = {
        "passkeyAccuracy": passkey_accuracy(model, length=cfg.original_length, samples=cfg.check_samples,
                                            seed=CHECK_SEED),
        "heldOutPerplexity": text_perplexity(model, held),
        "steps": step, "solvedAtStep": cooldown_from or -1, "wallSeconds": round(time.monotonic() - started, 1),
        "parameters": sum(p.numel() for p in model.parameters()),
    }
    save_tiny(model, out_dir)
    Path(out_dir, "training.json").write_text(json.dumps({"config": asdict(cfg), "metrics": metrics}, indent=2))
    Path(out_dir, "TRAINING.md").write_text(training_note(cfg, metrics))
    return metrics


def command_of(cfg: BaseTrainingConfig) -> str:
    """The `ctxext init-tiny` command line that trains this config."""
    stop = f" --stop-accuracy {cfg.stop_accuracy:g}" if cfg.stop_accuracy is not None else ""
    init = f" --init-from {cfg.init_from}" if cfg.init_from else ""
    short = f" --short-fact-ratio {cfg.short_fact_ratio:g}" if cfg.short_fact_ratio else ""
    jitter = f" --theta-jitter {cfg.theta_jitter[0]:g},{cfg.theta_jitter[1]:g}" if cfg.theta_jitter else ""
    return (f"OMP_NUM_THREADS=1 ctxext init-tiny DIR{init} --seed {cfg.seed} --steps {cfg.steps} "
            f"--batch-size {cfg.batch_size} --lr {cfg.learning_rate:g} --passkey-ratio {cfg.passkey_ratio:g} "
            f"--answer-weight {cfg.answer_weight:g}{short}{jitter}{stop}")


def training_note(cfg: BaseTrainingConfig, metrics: dict[str, float | int]) -> str:
    """TRAINING.md of a trained base model: how to reproduce it and what it scored."""
    return "\n".join([
        "# The tiny base model", "",
        f"A {metrics['parameters']:,}-parameter Llama-shaped model (4 layers, hidden 128, 4 heads, MLP 512, byte "
        f"vocabulary of 260, tied embeddings, RoPE theta 10000, max_position_embeddings {cfg.original_length}), "
        "trained from scratch on one CPU thread by:", "",
        "```sh", command_of(cfg), "```", "",
        f"Seed {cfg.seed}. Data: the shipped corpus (builtin://tiny-corpus, the Jargon File, public domain; every "
        "20th document held out) and passkey samples in the evaluation's prompt format "
        f"({cfg.passkey_ratio:.0%} of each batch, the key at a uniform random depth, half on the classic filler "
        f"and half on corpus sentences); each step's length uniform in [{cfg.min_len}, {cfg.original_length}]. "
        + (f"RoPE theta drawn per step log-uniformly from [{cfg.theta_jitter[0]:g}, {cfg.theta_jitter[1]:g}] "
           f"(saved with theta {cfg.base_theta:g}). " if cfg.theta_jitter else "")
        + f"AdamW (0.9, 0.95), weight decay 0.01, {cfg.warmup_steps} warm-up steps, cosine decay to 10% over "
        f"{cfg.steps} steps"
        + (f", stopping {cfg.cooldown_steps} cool-down steps after a progress check (50 samples) reached "
           f"{cfg.stop_accuracy:g}." if cfg.stop_accuracy is not None else "."), "",
        "| what | value |", "|---|---:|",
        f"| steps trained | {metrics['steps']} |",
        *([f"| passkey solved at step (check >= {cfg.stop_accuracy:g}) | {metrics['solvedAtStep']} |"]
          if cfg.stop_accuracy is not None else []),
        f"| passkey accuracy at {cfg.original_length} ({cfg.check_samples} samples, seed {CHECK_SEED}) | "
        f"{metrics['passkeyAccuracy']:.3f} |",
        f"| held-out perplexity at {cfg.original_length} (bytes) | {metrics['heldOutPerplexity']:.3f} |",
        f"| wall time (this machine, 1 thread) | {metrics['wallSeconds']:.0f} s |", "",
        "Rerun the command above to reproduce it (same seed, same data order, CPU fp32).", ""])
