"""Sequence-parallel check on a multi-GPU machine: Ulysses × ring stages against one GPU.

Runs the real trainer stage (``torchrun -m ctxext_trainer``) on the random ~1B Llama of
``gpu_throughput.py`` at one length, once on one GPU (SP 1) and once per layout on all GPUs
(``--layouts``, default ``U×2`` = Ulysses n/2 × ring 2 and ``1×n`` = ring only), the same data in
every run. Prints the per-step loss of each layout next to the one-GPU loss (bf16: they agree to
about 1e-2 relative, not bit for bit), its tokens/s, peak memory and what ran (result.json's
``runtime``); last line one JSON object, also written to ``--json-out``.

With fewer than 2 GPUs it says so, writes ``{"skipped": ...}`` and exits 0 (the CPU/gloo gradient
tests in tests/trainer cover the numerics either way). ``--smoke-cpu --nproc 4`` rehearses it on
CPU with the tiny shape.

    python bench/gpu_sp_check.py --seq-len 16384 --steps 3 --json-out /tmp/out/gpu_sp_check.json
    python bench/gpu_sp_check.py --smoke-cpu --nproc 4 --seq-len 256 --steps 2
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import _harness as h
import gpu_throughput as g


def layouts(text: str, n: int) -> list[tuple[int, int]]:
    """(ulysses, ring) pairs for ``n`` ranks: ``U×2`` → (n/2, 2), ``1×n`` → (1, n), or literal ``a×b``.

    >>> layouts("Ux2,1xn", 8), layouts("2x2", 4), layouts("Ux2", 2)
    ([(4, 2), (1, 8)], [(2, 2)], [(1, 2)])
    """
    out = []
    for item in (t.strip().lower().replace("×", "x") for t in text.split(",") if t.strip()):
        a, b = item.split("x")
        ring = n if b == "n" else int(b)
        ulysses = n // ring if a == "u" else int(a)
        if ulysses * ring == n and (ulysses, ring) not in out:
            out.append((ulysses, ring))
    return out


def run_stage(model_dir: Path, work: Path, logs: Path, *, nproc: int, ulysses: int, ring: int, seq_len: int,
              steps: int, device: str, timeout: float) -> dict[str, Any]:
    from ctxext.api.spec import EvaluationSpec
    from ctxext.stage_config import StageConfig

    name = f"sp{ulysses}x{ring}"
    out = work / name
    config = StageConfig(job="bench", job_name=f"bench-{name}", stage=1, total_stages=1, model_path=str(model_dir),
                         output_dir=str(out), seq_len=seq_len, rope_theta=8.0e6, original_context_length=8192,
                         steps=steps, learning_rate=1e-5, lr_schedule="constant", sequence_parallel=ulysses * ring,
                         ring_degree=ring, zero_stage=1, activation_checkpointing=True, device=device,
                         evaluation=EvaluationSpec(enabled=False), checkpoint_interval=10**6, metrics_port=0)
    path = work / f"{name}.json"
    path.write_text(config.dumps())
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}",
           "-m", "ctxext_trainer", "--stage-config", str(path)]
    result = g.run_cell(cmd, logs / f"{name}.log", timeout, device)
    records = g.trainer_records(out)
    result.update(ulysses=ulysses, ring=ring, losses=[r["loss"] for r in records],
                  step_seconds=[r["seconds"] for r in records])
    peaks = [r["maxMemoryAllocated"] for r in records if r.get("maxMemoryAllocated") is not None]
    if peaks:
        result["peak_gib"] = max(peaks) / g.GIB
    if (out / "result.json").is_file():
        result["runtime"] = json.loads((out / "result.json").read_text()).get("runtime")
    if result["exit_code"] != 0 or len(records) < steps:
        result["error"] = f"exit code {result['exit_code']}, {len(records)} steps\n" + g._tail(logs / f"{name}.log")
    shutil.rmtree(out, ignore_errors=True)
    return result


def max_relative_difference(a: list[float], b: list[float]) -> float | None:
    """Largest |a − b| / |b| over the steps (None when the runs differ in length).

    >>> max_relative_difference([2.0, 4.2], [2.0, 4.0])
    0.05
    """
    if not a or len(a) != len(b):
        return None
    return round(max(abs(x - y) / max(abs(y), 1e-12) for x, y in zip(a, b, strict=True)), 6)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seq-len", type=int, default=16384)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--layouts", default="Ux2,1xn")
    parser.add_argument("--nproc", type=int, help="ranks (default: every visible GPU)")
    parser.add_argument("--timeout", type=float, default=200.0, help="seconds per stage")
    parser.add_argument("--json-out")
    parser.add_argument("--log-dir")
    parser.add_argument("--smoke-cpu", action="store_true")
    args = parser.parse_args()
    import torch

    device = "cpu" if args.smoke_cpu else "cuda"
    n = args.nproc or (torch.cuda.device_count() if device == "cuda" else 2)
    json_out = Path(args.json_out) if args.json_out else None
    if n < 2:
        why = f"{n} GPU(s) visible: a sequence-parallel check needs at least 2"
        print(f"gpu_sp_check: skipped, {why}", file=sys.stderr)
        h.emit_json("gpu_sp_check", {"skipped": why}, path=json_out)
        return 0
    shape = g.TINY_SHAPE if args.smoke_cpu else g.ONE_B_SHAPE
    work = Path(tempfile.mkdtemp(prefix="ctxext-sp-check-", dir=g._scratch()))
    logs = Path(args.log_dir) if args.log_dir else work
    logs.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    runs: list[dict[str, Any]] = []
    reference: dict[str, Any] = {"error": "not run"}
    try:
        model_dir = g.make_model(shape, work / "model", device)
        common = dict(seq_len=args.seq_len, steps=args.steps, device=device, timeout=args.timeout)
        reference = run_stage(model_dir, work, logs, nproc=1, ulysses=1, ring=1, **common)
        for ulysses, ring in layouts(args.layouts, n):
            run = run_stage(model_dir, work, logs, nproc=n, ulysses=ulysses, ring=ring, **common)
            run["max_relative_loss_difference"] = max_relative_difference(run["losses"], reference["losses"])
            run.update(g.figures(run["step_seconds"], 1, args.seq_len, shape, None))
            runs.append(run)
            print(f"SP {ulysses}x{ring}: losses {run['losses']} vs one rank {reference['losses']}, "
                  f"max rel. diff {run['max_relative_loss_difference']}, {run.get('tokens_per_second', 0):,.0f} tok/s"
                  + (f"\n{run['error']}" if run.get("error") else ""), file=sys.stderr, flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    result = {"device": torch.cuda.get_device_name(0) if device == "cuda" else "cpu", "ranks": n,
              "seq_len": args.seq_len, "reference": reference, "layouts": runs,
              "wall_seconds": time.monotonic() - started}
    h.emit_json("gpu_sp_check", result, path=json_out)
    return 0 if all(not r.get("error") for r in [reference, *runs]) else 1


if __name__ == "__main__":
    sys.exit(main())
