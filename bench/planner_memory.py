"""Memory planner accuracy: ``ctxext.memory.estimate_memory`` (CPU mode) vs measured peak RSS, tiny model.

Each ZeRO stage runs as one ``torchrun --standalone --nproc-per-node 2`` of this script in
``--worker`` mode (the planner's CPU layout: 2 processes per node, gloo, batch 1). A worker
imports everything, sets up the process group, and runs a throw-away warm-up cell (128 tokens)
so that lazy imports and one-time allocations are behind it. Then, for each cell (activation
checkpointing × length, lengths ascending), it frees the previous engine (gc + ``malloc_trim``),
resets its peak-RSS mark (``/proc/self/clear_refs`` ← 5: VmHWM restarts at the current RSS), and
builds the stage the way the trainer does — ``load_causal_lm`` (fp32, sdpa),
``CausalLMTrainModule`` (chunked LM head + CE), ``build_engine`` (DeepSpeed with torch AdamW and the
stage's ``deepspeed_config``) — and runs ``--steps`` optimizer steps (forward, backward, step) on
random tokens. Not run: the train loop's guard, gradient statistics, metrics, checkpoints (small
next to states and activations; the tiny model has 1.08M parameters, 4 MiB in fp32).

Per cell, for the rank with the larger figure:

* ``growth`` = peak RSS during build + steps − RSS just before the build. Compare with the
  estimate *without* its fixed runtime overhead (0.25 GiB on CPU): states + activations + logits.
* ``peak`` = absolute peak RSS of the process (Python, torch, DeepSpeed and the warm-up's leftovers
  included). Compare with the estimate's total, which ``ctxext plan`` prints as "est. GiB/rank".

Each ZeRO stage runs twice (``--heap both``): with glibc's defaults (``kept``: freed blocks may stay in the
process's heap, so RSS counts memory no tensor holds any more) and with ``returned``
(``MALLOC_MMAP_THRESHOLD_=16384 MALLOC_TRIM_THRESHOLD_=0``: every block of 16 KiB or more is its own
mapping, handed back to the kernel when freed, so RSS follows the live tensors). The planner models live
memory; the difference between the two is the allocator's retention, which the planner's headroom covers.
ZeRO 3 gathers and releases every parameter of every module on every step, and that churn is what glibc
retains on CPU.

    .venv/bin/python bench/planner_memory.py                        # 256, 1024, 4096 × ZeRO 0-3, ckpt off
    .venv/bin/python bench/planner_memory.py --zero 3 --heap returned
    .venv/bin/python bench/planner_memory.py --checkpointing both --zero 0
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import _harness as h

MIB = 1024 * 1024
GIB = 1024**3
WORLD = 2


def _rss() -> dict[str, int]:
    return h.parse_proc_status(Path("/proc/self/status").read_text())


def _reset_peak() -> bool:
    """Reset VmHWM to the current RSS (Linux ≥ 4.0); False when the kernel refuses."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def _release() -> None:
    """Drop garbage and hand freed heap back to the kernel, so the next cell starts from a low RSS."""
    import contextlib
    import ctypes
    import gc

    gc.collect()
    with contextlib.suppress(OSError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)


def _one_cell(model: str, outdir: str, seq_len: int, zero: int, checkpointing: bool, steps: int,
              rank: int) -> dict[str, Any]:
    """Build the stage as the trainer does, run ``steps`` optimizer steps; RSS figures in bytes."""
    import resource

    import torch

    from ctxext.stage_config import StageConfig
    from ctxext_trainer.engine import build_engine, deepspeed_config
    from ctxext_trainer.loss import CausalLMTrainModule
    from ctxext_trainer.model_loading import load_causal_lm

    config = StageConfig(job="bench", job_name="bench-s1-a1", stage=1, total_stages=1, model_path=model,
                         output_dir=outdir, seq_len=seq_len, rope_theta=40000.0, original_context_length=128,
                         steps=steps, learning_rate=1e-4, zero_stage=zero, activation_checkpointing=checkpointing,
                         device="cpu", batch_size=1, gradient_accumulation=1)
    ds_config = deepspeed_config(config)
    torch.manual_seed(rank)
    ids = torch.randint(0, 256, (1, seq_len))
    batch = {"input_ids": ids, "labels": ids.clone(), "position_ids": torch.arange(seq_len)[None]}
    _release()
    before = _rss()["VmRSS"]
    reset = _reset_peak()
    loaded = load_causal_lm(model, theta=config.rope_theta, seq_len=seq_len, device="cpu",
                            activation_checkpointing=checkpointing, ds_config=ds_config)
    engine = build_engine(CausalLMTrainModule(loaded.model), config, ds_config)
    engine.train()
    after_setup = _rss()["VmRSS"]
    step_seconds = []
    for _ in range(steps):
        t1 = time.perf_counter()
        loss, _, _ = engine(**batch)
        engine.backward(loss)
        engine.step()
        step_seconds.append(time.perf_counter() - t1)
    status = _rss()
    peak = status["VmHWM"] if reset else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    if hasattr(engine, "destroy"):
        engine.destroy()
    del engine, loaded, loss
    return {"seq_len": seq_len, "zero": zero, "checkpointing": "on" if checkpointing else "off", "rank": rank,
            "rss_before": before, "rss_after_setup": after_setup, "rss_end": status["VmRSS"], "peak": peak,
            "peak_reset": reset, "step_seconds": step_seconds}


