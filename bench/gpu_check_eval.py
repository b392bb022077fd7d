"""GPU check of issue #25 items 1 and 4: evaluation memory per rank against the planner's estimate,
sharded evaluation against unsharded, and the ring's block kernel on CUDA.

On the random ~1B Llama of ``gpu_throughput.py`` (bf16 on CUDA; ``--smoke-cpu``: its tiny shape in
fp32 on CPU with gloo), one process per rank (``--nproc``, default every visible GPU):

* **ring kernel** (item 4): which block kernel the zigzag ring picks on this device and dtype
  (``ring_kernels.kernel_for``; on CUDA a failed probe is an error, reported here verbatim).
* **unsharded** (rank 0, lengths up to ``--unsharded-max``): the peak above the weights of
  ``token_losses`` (no KV cache) and of ``greedy_generate`` (chunked prefill + 4 decoded tokens), next to
  ``ctxext.eval_memory.estimate_eval_memory(sequence_parallel=1)``; and the pre-#25 one-shot prefill
  with ``use_cache=True`` ("before"), which an out-of-memory error reports as OOM.
* **sharded** (every degree k = 2, 4, … ≤ nproc, ranks 0..k−1): ``sharded_token_losses`` of one sequence
  over k ranks — the largest per-rank peak above the weights next to the estimate for
  ``sequence_parallel=k``, the seconds, and the largest |loss − unsharded loss| where both ran;
  ``sharded_greedy`` vs ``greedy_generate`` tokens at the shortest length.

Peaks: ``torch.cuda.max_memory_allocated`` minus what was allocated before (CUDA); the tensor
high-water mark of ``tests/eval/tensor_peak.py`` (CPU). A table on stderr, one JSON line on stdout
(also ``--json-out``). With one GPU the sharded rows are absent (NCCL needs a GPU per rank); the
2-rank gloo test ``tests/eval/test_sharded.py`` covers the numerics on CPU.

    python bench/gpu_check_eval.py --lengths 16384,65536,262144 --json-out /tmp/out/gpu_check_eval.json
    python bench/gpu_check_eval.py --smoke-cpu          # 2 gloo ranks, tiny shape, 16384 tokens: ~3 min
"""

from __future__ import annotations

import argparse
import contextlib
import json
import shutil
import socket
import sys
import tempfile
import time
import traceback
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import _harness as h
import gpu_throughput as g

NEW_TOKENS = 4


@contextlib.contextmanager
def peak_above_now(device: str) -> Iterator[dict[str, float]]:
    """``{"gib": …}`` set on exit: the high-water mark of what the block allocated on this rank."""
    import torch

    box: dict[str, float] = {}
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        yield box
        torch.cuda.synchronize()
        box["gib"] = (torch.cuda.max_memory_allocated() - base) / g.GIB
    else:
        from tests.eval.tensor_peak import TensorPeak

        with TensorPeak() as peak:
            yield box
        box["gib"] = peak.peak / g.GIB


def measured(device: str, fn: Any) -> dict[str, Any]:
    """{"gib", "seconds", "value"} of ``fn()``, or {"error": "OOM" | text}."""
    import torch

    started = time.monotonic()
    try:
        with peak_above_now(device) as box:
            value = fn()
    except torch.OutOfMemoryError:
        return {"error": "OOM"}
    except Exception as exc:  # reported per cell: one failure must not lose the others
        return {"error": f"{type(exc).__name__}: {exc}", "traceback": traceback.format_exc(limit=4)}
    finally:
        if device == "cuda":
            torch.cuda.empty_cache()
    return {"gib": round(box["gib"], 3), "seconds": round(time.monotonic() - started, 2), "value": value}


def estimate(shape: dict[str, Any], length: int, sp: int, device: str) -> float:
    """The planner's evaluation peak above the weights (activations, KV cache, ring, logits), GiB."""
    from ctxext.api.spec import ModelArchitecture
    from ctxext.eval_memory import estimate_eval_memory

    arch = ModelArchitecture(num_layers=shape["num_hidden_layers"], hidden_size=shape["hidden_size"],
                             intermediate_size=shape["intermediate_size"],
                             num_attention_heads=shape["num_attention_heads"],
                             num_key_value_heads=shape["num_key_value_heads"], vocab_size=shape["vocab_size"],
                             tie_word_embeddings=shape["tie_word_embeddings"])
    e = estimate_eval_memory(arch, length=length, sequence_parallel=sp, original_length=1, on_gpu=device == "cuda")
    return round(e.total - e.weights - e.overhead, 3)


