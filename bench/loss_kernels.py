"""LM head + cross-entropy kernels side by side: plain, checkpointed chunks, fused (CPU or GPU).

One forward + backward of Σ CE(hidden · Wᵀ, labels) for each kernel the trainer can use:

* **plain**: ``F.cross_entropy(head(hidden))`` — the whole fp32 logits tensor, kept for backward;
* **chunked**: :func:`ctxext_trainer.loss.chunked_ce_sum` — 4K-token chunks under activation
  checkpointing (the head matmul runs three times per chunk; what ZeRO-3 stages use);
* **fused**: :func:`ctxext_trainer.fused_ce.fused_ce_sum` — each chunk's gradients made in the
  forward pass (the head matmul runs twice per chunk plus one for the weight gradient: like plain).

Reports the median wall time of ``--repeats`` runs after one warm-up, the time relative to plain
and, on CUDA, the peak allocated memory; checks that every kernel's loss and gradients equal the
plain ones (relative 1e-4 in fp32). Tests never time anything; this does.

    OMP_NUM_THREADS=2 .venv/bin/python bench/loss_kernels.py --tokens 8192 --vocab 16384 --hidden 512
    python bench/loss_kernels.py --device cuda --tokens 65536 --vocab 128256 --hidden 2048 --dtype bf16
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import _harness as h

ROOT = Path(__file__).resolve().parents[1]
for _dir in (ROOT / "trainer_image", ROOT / "operator"):
    if str(_dir) not in sys.path:
        sys.path.insert(0, str(_dir))


def run_kernel(name: str, hidden: Any, labels: Any, head: Any, chunk: int) -> tuple[Any, Any, Any]:
    """(loss, d hidden, d weight) of one kernel."""
    import torch.nn.functional as F

    from ctxext_trainer.fused_ce import fused_ce_sum
    from ctxext_trainer.loss import chunked_ce_sum

    h_ = hidden.detach().requires_grad_(True)
    head.weight.grad = None
    if name == "plain":
        loss = F.cross_entropy(head(h_).float().view(-1, head.weight.shape[0]), labels.view(-1), reduction="sum")
    elif name == "chunked":
        loss = chunked_ce_sum(h_, labels, head, chunk_tokens=chunk)
    else:
        loss = fused_ce_sum(h_, labels, head.weight, chunk)
    loss.backward()
    assert h_.grad is not None and head.weight.grad is not None
    return loss.detach(), h_.grad.detach(), head.weight.grad.detach().clone()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tokens", type=int, default=8192)
    parser.add_argument("--vocab", type=int, default=16384)
    parser.add_argument("--hidden", type=int, default=512)
    parser.add_argument("--chunk", type=int, default=4096)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="fp32", choices=["fp32", "bf16"])
    args = parser.parse_args()
    import torch

    torch.manual_seed(0)
    dtype = torch.bfloat16 if args.dtype == "bf16" else torch.float32
    device = torch.device(args.device)
    head = torch.nn.Linear(args.hidden, args.vocab, bias=False).to(device, dtype)
    hidden = torch.randn(1, args.tokens, args.hidden, device=device, dtype=dtype)
    labels = torch.randint(0, args.vocab, (1, args.tokens), device=device)
    results: dict[str, dict[str, Any]] = {}
    reference = None
    for name in ("plain", "chunked", "fused"):
        seconds = []
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats()
        for i in range(args.repeats + 1):
            if device.type == "cuda":
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            out = run_kernel(name, hidden, labels, head, args.chunk)
            if device.type == "cuda":
                torch.cuda.synchronize()
            if i:
                seconds.append(time.perf_counter() - t0)
        reference = reference or out
        errors = [float((a.float() - b.float()).norm() / b.float().norm().clamp(min=1e-30))
                  for a, b in zip(out, reference, strict=True)]
        results[name] = {"seconds_median": statistics.median(seconds), "seconds": seconds,
                         "max_relative_error_vs_plain": max(errors),
                         "peak_gib": torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else None}
    plain = results["plain"]["seconds_median"]
    rows = [[n, r["seconds_median"], h.ratio(r["seconds_median"], plain), r["max_relative_error_vs_plain"],
             r["peak_gib"]] for n, r in results.items()]
    h.print_table(["kernel", "median s", "÷ plain", "max rel. error", "peak GiB"], rows,
                  title=f"loss_kernels: {args.tokens} tokens, vocabulary {args.vocab}, hidden {args.hidden}, "
                        f"{args.dtype} on {args.device}, chunk {args.chunk}, median of {args.repeats}")
    h.emit_json("loss_kernels", {"args": vars(args), "torch": torch.__version__, "kernels": results})
    tolerance = 1e-4 if dtype == torch.float32 else 3e-2
    return 0 if all(r["max_relative_error_vs_plain"] < tolerance for r in results.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
