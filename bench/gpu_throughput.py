"""GPU throughput: tokens/s and MFU of one trainer stage vs a plain transformers loop, ~1B Llama, 16K-64K tokens.

Needs one CUDA GPU (H100 or H200: about 4 minutes). Without CUDA it stops at once with exit code 2
and says so (``--smoke-cpu`` instead runs the same plumbing on a tiny model on CPU, no MFU).

The model: random weights in the Llama-3.2-1B shape (16 layers, hidden 2048, MLP 8192, 32 heads,
8 KV heads, vocabulary 128,256, tied embeddings: 1.24B parameters), saved once as bf16
safetensors with the byte tokenizer (token ids < 256; only the shapes matter for speed).

* **trainer stage**: the real entry point, ``torchrun --standalone --nproc-per-node 1 -m
  ctxext_trainer --stage-config FILE``, one process per length: DeepSpeed ZeRO-3, bf16 with fp32
  master weights, torch AdamW, activation checkpointing, flash_attention_2 when ``flash_attn`` is
  installed else sdpa, chunked LM head + CE, health guard and metrics; evaluation off. Step times
  come from its ``train_log.jsonl``. The stage also saves its final checkpoint and exports the
  model (not timed; the output directory is deleted after each length).
* **plain loop**: the same model in this process with transformers only: bf16 weights,
  ``model(input_ids, labels=input_ids).loss``, ``loss.backward()``, fused torch AdamW,
  ``gradient_checkpointing_enable()``, the same attention implementation. An out-of-memory step
  is reported as OOM (HF materialises the full fp32 logits: 64K × 128K × 4 B = 32 GiB).

Per length, ``--warmup`` steps are dropped and the median of the remaining ``--steps`` is used.
MFU = tokens/s × model FLOPs per token / the card's dense bf16 peak, with FLOPs per token
= 6·N + 6·L·h·T: N the parameters in matrix multiplies (all but the input embedding, plus the
LM head), L layers, h = heads × head_dim, T the sequence length (causal attention counts half
of the T² scores); activation-checkpointing recomputation is not counted (that would be HFU).

    .venv/bin/python bench/gpu_throughput.py                         # 16K, 32K, 64K
    .venv/bin/python bench/gpu_throughput.py --lengths 16384 --steps 3
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import _harness as h

#: Dense (no sparsity) bf16 tensor-core peak, TFLOPS, from NVIDIA's data sheets; matched in order.
PEAK_BF16_TFLOPS: tuple[tuple[str, float], ...] = (
    ("H200", 989.0),
    ("H100 PCIe", 756.0),
    ("H100", 989.0),  # H100 SXM5 ("NVIDIA H100 80GB HBM3")
)
ONE_B_SHAPE: dict[str, Any] = {"hidden_size": 2048, "intermediate_size": 8192, "num_hidden_layers": 16,
                               "num_attention_heads": 32, "num_key_value_heads": 8, "vocab_size": 128256,
                               "tie_word_embeddings": True}
TINY_SHAPE: dict[str, Any] = {"hidden_size": 128, "intermediate_size": 512, "num_hidden_layers": 4,
                              "num_attention_heads": 4, "num_key_value_heads": 4, "vocab_size": 260,
                              "tie_word_embeddings": True}


def peak_tflops(device_name: str) -> float | None:
    """Dense bf16 peak of a card by its CUDA name; None when unknown (pass --peak-tflops).

    >>> peak_tflops("NVIDIA H100 80GB HBM3"), peak_tflops("NVIDIA H200"), peak_tflops("NVIDIA A10G")
    (989.0, 989.0, None)
    """
    for key, value in PEAK_BF16_TFLOPS:
        if key.lower() in device_name.lower():
            return value
    return None


def param_counts(shape: dict[str, Any]) -> tuple[int, int]:
    """(all parameters, parameters in matrix multiplies) of a Llama shape.

    The matmul count leaves out the input embedding (a lookup) and adds the LM head, which is a
    matmul whether or not its weight is tied to the embedding.

    >>> param_counts(ONE_B_SHAPE)
    (1235814400, 1235814400)
    """
    h, i, layers, v = (shape["hidden_size"], shape["intermediate_size"], shape["num_hidden_layers"],
                       shape["vocab_size"])
    d = h // shape["num_attention_heads"]
    kv = shape["num_key_value_heads"] * d
    per_layer = h * h + 2 * h * kv + h * h + 3 * h * i + 2 * h
    embed = v * h
    total = layers * per_layer + h + embed * (1 if shape["tie_word_embeddings"] else 2)
    matmul = layers * per_layer + h + v * h
    return total, matmul


def flops_per_token(shape: dict[str, Any], seq_len: int) -> float:
    """Training FLOPs per token (forward + backward, no recomputation): 6·N_matmul + 6·L·h·T (causal).

    >>> round(flops_per_token(ONE_B_SHAPE, 65536) / 1e9, 2)
    20.3
    """
    _, matmul = param_counts(shape)
    return 6.0 * matmul + 6.0 * shape["num_hidden_layers"] * shape["hidden_size"] * seq_len


def make_model(shape: dict[str, Any], directory: Path, device: str) -> Path:
    """Random Llama of ``shape`` saved (bf16 on CUDA, fp32 on CPU) with the byte tokenizer."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from ctxext_trainer.tokenizer import ByteTokenizer

    tok = ByteTokenizer()
    config = LlamaConfig(**shape, max_position_embeddings=8192,
                         rope_parameters={"rope_type": "default", "rope_theta": 500000.0},
                         bos_token_id=tok.bos_id, eos_token_id=tok.eos_id, pad_token_id=tok.pad_id)
    torch.manual_seed(0)
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    with torch.device(device):
        model: Any = LlamaForCausalLM(config)
    model = model.to(dtype)
    model.save_pretrained(str(directory), safe_serialization=True)
    tok.save(directory)
    del model
    if device == "cuda":
        torch.cuda.empty_cache()
    return directory