def unsharded_cell(model: Any, ids: list[int], at: Any, device: str, shape: dict[str, Any]) -> dict[str, Any]:
    """Rank 0 alone: losses (no cache), greedy decoding (chunked prefill) and the pre-#25 one-shot prefill."""
    import torch

    from ctxext_trainer.eval.generate import greedy_generate, token_losses

    losses = measured(device, lambda: token_losses(model, torch.tensor([ids]))[0].float().cpu())
    greedy = measured(device, lambda: greedy_generate(model, [ids], max_new_tokens=NEW_TOKENS, pad_id=0)[0])

    def one_shot_prefill() -> None:  # greedy_generate's prefill before #25: the whole prompt, cached
        model(input_ids=torch.tensor([ids], device=at), use_cache=True, logits_to_keep=1)

    before = measured(device, one_shot_prefill)
    before.pop("value", None)
    unsharded = {"losses": losses, "generate": greedy, "tokens": greedy.pop("value", None),
                 "losses_value": losses.pop("value", None), "estimate_gib": estimate(shape, len(ids), 1, device)}
    return {"unsharded": unsharded, "before": before}


def sharded_cell(model: Any, ids: list[int], group: Any, device: str, shape: dict[str, Any],
                 unsharded: dict[str, Any] | None, *, greedy: bool) -> dict[str, Any]:
    """One rank of the group: sharded losses (peak, seconds, difference to rank 0's unsharded losses)
    and, with ``greedy``, the sharded greedy tokens against the unsharded ones."""
    import torch.distributed as dist

    from ctxext_trainer.eval.sharded import sharded_greedy, sharded_token_losses

    k = dist.get_world_size(group)
    cell = measured(device, lambda: sharded_token_losses(model, ids, group))
    got, whole = cell.pop("value", None), (unsharded or {}).get("losses_value")
    if got is not None and whole is not None:
        cell["max_abs_loss_difference"] = float((got - whole).abs().max())
    ok = [got is not None]
    everyone: list[Any] = [None] * k
    dist.all_gather_object(everyone, ok[0], group=group)
    if greedy and all(everyone):
        tokens = sharded_greedy(model, ids, max_new_tokens=NEW_TOKENS, group=group, pad_id=0)
        if unsharded and unsharded.get("tokens") is not None:
            cell["greedy_equal"] = tokens == unsharded["tokens"]
    cell["estimate_gib"] = estimate(shape, len(ids), k, device)
    return cell


def worker(rank: int, n: int, port: int, model_dir: str, device: str, args: Any, out: str) -> None:
    import os

    import torch
    import torch.distributed as dist

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_grad_enabled(False)  # evaluation runs under no_grad in the trainer (stage._evaluate)
    if device == "cuda":
        torch.cuda.set_device(rank)
    dist.init_process_group("nccl" if device == "cuda" else "gloo", rank=rank, world_size=n)
    from ctxext_trainer.model_loading import load_for_evaluation
    from ctxext_trainer.ring_kernels import kernel_for

    shape = g.TINY_SHAPE if device == "cpu" else g.ONE_B_SHAPE
    model = load_for_evaluation(model_dir, device=device)
    at = torch.device("cuda", rank) if device == "cuda" else torch.device("cpu")
    result: dict[str, Any] = {"rank": rank, "cells": []}
    try:
        result["ring_kernel"] = kernel_for(at, next(model.parameters()).dtype).name
    except Exception as exc:
        result["ring_kernel"] = f"{type(exc).__name__}: {exc}"
    degrees = [k for k in (2, 4, 8, 16, 32, 64) if k <= n]
    groups = {k: dist.new_group(list(range(k))) for k in degrees}  # collective: every rank creates each
    gen = torch.Generator().manual_seed(0)
    deadline = time.monotonic() + args.budget_seconds
    lengths = [int(x) for x in args.lengths.split(",")]
    for length in lengths:
        ids = torch.randint(3, 250, (length,), generator=gen).tolist()
        cell: dict[str, Any] = {"length": length}
        if rank == 0 and length <= args.unsharded_max and time.monotonic() < deadline:
            cell.update(unsharded_cell(model, ids, at, device, shape))
        for k in degrees:
            go = [time.monotonic() < deadline]
            dist.broadcast_object_list(go, src=0)  # every rank takes the same branch, or the ring would hang
            if go[0] and rank < k:
                cell[f"sp{k}"] = sharded_cell(model, ids, groups[k], device, shape, cell.get("unsharded"),
                                              greedy=length == min(lengths))
            dist.barrier()
        cell.get("unsharded", {}).pop("losses_value", None)
        result["cells"].append(cell)
    dist.barrier()
    Path(out, f"rank{rank}.json").write_text(json.dumps(result))
    dist.destroy_process_group()


