"""GPU check of issue #25 item 5: on CUDA in bf16 at ZeRO 2 and 3, gradients accumulated over 32
micro-batches match an fp32 reference with the trainer's ``data_types.grad_accum_dtype``, and drift
without it.

Runs the worker of ``tests/trainer/test_grad_accumulation_dtype.py`` (``tests/trainer/grad_accum_worker.py``
under torchrun, ``$CTXEXT_GRAD_ACCUM_DEVICE=cuda``: nccl, one GPU per rank, ``--nproc`` default
min(2, GPUs)) on the tiny Llama of the trainer tests: the trainer's own DeepSpeed engine in bf16,
32 micro-batches (stage 1 of examples/llama3-8b-1m.yaml accumulates 32) accumulated in one step,
once with the trainer's config (fp32 accumulation) and once without ``data_types`` (DeepSpeed's
default: accumulate in bf16), against the exact float64 sum of the 32 single-micro-batch bf16
gradients. Reports both relative errors per ZeRO stage (the test's ``relative_error``) and the
health guard's gradient norm against the accumulated gradients' norm. Holds when, at every stage,
the trainer's error is below 1e-3, at most a third of the bf16 accumulation's, and the guard's norm
matches to 1e-4. On CPU (``--smoke-cpu``: 2 gloo ranks, bf16) the test measured 2.4e-9 against 5.8e-3;
on CUDA the single-micro-batch gradients may differ in the last bit between runs (atomics), so the
bound is looser than the test's 1e-5.

    python bench/gpu_check_grad_accum.py --json-out /tmp/out/gpu_check_grad_accum.json   # ~1 min on one GPU
    python bench/gpu_check_grad_accum.py --smoke-cpu                                      # CPU, 22 s
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import _harness as h

STAGES = (2, 3)
TRAINER_BOUND = 1e-3


def verdict(trainer: float, model_dtype: float, guard: float, norm: float) -> bool:
    """Whether one stage's figures hold.

    >>> verdict(2.4e-9, 5.8e-3, 1.0, 1.0), verdict(4e-3, 5.8e-3, 1.0, 1.0), verdict(1e-6, 1e-6, 1.0, 1.0)
    (True, False, False)
    """
    return trainer < TRAINER_BOUND and trainer * 3 <= model_dtype and abs(guard - norm) <= 1e-4 * max(norm, 1e-12)


def stage_row(record: dict[str, Any], zero: int) -> dict[str, Any]:
    from tests.trainer.grad_accum_worker import GUARD_NORM
    from tests.trainer.test_grad_accumulation_dtype import relative_error

    guard = float(record["trainer"].pop(GUARD_NORM))
    record["model-dtype"].pop(GUARD_NORM)
    trainer = relative_error(record["trainer"], record["single"])
    model_dtype = relative_error(record["model-dtype"], record["single"])
    norm = sum(float(g.norm() ** 2) for g in record["trainer"].values()) ** 0.5
    return {"zero": zero, "rel_error_fp32_accum": trainer, "rel_error_bf16_accum": model_dtype,
            "guard_grad_norm": guard, "accumulated_grad_norm": norm,
            "holds": verdict(trainer, model_dtype, guard, norm)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--nproc", type=int, help="ranks (default: min(2, GPUs); 2 with --smoke-cpu)")
    parser.add_argument("--timeout", type=float, default=300.0, help="seconds for the torchrun run")
    parser.add_argument("--budget-seconds", type=float, default=400.0, help="the run's timeout is at most this")
    parser.add_argument("--json-out")
    parser.add_argument("--log-dir")
    parser.add_argument("--smoke-cpu", action="store_true", help="2 gloo ranks, bf16 on CPU")
    args = parser.parse_args()
    import torch

    device = "cpu" if args.smoke_cpu else "cuda"
    json_out = Path(args.json_out) if args.json_out else None
    if (refused := h.refuse_without_cuda("gpu_check_grad_accum", args.smoke_cpu, json_out)) is not None:
        return refused
    from tests.trainer.conftest import free_port, make_tiny_model, trainer_env

    nproc = args.nproc or (min(2, torch.cuda.device_count()) if device == "cuda" else 2)
    work = Path(tempfile.mkdtemp(prefix="ctxext-grad-accum-check-"))
    logs = Path(args.log_dir) if args.log_dir else work
    logs.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    rows: list[dict[str, Any]] = []
    error = None
    try:
        model = make_tiny_model(work / "model")
        worker = h.ROOT / "tests" / "trainer" / "grad_accum_worker.py"
        proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", f"--nproc-per-node={nproc}",
                               f"--master-port={free_port()}", str(worker), str(model), str(work),
                               *map(str, STAGES)], env=trainer_env(CTXEXT_GRAD_ACCUM_DEVICE=device),
                              capture_output=True, text=True, timeout=min(args.timeout, args.budget_seconds))
        (logs / "gpu_check_grad_accum.log").write_text(proc.stdout + proc.stderr)
        if proc.returncode != 0:
            error = f"worker exit code {proc.returncode}: {(proc.stderr or proc.stdout)[-1500:]}"
        else:
            rows = [stage_row(torch.load(work / f"accum-z{zero}.pt"), zero) for zero in STAGES]
    except subprocess.TimeoutExpired:
        error = f"the worker ran past {min(args.timeout, args.budget_seconds):.0f} s"
    finally:
        shutil.rmtree(work, ignore_errors=True)
    name = torch.cuda.get_device_name(0) if device == "cuda" else "cpu"
    h.print_table(["ZeRO", "rel. error fp32 accum (trainer)", "rel. error bf16 accum (no data_types)",
                   "guard norm", "accumulated norm", "holds"],
                  [[r["zero"], r["rel_error_fp32_accum"], r["rel_error_bf16_accum"], r["guard_grad_norm"],
                    r["accumulated_grad_norm"], r["holds"]] for r in rows],
                  title=f"gpu_check_grad_accum: {name}, bf16, {nproc} rank(s), 32 micro-batches vs float64 sum")
    if error:
        print(f"gpu_check_grad_accum: {error}", file=sys.stderr)
    h.emit_json("gpu_check_grad_accum", {"device": name, "nproc": nproc, "rows": rows, "error": error,
                                         "wall_seconds": round(time.monotonic() - started, 1)}, path=json_out)
    return 0 if rows and all(r["holds"] for r in rows) and not error else 1


if __name__ == "__main__":
    sys.exit(main())