def trainer_stage(model_dir: Path, workdir: Path, seq_len: int, steps: int, device: str,
                  timeout: float) -> dict[str, Any]:
    """One stage through ``torchrun -m ctxext_trainer``; step seconds from its train_log.jsonl."""
    from ctxext.api.spec import EvaluationSpec
    from ctxext.stage_config import StageConfig

    out = workdir / f"stage-{seq_len}"
    config = StageConfig(job="bench", job_name="bench-s1-a1", stage=1, total_stages=1, model_path=str(model_dir),
                         output_dir=str(out), seq_len=seq_len, rope_theta=8.0e6, original_context_length=8192,
                         steps=steps, learning_rate=1e-5, warmup_steps=0, lr_schedule="constant",
                         batch_size=1, gradient_accumulation=1, sequence_parallel=1, zero_stage=3,
                         activation_checkpointing=True, device=device, evaluation=EvaluationSpec(enabled=False),
                         checkpoint_interval=10**6, keep_checkpoints=1, metrics_port=0)
    config_file = workdir / f"stage-{seq_len}.json"
    config_file.write_text(config.dumps())
    torchrun = str(Path(sys.executable).with_name("torchrun"))
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1"), "HF_HUB_OFFLINE": "1"}
    t0 = time.monotonic()
    proc = subprocess.run([torchrun, "--standalone", "--nproc-per-node=1", "-m", "ctxext_trainer",
                           "--stage-config", str(config_file)], env=env, capture_output=True, text=True,
                          timeout=timeout, check=False)
    wall = time.monotonic() - t0
    log = out / "train_log.jsonl"
    records = [json.loads(line) for line in log.read_text().splitlines()] if log.is_file() else []
    result: dict[str, Any] = {"wall_seconds": wall, "exit_code": proc.returncode,
                              "step_seconds": [r["seconds"] for r in records]}
    if proc.returncode != 0 or not records:
        result["error"] = "\n".join((proc.stderr or proc.stdout).splitlines()[-12:])
    shutil.rmtree(out, ignore_errors=True)  # the final ZeRO-3 checkpoint of a 1B model is ~17 GB
    return result