def worker(args: argparse.Namespace) -> None:
    """One rank, one ZeRO stage, every (checkpointing, length) cell in turn; writes ``args.out``.rank<N>.json.

    A throw-away warm-up cell (128 tokens) first, so that lazy imports and one-time allocations of
    transformers / DeepSpeed / autograd land before the first measured cell, not inside it.
    """
    import torch

    from ctxext_trainer.distributed import close_distributed, init_distributed

    torch.set_num_threads(1)
    topo = init_distributed("cpu", 1)
    try:
        _one_cell(args.model, args.outdir, 128, args.zero, True, 1, topo.rank)
        cells = [_one_cell(args.model, args.outdir, seq_len, args.zero, ckpt == "on", args.steps, topo.rank)
                 for ckpt in args.checkpointing.split(",") for seq_len in args.lengths_list]
        Path(f"{args.out}.rank{topo.rank}.json").write_text(json.dumps(cells))
    finally:
        close_distributed()


def estimate(seq_len: int, zero: int, checkpointing: bool) -> Any:
    from ctxext.memory import estimate_memory

    return estimate_memory(_tiny_arch(), seq_len=seq_len, batch_size=1, world_size=WORLD, sequence_parallel=1,
                           zero_stage=zero, activation_checkpointing=checkpointing, on_gpu=False)


def ds_terms(zero: int) -> dict[str, float]:
    """:func:`ctxext.memory.deepspeed_terms` of the tiny model on CPU at ``zero`` (bytes)."""
    from ctxext.memory import deepspeed_terms

    return deepspeed_terms(_tiny_arch(), zero_stage=zero, on_gpu=False, world_size=WORLD, weight_bytes=4)


def _tiny_arch() -> Any:
    from ctxext.api.spec import ModelArchitecture
    from ctxext_trainer.tiny.model import TINY_SHAPE

    return ModelArchitecture(num_layers=TINY_SHAPE["num_hidden_layers"], hidden_size=TINY_SHAPE["hidden_size"],
                             intermediate_size=TINY_SHAPE["intermediate_size"],
                             num_attention_heads=TINY_SHAPE["num_attention_heads"],
                             num_key_value_heads=TINY_SHAPE["num_key_value_heads"],
                             vocab_size=TINY_SHAPE["vocab_size"],
                             tie_word_embeddings=TINY_SHAPE["tie_word_embeddings"])


#: glibc settings per heap mode (see the module docstring).
HEAP_ENV = {"kept": {}, "returned": {"MALLOC_MMAP_THRESHOLD_": "16384", "MALLOC_TRIM_THRESHOLD_": "0"}}


