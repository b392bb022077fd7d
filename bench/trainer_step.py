"""Step time of the ctxext trainer next to a plain transformers + torch AdamW loop, on CPU.

    OMP_NUM_THREADS=1 .venv/bin/python bench/trainer_step.py [--lengths 1024 4096] [--steps 6]

Both sides train the same freshly initialised small Llama (byte vocabulary) on sequences of the
same length, one process, fp32, SDPA attention, no activation checkpointing (``--checkpointing``
turns it on for both). *ctxext* is the real stage runner (``ctxext_trainer.stage.run_stage``:
DeepSpeed engine at ZeRO ``--zero``, chunked loss, gradient-health statistics, loss all-reduce,
metrics); its per-step wall times come from the stage's ``train_log.jsonl``. *plain* is
``model(input_ids, labels=...).loss.backward(); clip_grad_norm_; AdamW.step()``. Each side's first
``--warmup`` steps are dropped; the table shows medians of the rest (≥ 5) and ctxext / plain, in
wall time and in process CPU time (``time.process_time``; with one thread it is the step's compute
and stays meaningful on a machine shared with other jobs, where wall time is not).
Prints a table, then one JSON line.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch
from transformers import LlamaConfig, LlamaForCausalLM

SHAPE = dict(vocab_size=260, hidden_size=256, intermediate_size=688, num_hidden_layers=4, num_attention_heads=8,
             num_key_value_heads=4, tie_word_embeddings=False, bos_token_id=1, eos_token_id=2, pad_token_id=0)
THETA = 500000.0


def make_model_dir(root: Path, max_len: int) -> Path:
    from ctxext_trainer.tokenizer import ByteTokenizer

    torch.manual_seed(0)
    config = LlamaConfig(**SHAPE, max_position_embeddings=max_len,
                         rope_parameters={"rope_type": "default", "rope_theta": THETA})
    model_dir = root / "model"
    LlamaForCausalLM(config).save_pretrained(str(model_dir), safe_serialization=True)
    ByteTokenizer().save(model_dir)
    corpus = root / "corpus"
    corpus.mkdir()
    for i in range(64):
        (corpus / f"d{i}.txt").write_text(f"Document {i}: " + "context windows grow with theta. " * (40 + 7 * i))
    return model_dir


def ctxext_step_times(model_dir: Path, out: Path, seq_len: int, steps: int, zero: int,
                      checkpointing: bool) -> tuple[list[float], list[float]]:
    from ctxext.stage_config import StageConfig
    from ctxext_trainer.stage import run_stage

    config = StageConfig(job="bench", job_name="bench", stage=1, total_stages=1, model_path=str(model_dir),
                         output_dir=str(out), seq_len=seq_len, rope_theta=THETA, original_context_length=256,
                         steps=steps, learning_rate=1e-4, lr_schedule="constant", device="cpu", zero_stage=zero,
                         activation_checkpointing=checkpointing, metrics_port=0, checkpoint_interval=10**6,
                         data={"source": f"file://{model_dir.parent / 'corpus'}", "validationFraction": 0.0},
                         evaluation={"enabled": False})
    if run_stage(config) != 0:
        raise SystemExit(f"ctxext stage run failed; see {out}/result.json")
    log = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
    return [float(r["seconds"]) for r in log], [float(r["cpuSeconds"]) for r in log]


def plain_step_times(model_dir: Path, seq_len: int, steps: int,
                     checkpointing: bool) -> tuple[list[float], list[float]]:
    model = LlamaForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32, attn_implementation="sdpa")
    model.config.rope_parameters = {"rope_type": "default", "rope_theta": THETA}
    model.train()
    if checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, betas=(0.9, 0.95), weight_decay=0.0)
    gen = torch.Generator().manual_seed(0)
    times, cpu = [], []
    for _ in range(steps):
        ids = torch.randint(4, 260, (1, seq_len), generator=gen)
        t0, c0 = time.perf_counter(), time.process_time()
        loss = model(input_ids=ids, labels=ids, use_cache=False).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        times.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
    return times, cpu


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lengths", type=int, nargs="+", default=[1024, 4096])
    parser.add_argument("--steps", type=int, default=6, help="measured steps per side (>= 5)")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--zero", type=int, default=0, choices=[0, 1, 2, 3])
    parser.add_argument("--checkpointing", action="store_true", help="activation checkpointing on both sides")
    args = parser.parse_args(argv)
    if args.steps < 5:
        parser.error("--steps must be at least 5")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = make_model_dir(Path(tmp), max(args.lengths))
        for n in args.lengths:
            total = args.steps + args.warmup
            ours, ours_cpu = ctxext_step_times(model_dir, Path(tmp) / f"run-{n}", n, total, args.zero,
                                               args.checkpointing)
            plain, plain_cpu = plain_step_times(model_dir, n, total, args.checkpointing)
            w = args.warmup
            o, p = statistics.median(ours[w:]), statistics.median(plain[w:])
            oc, pc = statistics.median(ours_cpu[w:]), statistics.median(plain_cpu[w:])
            rows.append({"seqLen": n, "ctxextSeconds": round(o, 4), "plainSeconds": round(p, 4),
                         "ratio": round(o / p, 3), "ctxextCpuSeconds": round(oc, 4), "plainCpuSeconds": round(pc, 4),
                         "cpuRatio": round(oc / pc, 3), "steps": args.steps})
    params = sum(p.numel() for p in LlamaForCausalLM(LlamaConfig(**SHAPE)).parameters())
    print(f"\nctxext trainer step vs plain transformers + AdamW (CPU, 1 process, OMP_NUM_THREADS="
          f"{os.environ['OMP_NUM_THREADS']}, {params / 1e6:.1f}M params, ZeRO {args.zero}, "
          f"checkpointing {'on' if args.checkpointing else 'off'}, median of {args.steps} steps)")
    print(f"{'seqLen':>8} {'ctxext s/step':>14} {'plain s/step':>13} {'ratio':>7} {'ctxext cpu s':>13} "
          f"{'plain cpu s':>12} {'cpu ratio':>10}")
    for r in rows:
        print(f"{r['seqLen']:>8} {r['ctxextSeconds']:>14.4f} {r['plainSeconds']:>13.4f} {r['ratio']:>7.3f} "
              f"{r['ctxextCpuSeconds']:>13.4f} {r['plainCpuSeconds']:>12.4f} {r['cpuRatio']:>10.3f}")
    print(json.dumps({"bench": "trainer_step", "device": "cpu", "params": params, "zeroStage": args.zero,
                      "activationCheckpointing": args.checkpointing, "results": rows}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
