"""GPU check of issue #25 item 4: the planner's training memory estimate against the real trainer's peak.

Runs the real trainer stage (``gpu_throughput.trainer_stage``: torchrun + ``-m ctxext_trainer``, the
random ~1B Llama, bf16) at ``--seq-len`` once per ``--variants`` (``default``: one rank's ZeRO 1 with
the planner's selective checkpointing for this card; ``zero3``: ZeRO 3 on one rank, every layer
recomputed, so DeepSpeed's ZeRO-3 terms of :func:`ctxext.memory.deepspeed_terms` — reduce bucket,
live parameters, the head's full gradient — are in play), and with 2+ GPUs once as a ring over all
of them (``gpu_sp_check.run_stage``, ring n,
ZeRO 1, the ring's fp32 buffers of :func:`ctxext.memory.ring_attention_bytes`) at ``seq-len × n``.
Each row: the peak ``torch.cuda.max_memory_allocated`` of the steps (train_log.jsonl), the estimate
:func:`ctxext.memory.estimate_memory` for the same stage, without and with its runtime overhead
(which the allocator does not see), and their ratio. The check holds when every estimate without
overhead covers its peak: the planner refuses plans by that estimate, so an undercount is a
promise broken on real cards. ``--smoke-cpu`` runs the tiny shape on CPU (fp32) to check the
plumbing: the trainer logs CUDA peaks only, so there it holds when every stage runs.

    python bench/gpu_check_memory.py --json-out /tmp/out/gpu_check_memory.json   # ~3 min on one H100
    python bench/gpu_check_memory.py --smoke-cpu                                  # plumbing, ~2 min
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import _harness as h
import gpu_sp_check as sp
import gpu_throughput as g
from gpu_variants import architecture, parse_variants


def estimate(shape: dict[str, Any], *, seq_len: int, world: int, zero: int, ring: int, layers: int | None,
             on_gpu: bool) -> dict[str, float]:
    """The planner's estimate of one rank for the stage, GiB: total, and total less runtime overhead.

    >>> e = estimate(g.ONE_B_SHAPE, seq_len=32768, world=1, zero=3, ring=1, layers=None, on_gpu=True)
    >>> e["buffers"] > 1.9, e["modelled"] == round(e["total"] - 1.5, 3)  # ZeRO-3 bucket + lm_head gather
    (True, True)
    """
    from ctxext.memory import estimate_memory

    est = estimate_memory(architecture(shape), seq_len=seq_len, batch_size=1, world_size=world, sequence_parallel=world,
                          zero_stage=zero, activation_checkpointing=True, on_gpu=on_gpu, checkpointed_layers=layers,
                          ring_degree=ring)
    return {"total": round(est.total, 3), "modelled": round(est.total - est.overhead, 3),
            "buffers": round(est.buffers + est.attention, 3)}


def row(name: str, result: dict[str, Any], est: dict[str, float]) -> dict[str, Any]:
    """One stage's figures: the measured peak, the estimate, and whether the estimate covers the peak.

    >>> row("zero3", {"peak_gib": 10.0}, {"total": 12.0, "modelled": 10.5, "buffers": 2.0})["covered"]
    True
    >>> row("x", {"error": "OOM"}, {"total": 1.0, "modelled": 0.5, "buffers": 0.0})["covered"] is None
    True
    """
    peak = result.get("peak_gib")
    return {"run": name, "peak_gib": peak, "estimate": est, "ratio": h.ratio(est["modelled"], peak),
            "covered": None if peak is None else est["modelled"] >= peak,
            "error": result.get("error"), "checkpointed_layers": result.get("checkpointed_layers"),
            "step_seconds": result.get("step_seconds")}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seq-len", type=int, help="tokens per rank (default 32768; 256 with --smoke-cpu)")
    parser.add_argument("--variants", default="default,zero3")
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--timeout", type=float, default=150.0, help="seconds per stage")
    parser.add_argument("--budget-seconds", type=float, default=400.0, help="no stage starts after this")
    parser.add_argument("--json-out")
    parser.add_argument("--log-dir")
    parser.add_argument("--smoke-cpu", action="store_true")
    args = parser.parse_args()
    import torch

    device = "cpu" if args.smoke_cpu else "cuda"
    json_out = Path(args.json_out) if args.json_out else None
    if (refused := h.refuse_without_cuda("gpu_check_memory", args.smoke_cpu, json_out)) is not None:
        return refused
    shape = g.TINY_SHAPE if args.smoke_cpu else g.ONE_B_SHAPE
    seq_len = args.seq_len or (256 if args.smoke_cpu else 32768)
    gpus = torch.cuda.device_count() if device == "cuda" else 1
    card = torch.cuda.get_device_properties(0).total_memory / g.GIB if device == "cuda" else None
    work = Path(tempfile.mkdtemp(prefix="ctxext-memory-check-", dir=g._scratch()))
    logs = Path(args.log_dir) if args.log_dir else work
    logs.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    rows: list[dict[str, Any]] = []
    try:
        model_dir = g.make_model(shape, work / "model", device)
        for variant in parse_variants(args.variants):
            if time.monotonic() - started > args.budget_seconds:
                rows.append({"run": variant.name, "skipped": "budget"})
                continue
            result = g.trainer_stage(model_dir, work, logs, seq_len, args.steps, device, args.timeout,
                                     variant=variant, shape=shape, memory_gib=card)
            zero = 3 if variant.env.get("CTXEXT_SINGLE_RANK_ZERO_STAGE") == "3" else 1  # one rank: ZeRO 1 unless forced
            rows.append(row(variant.name, result, estimate(shape, seq_len=seq_len, world=1, zero=zero, ring=1,
                                                           layers=result.get("checkpointed_layers"),
                                                           on_gpu=device == "cuda")))
        if gpus >= 2 and time.monotonic() - started < args.budget_seconds:
            result = sp.run_stage(model_dir, work, logs, nproc=gpus, ulysses=1, ring=gpus, seq_len=seq_len * gpus,
                                  steps=args.steps, device=device, timeout=args.timeout)
            rows.append(row(f"ring {gpus}", result, estimate(shape, seq_len=seq_len * gpus, world=gpus, zero=1,
                                                             ring=gpus, layers=None, on_gpu=True)))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    name = torch.cuda.get_device_name(0) if device == "cuda" else "cpu"
    table = [[r["run"], r.get("peak_gib"), *(r.get("estimate", {}).get(k) for k in ("modelled", "total", "buffers")),
              r.get("ratio"), r.get("covered", r.get("skipped"))] for r in rows]
    h.print_table(["run", "peak GiB", "estimate w/o overhead", "estimate", "of which buffers", "est/peak", "covered"],
                  table, title=f"gpu_check_memory: {name}, {seq_len} tokens per rank")
    for r in rows:
        if r.get("error"):
            print(f"{r['run']}: {r['error']}", file=sys.stderr)
    h.emit_json("gpu_check_memory", {"device": name, "card_gib": card, "seq_len": seq_len, "rows": rows,
                                     "wall_seconds": round(time.monotonic() - started, 1)}, path=json_out)
    if device == "cpu":
        return 0 if rows and not any(r.get("error") or r.get("skipped") for r in rows) else 1
    return 0 if rows and all(r.get("covered") for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
