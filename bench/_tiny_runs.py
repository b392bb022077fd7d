"""Shared plumbing of the tiny-model evidence benchmarks (demo_robustness.py, theta_ablation.py).

A run is one ``ctxext run`` of a generated manifest in its own directory::

    <run_dir>/manifest.yaml      the manifest (examples/tiny-cpu.yaml with the bench's changes)
    <run_dir>/work/              ctxext run's workdir (stages, checkpoints, report.json, report.md)
    <run_dir>/run.log            everything ctxext run printed

Rerunning a benchmark reuses a run whose report.json is final (Succeeded or Failed) for the same
manifest and resumes an unfinished one (``ctxext run`` resumes from its checkpoints), so a long
benchmark can be stopped and continued. Evaluations are ``ctxext eval -o json`` subprocesses.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]
DEMO = ROOT / "examples" / "tiny-cpu.yaml"
BASE_MODEL = ROOT / "operator" / "ctxext" / "data" / "tiny"
FINAL = ("Succeeded", "Failed")


def demo_manifest() -> dict[str, Any]:
    """examples/tiny-cpu.yaml as a dict."""
    return dict(yaml.safe_load(DEMO.read_text()))


def _env() -> dict[str, str]:
    return dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")


def run_manifest(obj: dict[str, Any], run_dir: Path, *, nproc: int = 2) -> dict[str, Any]:
    """report.json of ``ctxext run`` on ``obj`` in ``run_dir`` (run, resumed or reused), plus ``runSeconds``
    (wall time of this call's ``ctxext run``, 0 when reused)."""
    run_dir.mkdir(parents=True, exist_ok=True)
    text = yaml.safe_dump(obj, sort_keys=False)
    path, report = run_dir / "manifest.yaml", run_dir / "work" / "report.json"
    if path.exists() and path.read_text() != text:
        raise SystemExit(f"{run_dir} holds a run of another manifest; remove it or use another --workdir")
    path.write_text(text)
    if report.exists() and json.loads(report.read_text()).get("status") in FINAL:
        return {**json.loads(report.read_text()), "runSeconds": 0.0}
    print(f"== ctxext run {path}", flush=True)
    started = time.monotonic()
    with (run_dir / "run.log").open("a") as log:
        subprocess.run([sys.executable, "-m", "ctxext.cli.main", "run", str(path), "--workdir", str(run_dir / "work"),
                        "--nproc", str(nproc), "--metrics-port", "0"], env=_env(), stdout=log,
                       stderr=subprocess.STDOUT, check=False)
    if not report.exists():
        raise SystemExit(f"ctxext run wrote no report.json; see {run_dir / 'run.log'}")
    return {**json.loads(report.read_text()), "runSeconds": round(time.monotonic() - started, 1)}


def evaluate(model: Path | str, *, seed: int, lengths: Sequence[int], depths: Sequence[float], samples: int,
             tasks: Sequence[str] = ("passkey",), original_length: int = 128, threshold: float = 0.85,
             cache: Path | None = None) -> dict[str, Any]:
    """``ctxext eval -o json`` of ``model`` (cached as JSON in ``cache`` when given)."""
    if cache is not None and cache.exists():
        return dict(json.loads(cache.read_text()))
    argv = [sys.executable, "-m", "ctxext.cli.main", "eval", "--model", str(model),
            "--lengths", ",".join(map(str, lengths)), "--depths", ",".join(f"{d:g}" for d in depths),
            "--samples", str(samples), "--seed", str(seed), "--tasks", ",".join(tasks),
            "--original-length", str(original_length), "--threshold", str(threshold), "-o", "json"]
    proc = subprocess.run(argv, env=_env(), capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise SystemExit(f"ctxext eval failed ({proc.returncode}): {proc.stderr[-2000:]}")
    result = dict(json.loads(proc.stdout[proc.stdout.index("{"):]))
    if cache is not None:
        cache.parent.mkdir(parents=True, exist_ok=True)
        cache.write_text(json.dumps(result, indent=1))
    return result


def mean_min(values: Sequence[float]) -> tuple[float, float]:
    """(mean, min) of ``values``.

    >>> mean_min([0.9, 1.0, 0.95])
    (0.95, 0.9)
    """
    return round(statistics.fmean(values), 4), min(values)


def table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A Markdown table (pasted into bench/README.md as printed).

    >>> print(table(["a", "bb"], [["1", "2"]]))
    | a | bb |
    |---:|---:|
    | 1 | 2 |
    """
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---:" for _ in header) + "|"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)