def merge(ranks: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Rank 0's cells with each sharded degree's per-rank peaks folded to their maximum.

    >>> merge([{"cells": [{"length": 8, "sp2": {"gib": 1.0, "estimate_gib": 2.0}}]},
    ...        {"cells": [{"length": 8, "sp2": {"gib": 1.5, "estimate_gib": 2.0}}]}])[0]["sp2"]
    {'gib': 1.5, 'estimate_gib': 2.0, 'rank_gib': [1.0, 1.5]}
    """
    cells = ranks[0]["cells"]
    for i, cell in enumerate(cells):
        for key in [k for k in cell if k.startswith("sp")]:
            peaks = [r["cells"][i][key].get("gib") for r in ranks if key in r["cells"][i]]
            if all(p is not None for p in peaks):
                cell[key]["gib"] = max(peaks)
                cell[key]["rank_gib"] = peaks
    return cells


def rows(cells: list[dict[str, Any]]) -> list[list[Any]]:
    """The table: one row per length and degree (1 = unsharded on rank 0)."""
    out = []
    for c in cells:
        u, before = c.get("unsharded"), c.get("before", {})
        if u:
            peak = max((u[p].get("gib") or 0) for p in ("losses", "generate"))
            out.append([c["length"], 1, peak, u["estimate_gib"], h.ratio(u["estimate_gib"], peak),
                        before.get("gib", before.get("error")), u["losses"].get("error") or u["generate"].get("error")
                        or ""])
        for key in sorted((k for k in c if k.startswith("sp")), key=lambda k: int(k[2:])):
            s = c[key]
            note = s.get("error") or (f"max |dloss| {s['max_abs_loss_difference']:.2e}"
                                      if "max_abs_loss_difference" in s else "") + (
                f", greedy equal {s['greedy_equal']}" if "greedy_equal" in s else "")
            out.append([c["length"], int(key[2:]), s.get("gib"), s["estimate_gib"],
                        h.ratio(s["estimate_gib"], s.get("gib")), None, note])
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--lengths", help="comma-separated, each >= 16384 (one sequence per call, as the estimate "
                        "assumes); default 16384,65536,262144, or 16384 with --smoke-cpu")
    parser.add_argument("--unsharded-max", type=int, default=262144, help="longest length evaluated on one rank")
    parser.add_argument("--nproc", type=int, help="ranks (default: every visible GPU; 2 with --smoke-cpu)")
    parser.add_argument("--budget-seconds", type=float, default=240.0, help="no new length starts after this")
    parser.add_argument("--json-out")
    parser.add_argument("--log-dir", help="ignored (accepted like the other device checks)")
    parser.add_argument("--smoke-cpu", action="store_true", help="tiny shape, fp32, CPU, gloo")
    args = parser.parse_args()
    import torch
    import torch.multiprocessing as mp

    device = "cpu" if args.smoke_cpu else "cuda"
    args.lengths = args.lengths or ("16384" if args.smoke_cpu else "16384,65536,262144")
    json_out = Path(args.json_out) if args.json_out else None
    if (refused := h.refuse_without_cuda("gpu_check_eval", args.smoke_cpu, json_out)) is not None:
        return refused
    n = args.nproc or (torch.cuda.device_count() if device == "cuda" else 2)
    work = Path(tempfile.mkdtemp(prefix="ctxext-eval-check-", dir=g._scratch()))
    started = time.monotonic()
    try:
        model_dir = g.make_model(g.TINY_SHAPE if args.smoke_cpu else g.ONE_B_SHAPE, work / "model", device)
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        mp.spawn(worker, args=(n, port, str(model_dir), device, args, str(work)), nprocs=n, join=True)
        ranks = [json.loads((work / f"rank{r}.json").read_text()) for r in range(n)]
    finally:
        shutil.rmtree(work, ignore_errors=True)
    cells = merge(ranks)
    name = torch.cuda.get_device_name(0) if device == "cuda" else "cpu"
    h.print_table(["length", "ranks", "peak GiB/rank", "estimate", "est/peak", "before (one-shot cache)", "notes"],
                  rows(cells), title=f"gpu_check_eval: {name}, {n} rank(s), ring kernel {ranks[0]['ring_kernel']} "
                  "(peaks above the weights)")
    errors = [c for cell in cells for k, c in cell.items() if isinstance(c, dict) and c.get("error")
              and c.get("error") != "OOM"]
    h.emit_json("gpu_check_eval", {"device": name, "ranks": n, "ring_kernel": ranks[0]["ring_kernel"],
                                   "cells": cells, "wall_seconds": round(time.monotonic() - started, 1)},
                path=json_out)
    return 1 if errors or ranks[0]["ring_kernel"] not in ("aten", "math") else 0


if __name__ == "__main__":
    sys.exit(main())