def run_zero_stage(model: str, workdir: Path, zero: int, lengths: list[int], ckpts: list[str], steps: int,
                   timeout: float, heap: str = "kept") -> list[dict[str, Any]]:
    """One torchrun (WORLD ranks) for one ZeRO stage; one result per (checkpointing, length) cell."""
    out = workdir / f"zero{zero}-{heap}"
    torchrun = str(Path(sys.executable).with_name("torchrun"))
    cmd = [torchrun, "--standalone", f"--nproc-per-node={WORLD}", __file__, "--worker", "--model", model,
           "--outdir", str(workdir), "--out", str(out), "--lengths", ",".join(map(str, lengths)),
           "--zero", str(zero), "--checkpointing", ",".join(ckpts), "--steps", str(steps)]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1",
           **HEAP_ENV[heap]}
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout, check=False)
    files = [Path(f"{out}.rank{r}.json") for r in range(WORLD)]
    if proc.returncode != 0 or not all(f.is_file() for f in files):
        error = f"exit {proc.returncode}: " + "\n".join((proc.stderr or proc.stdout).splitlines()[-8:])
        return [{"seq_len": n, "zero": zero, "checkpointing": c, "error": error, "heap": heap,
                 "estimate_gib": estimate(n, zero, c == "on").as_dict()} for c in ckpts for n in lengths]
    per_rank = [json.loads(f.read_text()) for f in files]
    cells = []
    for ranks in zip(*per_rank, strict=True):
        top = max(ranks, key=lambda r: r["peak"] - r["rss_before"])
        est = estimate(top["seq_len"], zero, top["checkpointing"] == "on")
        growth = (top["peak"] - top["rss_before"]) / GIB
        cells.append({"seq_len": top["seq_len"], "zero": zero, "checkpointing": top["checkpointing"], "heap": heap,
                      "estimate_gib": est.as_dict(), "measured_growth_gib": growth,
                      "measured_peak_gib": top["peak"] / GIB, "rss_before_gib": top["rss_before"] / GIB,
                      "setup_growth_gib": (top["rss_after_setup"] - top["rss_before"]) / GIB,
                      "peak_reset": all(r["peak_reset"] for r in ranks),
                      "step_seconds": min(min(r["step_seconds"]) for r in ranks),
                      "ratio_without_overhead": h.ratio(est.total - est.overhead, growth),
                      "ratio_total_vs_peak": h.ratio(est.total, top["peak"] / GIB)})
    return cells


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--lengths", default="256,1024,4096")
    parser.add_argument("--zero", default="0,1,2,3")
    parser.add_argument("--checkpointing", default="off", help="off, on or both (activation checkpointing)")
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--heap", default="both", choices=["kept", "returned", "both"],
                        help="glibc keeps freed heap (kept), hands it back at once (returned), or both side by side")
    parser.add_argument("--timeout", type=float, default=300.0, help="seconds per ZeRO stage (one torchrun)")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--model", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    parser.add_argument("--outdir", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        args.zero = int(args.zero)
        args.lengths_list = [int(x) for x in args.lengths.split(",")]
        worker(args)
        return 0

    os.environ.setdefault("OMP_NUM_THREADS", "1")
    from ctxext_trainer.tiny.model import new_tiny_model, save_tiny

    lengths = [int(x) for x in args.lengths.split(",")]
    zeros = [int(x) for x in args.zero.split(",")]
    ckpts = ["off", "on"] if args.checkpointing == "both" else [args.checkpointing]
    heaps = ["kept", "returned"] if args.heap == "both" else [args.heap]
    started = time.monotonic()
    cells = []
    with tempfile.TemporaryDirectory(prefix="ctxext-bench-memory-") as tmp:
        workdir = Path(tmp)
        model = str(save_tiny(new_tiny_model(0), workdir / "tiny"))
        for heap in heaps:
            for zero in zeros:
                done = run_zero_stage(model, workdir, zero, lengths, ckpts, args.steps, args.timeout, heap)
                print(f"[{time.strftime('%H:%M:%S')}] ZeRO {zero}, heap {heap}: {done[0].get('error') or 'ok'}",
                      file=sys.stderr, flush=True)
                cells.extend(done)
    rows = [[c["heap"], c["seq_len"], c["zero"], c["checkpointing"],
             c["estimate_gib"]["total"] - c["estimate_gib"]["overhead"], c.get("measured_growth_gib"),
             c.get("ratio_without_overhead"), c["estimate_gib"]["total"], c.get("measured_peak_gib"),
             c.get("ratio_total_vs_peak"), c.get("step_seconds")] for c in cells]
    h.print_table(["heap", "seqLen", "ZeRO", "ckpt", "est GiB (no ovh)", "meas growth GiB", "ratio", "est total GiB",
                   "meas peak GiB", "ratio", "step s"], rows,
                  title=f"planner_memory: tiny model, CPU fp32, {WORLD} ranks (gloo), batch 1; ratio = estimate / "
                        "measured")
    pivot = []
    for heap in heaps:
        for ckpt in ckpts:
            for n in lengths:
                row: list[Any] = [heap, n, ckpt]
                for zero in zeros:
                    cell = next(c for c in cells if (c["heap"], c["seq_len"], c["zero"], c["checkpointing"]) ==
                                (heap, n, zero, ckpt))
                    growth, peak = cell.get("ratio_without_overhead") or 0, cell.get("ratio_total_vs_peak") or 0
                    row.append(f"{growth:.2f} / {peak:.2f}")
                pivot.append(row)
    h.print_table(["heap", "seqLen", "ckpt", *(f"ZeRO {z} growth / peak" for z in zeros)], pivot,
                  title="estimate / measured per ZeRO stage, side by side (>= 1: the estimate covers the measurement)")
    for zero in zeros:
        for heap in heaps:
            mine = [c for c in cells if c["zero"] == zero and c["heap"] == heap and "error" not in c]
            if mine:
                growth = [c["ratio_without_overhead"] for c in mine]
                print(f"ZeRO {zero}, heap {heap}: growth ratio {min(growth):.2f}–{max(growth):.2f}", flush=True)
        print(f"ZeRO {zero}: DeepSpeed terms (MiB) "
              + ", ".join(f"{k} {v / MIB:.2f}" for k, v in ds_terms(zero).items()), flush=True)
    h.emit_json("planner_memory", {"world_size": WORLD, "steps": args.steps, "model": "tiny (ctxext_trainer.tiny)",
                                   "measured_with": "trainer code path: load_causal_lm + CausalLMTrainModule + "
                                                    "build_engine (DeepSpeed, torch AdamW); no guard/metrics",
                                   "wall_seconds": time.monotonic() - started, "cells": cells})
    return 0 if all("error" not in c for c in cells) else 1


if __name__ == "__main__":
    sys.exit(main())
