"""Does a guarded stop always exit with GUARD_STOP (3)? Repeat real stages under CPU load and count.

Each trial is the 2-rank stage of ``tests/trainer/test_stage_runs.py::
test_nan_injection_stops_the_stage_with_a_reason`` (gloo, ZeRO-1, NaN injected at step 3), run
through ``python -m ctxext_trainer.launch``; ``--parallel`` trials run at once next to ``--burners``
busy-looping processes, the load under which CI once saw rank 0 abort at exit (134) after the guard
had stopped the stage. ``--code-root DIR`` runs another checkout's trainer (e.g. the one before the
fix) for a side-by-side count::

    OMP_NUM_THREADS=1 .venv/bin/python bench/exit_codes_under_load.py --trials 24 --parallel 3 --burners 2
    OMP_NUM_THREADS=1 .venv/bin/python bench/exit_codes_under_load.py --code-root /work/main ...

Prints the exit codes seen and, last, one JSON line (``bench/_harness.py``).
"""

from __future__ import annotations

import argparse
import collections
import json
import multiprocessing
import os
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench._harness import emit_json, print_table  # noqa: E402
from tests.trainer.conftest import free_port, make_corpus, make_tiny_model, stage_config  # noqa: E402


def _burn() -> None:
    while True:
        pass


def _trial(i: int, work: Path, model: Path, corpus: Path, env: dict[str, str]) -> tuple[int, float]:
    out = work / f"trial-{i}"
    config = stage_config(model, corpus, out, zero_stage=1, steps=6, checkpoint_interval=2)
    path = work / f"trial-{i}.json"
    path.write_text(json.dumps(config))
    cmd = [sys.executable, "-m", "ctxext_trainer.launch", "--nproc-per-node=2", f"--master-port={free_port()}",
           "-m", "ctxext_trainer", "--stage-config", str(path)]
    started = time.monotonic()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    if proc.returncode != 3:
        (work / f"trial-{i}.log").write_text(proc.stdout + proc.stderr)
    return proc.returncode, time.monotonic() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=24)
    parser.add_argument("--parallel", type=int, default=3, help="trials at once (each is 2 ranks + launcher)")
    parser.add_argument("--burners", type=int, default=2, help="busy-looping processes beside them")
    parser.add_argument("--code-root", type=Path, default=ROOT, help="checkout whose trainer runs")
    args = parser.parse_args()
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_PORT")}
    env.update(OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false",
               CTXEXT_INJECT_NAN_AT_STEP="3",
               PYTHONPATH=f"{args.code_root / 'operator'}:{args.code_root / 'trainer_image'}")
    work = Path(tempfile.mkdtemp(prefix="ctxext-exit-codes-"))
    model, corpus = make_tiny_model(work / "model"), make_corpus(work / "corpus")
    burners = [multiprocessing.Process(target=_burn, daemon=True) for _ in range(args.burners)]
    for b in burners:
        b.start()
    try:
        with ThreadPoolExecutor(args.parallel) as pool:
            results = list(pool.map(lambda i: _trial(i, work, model, corpus, env), range(args.trials)))
    finally:
        for b in burners:
            b.terminate()
    codes = collections.Counter(code for code, _ in results)
    print_table(["exit code", "trials"], sorted(codes.items()),
                title=f"{args.trials} guarded stops, {args.parallel} at once + {args.burners} burners, "
                      f"code from {args.code_root}")
    print(f"logs of unexpected codes: {work}")
    emit_json("exit_codes_under_load", {
        "trials": args.trials, "parallel": args.parallel, "burners": args.burners, "code_root": str(args.code_root),
        "codes": {str(k): v for k, v in codes.items()}, "unexpected": args.trials - codes.get(3, 0),
        "seconds_per_trial": sorted(round(s, 1) for _, s in results)})


if __name__ == "__main__":
    main()