def plain_loop(model_dir: Path, lengths: list[int], steps: int, device: str) -> dict[int, dict[str, Any]]:
    """The same model with transformers + torch AdamW only; {length: {step_seconds, peak_gib | error}}."""
    import torch
    from transformers import AutoModelForCausalLM

    from ctxext_trainer.model_loading import attention_implementation

    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    model: Any = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=dtype,
                                                      attn_implementation=attention_implementation(device))
    model = model.to(device)
    model.config.use_cache = False
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5, betas=(0.9, 0.95), weight_decay=0.0,
                                  fused=device == "cuda")

    def sync() -> None:
        if device == "cuda":
            torch.cuda.synchronize()

    out: dict[int, dict[str, Any]] = {}
    for seq_len in lengths:
        if device == "cuda":
            torch.cuda.reset_peak_memory_stats()
        seconds: list[float] = []
        try:
            for _ in range(steps):
                ids = torch.randint(0, 256, (1, seq_len), device=device)
                sync()
                t0 = time.perf_counter()
                loss = model(input_ids=ids, labels=ids).loss
                loss.backward()
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
                sync()
                seconds.append(time.perf_counter() - t0)
            out[seq_len] = {"step_seconds": seconds}
        except torch.cuda.OutOfMemoryError as exc:
            out[seq_len] = {"step_seconds": seconds, "error": f"OOM: {str(exc).splitlines()[0]}"}
            optimizer.zero_grad(set_to_none=True)
            torch.cuda.empty_cache()
        if device == "cuda":
            out[seq_len]["peak_gib"] = torch.cuda.max_memory_allocated() / 1024**3
    del model, optimizer
    if device == "cuda":
        torch.cuda.empty_cache()
    return out


def _scratch() -> str | None:
    """/dev/shm when it has room for the model and one stage's final ZeRO-3 checkpoint (~20 GB for 1B
    parameters), so that writing them costs seconds, not minutes; else the default temp dir."""
    shm = Path("/dev/shm")
    try:
        return str(shm) if shm.is_dir() and shutil.disk_usage(shm).free > 40 * 1024**3 else None
    except OSError:
        return None


