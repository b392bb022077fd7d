"""GPU check of issue #25 item 2: SIGTERM to the pod's PID 1, the torchrun agent, during a step longer
than 30 s on GPU; the stage checkpoints that step, exits as preempted, and the next attempt resumes.

The pod is started as ``tests/trainer/test_preemption_through_launch.py`` starts it (its
``start_pod``: the PyTorchJob builder's command ``python -m ctxext_trainer.launch`` and its
``TORCH_ELASTIC_SHUTDOWN_TIMEOUT`` for a 90 s grace period, Kubeflow's ``PET_*`` variables), with
``--nproc`` workers (default every visible GPU; nccl, bf16, ZeRO ``--zero``) training the trainer
tests' tiny Llama on CUDA. Step 2 is made ``--slow-seconds`` (40) longer after its backward pass by
the trainer's ``CTXEXT_SLOW_STEP`` hook, as a 1M-token micro-batch is; once step 1 is logged the
agent alone gets SIGTERM (what the kubelet sends). Then the same stage runs again as attempt 2. A
straight run of the same stage gives the reference losses. Holds when the agent outlived its 30 s
default (the workers were not SIGKILLed), exited with the preemption code, ``result.json`` says
``Preempted`` after step 2 with ``checkpoints/step-2`` complete, and attempt 2 resumed from step 2,
succeeded, and logged steps 1-4 with the straight run's losses (within ``--loss-tolerance``, 1e-3
relative: CUDA kernels need not be bitwise reproducible; the CPU test asserts equality). Each run's
output goes to ``--log-dir``. ``--smoke-cpu``: 2 gloo ranks on CPU (the test's setting).

    python bench/gpu_check_preemption.py --json-out /tmp/out/gpu_check_preemption.json   # ~2.5 min on one GPU
    python bench/gpu_check_preemption.py --smoke-cpu                                      # CPU, 78 s
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import _harness as h

STEPS = 4


def loss_gap(straight: dict[int, float], resumed: dict[int, float]) -> float | None:
    """Largest relative loss difference over the steps of both runs; None unless both logged steps 1..4.

    >>> loss_gap({1: 2.0, 2: 1.0, 3: 1.0, 4: 1.0}, {1: 2.0, 2: 1.0005, 3: 1.0, 4: 1.0})
    0.0005
    >>> loss_gap({1: 2.0}, {1: 2.0}) is None
    True
    """
    want = list(range(1, STEPS + 1))
    if sorted(straight) != want or sorted(resumed) != want:
        return None
    return round(max(abs(resumed[s] - straight[s]) / max(abs(straight[s]), 1e-12) for s in want), 12)


def run_pod(config: dict[str, Any], log: Path, deadline: float, nproc: int, **extra: str) -> tuple[int, float]:
    """(exit code, seconds) of one pod run to its end (-9 if killed at ``deadline``)."""
    from tests.trainer.test_preemption_through_launch import start_pod

    started = time.monotonic()
    pod = start_pod(config, nproc=nproc, **extra)
    try:
        output, _ = pod.communicate(timeout=max(1.0, deadline - time.monotonic()))
    except subprocess.TimeoutExpired:
        os.killpg(pod.pid, signal.SIGKILL)
        output, _ = pod.communicate()
    log.write_text(output)
    return pod.returncode, time.monotonic() - started


def check(work: Path, logs: Path, *, device: str, nproc: int, zero: int, slow: float, deadline: float,
          tolerance: float) -> dict[str, Any]:
    from ctxext.results import read_result
    from ctxext_trainer import exit_codes
    from tests.trainer.conftest import make_corpus, make_tiny_model, stage_config, train_log
    from tests.trainer.test_preemption_through_launch import start_pod

    model, corpus = make_tiny_model(work / "model"), make_corpus(work / "corpus")
    common: dict[str, Any] = dict(zero_stage=zero, steps=STEPS, checkpoint_interval=100, seq_len=64,
                                  lr_schedule="cosine", warmup_steps=1, device=device)
    straight, cut = work / "straight", work / "cut"
    out: dict[str, Any] = {}
    rc, seconds = run_pod(stage_config(model, corpus, straight, **common), logs / "preemption_straight.log",
                          deadline, nproc)
    out["straight"] = {"exit_code": rc, "seconds": round(seconds, 1)}
    if rc != exit_codes.OK:
        return {**out, "error": f"the straight run exited {rc} (see preemption_straight.log)"}

    pod = start_pod(stage_config(model, corpus, cut, **common), nproc=nproc, CTXEXT_SLOW_STEP="2@1",
                    CTXEXT_SLOW_STEP_SECONDS=str(slow))
    while not train_log(cut) and pod.poll() is None and time.monotonic() < deadline:
        time.sleep(0.2)
    if [r["step"] for r in train_log(cut)] != [1]:
        os.killpg(pod.pid, signal.SIGKILL)
        (logs / "preemption_cut.log").write_text(pod.communicate()[0])
        return {**out, "error": "step 1 of the cut run never finished (see preemption_cut.log)"}
    os.kill(pod.pid, signal.SIGTERM)  # what the kubelet does: PID 1 only
    signalled = time.monotonic()
    try:
        output, _ = pod.communicate(timeout=max(1.0, deadline - signalled))
    except subprocess.TimeoutExpired:
        os.killpg(pod.pid, signal.SIGKILL)
        output, _ = pod.communicate()
    (logs / "preemption_cut.log").write_text(output)
    result = read_result(cut)
    out["preempted"] = {
        "exit_code": pod.returncode, "expected_exit_code": exit_codes.PREEMPTED,
        "seconds_after_sigterm": round(time.monotonic() - signalled, 1),
        "reason_code": result.reason_code if result else None, "steps_done": result.steps_done if result else None,
        "reason": result.reason if result else None,
        "checkpoint_complete": (cut / "checkpoints" / "step-2" / "MANIFEST.json").is_file()}

    rc, seconds = run_pod(stage_config(model, corpus, cut, attempt=2, **common), logs / "preemption_resume.log",
                          deadline, nproc)
    final = read_result(cut)
    gap = loss_gap({r["step"]: r["loss"] for r in train_log(straight)}, {r["step"]: r["loss"] for r in train_log(cut)})
    out["resumed"] = {"exit_code": rc, "seconds": round(seconds, 1), "status": final.status if final else None,
                      "resumed_from_step": final.resumed_from_step if final else None, "loss_max_rel_gap": gap}
    p = out["preempted"]
    out["holds"] = bool(
        p["exit_code"] == exit_codes.PREEMPTED and p["seconds_after_sigterm"] > slow > 30
        and p["reason_code"] == "Preempted" and p["steps_done"] == 2 and p["checkpoint_complete"]
        and rc == exit_codes.OK and out["resumed"]["status"] == "Succeeded"
        and out["resumed"]["resumed_from_step"] == 2 and gap is not None and gap <= tolerance)
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--nproc", type=int, help="workers (default: every visible GPU; 2 with --smoke-cpu)")
    parser.add_argument("--zero", type=int, default=2, choices=(1, 2, 3))
    parser.add_argument("--slow-seconds", type=float, default=40.0, help="extra seconds of step 2 (> 30)")
    parser.add_argument("--loss-tolerance", type=float, default=1e-3)
    parser.add_argument("--budget-seconds", type=float, default=400.0, help="every run ends by then")
    parser.add_argument("--json-out")
    parser.add_argument("--log-dir")
    parser.add_argument("--smoke-cpu", action="store_true", help="2 gloo ranks on CPU")
    args = parser.parse_args()
    import torch

    device = "cpu" if args.smoke_cpu else "cuda"
    json_out = Path(args.json_out) if args.json_out else None
    if (refused := h.refuse_without_cuda("gpu_check_preemption", args.smoke_cpu, json_out)) is not None:
        return refused
    nproc = args.nproc or (torch.cuda.device_count() if device == "cuda" else 2)
    work = Path(tempfile.mkdtemp(prefix="ctxext-preemption-check-"))
    logs = Path(args.log_dir) if args.log_dir else work
    logs.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    try:
        out = check(work, logs, device=device, nproc=nproc, zero=args.zero, slow=args.slow_seconds,
                    deadline=started + args.budget_seconds, tolerance=args.loss_tolerance)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    name = torch.cuda.get_device_name(0) if device == "cuda" else "cpu"
    rows = [[run, *(out.get(run, {}).get(k) for k in ("exit_code", "seconds", "seconds_after_sigterm",
                                                        "reason_code", "resumed_from_step", "loss_max_rel_gap"))]
            for run in ("straight", "preempted", "resumed")]
    h.print_table(["run", "exit", "s", "s after SIGTERM", "reason", "resumed from", "max rel loss gap"], rows,
                  title=f"gpu_check_preemption: {name}, {nproc} worker(s), ZeRO {args.zero}, "
                        f"step 2 {args.slow_seconds:.0f} s longer, holds: {out.get('holds', False)}")
    if out.get("error"):
        print(f"gpu_check_preemption: {out['error']}", file=sys.stderr)
    h.emit_json("gpu_check_preemption", {"device": name, "nproc": nproc, "zero": args.zero, **out,
                                         "wall_seconds": round(time.monotonic() - started, 1)}, path=json_out)
    return 0 if out.get("holds") else 1


if __name__ == "__main__":
    sys.exit(main())