def figures(step_seconds: list[float], warmup: int, seq_len: int, shape: dict[str, Any],
            peak: float | None) -> dict[str, Any]:
    """Median step time after warm-up → tokens/s, achieved TFLOPS and MFU (batch 1, one GPU)."""
    timed = step_seconds[warmup:]
    if not timed:
        return {}
    step = statistics.median(timed)
    tps = seq_len / step
    tflops = tps * flops_per_token(shape, seq_len) / 1e12
    return {"step_seconds_median": step, "tokens_per_second": tps, "model_tflops": tflops,
            "mfu": tflops / peak if peak else None, "steps_timed": len(timed)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--lengths", default="16384,32768,65536")
    parser.add_argument("--steps", type=int, default=3, help="timed steps per length (after --warmup)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed first steps per length")
    parser.add_argument("--peak-tflops", type=float, help="dense bf16 peak of the card (default: from its name)")
    parser.add_argument("--workdir", help="where the model and stage outputs go (default: a temp dir in /dev/shm "
                        "if it has 40 GiB free, else in $TMPDIR)")
    parser.add_argument("--timeout", type=float, default=240.0, help="seconds per trainer stage")
    parser.add_argument("--smoke-cpu", action="store_true",
                        help="check the plumbing on CPU: tiny model, no MFU (use --lengths 256)")
    args = parser.parse_args()

    import torch

    device = "cpu" if args.smoke_cpu else "cuda"
    shape = TINY_SHAPE if args.smoke_cpu else ONE_B_SHAPE
    if device == "cuda" and not torch.cuda.is_available():
        message = (f"bench/gpu_throughput.py needs a CUDA GPU, and torch {torch.__version__} sees none "
                   f"(torch.cuda.is_available() is False). Run it on an H100/H200 machine; "
                   "--smoke-cpu checks the plumbing on CPU.")
        print(f"error: {message}", file=sys.stderr)
        h.emit_json("gpu_throughput", {"error": message})
        return 2
    name = torch.cuda.get_device_name(0) if device == "cuda" else "cpu"
    peak = args.peak_tflops or (peak_tflops(name) if device == "cuda" else None)
    if device == "cuda" and peak is None:
        print(f"warning: dense bf16 peak of {name!r} unknown; MFU not computed (pass --peak-tflops)", file=sys.stderr)
    lengths = [int(x) for x in args.lengths.split(",")]
    steps = args.warmup + args.steps
    started = time.monotonic()
    tmp = Path(args.workdir) if args.workdir else Path(tempfile.mkdtemp(prefix="ctxext-bench-gpu-", dir=_scratch()))
    tmp.mkdir(parents=True, exist_ok=True)
    try:
        model_dir = make_model(shape, tmp / "model", device)
        print(f"[{time.monotonic() - started:.0f}s] model saved ({param_counts(shape)[0] / 1e9:.3f}B params)",
              file=sys.stderr, flush=True)
        trainer: dict[int, dict[str, Any]] = {}
        for seq_len in lengths:
            trainer[seq_len] = trainer_stage(model_dir, tmp, seq_len, steps, device, args.timeout)
            print(f"[{time.monotonic() - started:.0f}s] trainer stage {seq_len}: "
                  f"{trainer[seq_len].get('error') or 'ok'}", file=sys.stderr, flush=True)
        plain = plain_loop(model_dir, lengths, steps, device)
        print(f"[{time.monotonic() - started:.0f}s] plain loop done", file=sys.stderr, flush=True)
    finally:
        if not args.workdir:
            shutil.rmtree(tmp, ignore_errors=True)

    rows: list[list[Any]] = []
    cells: list[dict[str, Any]] = []
    for seq_len in lengths:
        t = {**trainer[seq_len], **figures(trainer[seq_len]["step_seconds"], args.warmup, seq_len, shape, peak)}
        p = {**plain[seq_len], **figures(plain[seq_len]["step_seconds"], args.warmup, seq_len, shape, peak)}
        speedup = h.ratio(t.get("tokens_per_second"), p.get("tokens_per_second"))
        for label, r in (("trainer stage", t), ("plain loop", p)):
            rows.append([seq_len, label, r.get("step_seconds_median"), r.get("tokens_per_second"),
                         r.get("model_tflops"), 100 * r["mfu"] if r.get("mfu") is not None else None,
                         r.get("peak_gib"), "error" if r.get("error") else "ok"])
        cells.append({"seq_len": seq_len, "trainer": t, "plain": p, "trainer_over_plain_tokens_per_second": speedup})
    h.print_table(["seqLen", "run", "step s", "tokens/s", "TFLOPS", "MFU %", "peak GiB", ""], rows,
                  title=f"gpu_throughput: {param_counts(shape)[0] / 1e9:.2f}B Llama, {name}, batch 1, "
                        f"peak {peak or '?'} TFLOPS bf16")
    for c in cells:
        for run in ("trainer", "plain"):
            if c[run].get("error"):
                print(f"{c['seq_len']} {run}: {c[run]['error']}", file=sys.stderr)
    h.emit_json("gpu_throughput", {"device": name, "peak_tflops": peak, "shape": shape,
                                   "parameters": param_counts(shape)[0], "warmup": args.warmup,
                                   "wall_seconds": time.monotonic() - started, "cells": cells})
    return 0 if all(not c["trainer"].get("error") and not c["plain"].get("error") for c in cells) else 1


if __name__ == "__main__":
    sys.exit(main())
