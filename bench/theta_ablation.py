"""Does theta scaling matter? A 16x curriculum (128 → 512 → 2048) on the tiny model, run with the
theta rule (scaling-law) and with theta held at the base value (fixed 10000), >= 2 seeds each, side by
side: passkey accuracy by length, held-out loss by position, wall time.

    .venv/bin/python bench/theta_ablation.py                    # seeds 1 2, full steps (long: see below)
    .venv/bin/python bench/theta_ablation.py --steps-scale 0.25 # a quicker, weaker look

Each (variant, seed) is one `ctxext run` of a generated manifest in ``--workdir`` (default
``bench-runs/theta-ablation``); rerunning the script resumes unfinished runs and reuses finished
ones, so it can be stopped and continued. The recipe is examples/tiny-cpu.yaml's (length curriculum
within each stage, passkey samples in half the sequences, lr 1e-3 cosine) with the stage lengths of
the 16x curriculum; ``data.seed`` is the seed (the evaluation seed stays apart from it). Cost on a
2-core CPU: each run trains ~2,000 steps at lengths up to 2048, roughly 15–30 minutes, so the
default four runs take about 1–2 hours.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]
LENGTHS = [128, 512, 1024, 2048]
VARIANTS = {"theta-rule": {"thetaRule": "scaling-law"}, "theta-fixed": {"thetaRule": "fixed"}}


def manifest(variant: str, seed: int, steps_scale: float) -> dict[str, Any]:
    obj = yaml.safe_load((ROOT / "examples" / "tiny-cpu.yaml").read_text())
    obj["metadata"]["name"] = f"ablation-{variant}-s{seed}"
    spec = obj["spec"]
    spec["targetContextLength"] = 2048
    cur = spec["curriculum"]
    cur["thetaRule"] = VARIANTS[variant]["thetaRule"]
    cur["stageDefaults"]["batchSize"] = 2
    stages = [{"seqLen": 512, "steps": max(1, round(800 * steps_scale))},
              {"seqLen": 2048, "steps": max(1, round(1200 * steps_scale))}]
    if variant == "theta-fixed":
        for s in stages:
            s["ropeTheta"] = spec["model"]["ropeTheta"]
    cur["stages"] = stages
    spec["data"]["seed"] = seed
    spec["evaluation"]["lengths"] = LENGTHS
    spec["evaluation"]["gates"] = []
    return obj


def run_one(workdir: Path, variant: str, seed: int, steps_scale: float, nproc: int) -> dict[str, Any]:
    run_dir = workdir / f"{variant}-seed{seed}"
    run_dir.mkdir(parents=True, exist_ok=True)
    path = run_dir / "manifest.yaml"
    path.write_text(yaml.safe_dump(manifest(variant, seed, steps_scale), sort_keys=False))
    report = run_dir / "work" / "report.json"
    if report.exists() and json.loads(report.read_text()).get("status") == "Succeeded":
        return dict(json.loads(report.read_text()))
    print(f"== {variant} seed {seed}: ctxext run {path}", flush=True)
    env = dict(os.environ, OMP_NUM_THREADS="1")
    subprocess.run([sys.executable, "-m", "ctxext.cli.main", "run", str(path), "--workdir", str(run_dir / "work"),
                    "--nproc", str(nproc), "--metrics-port", "0"], env=env, check=False)
    return dict(json.loads(report.read_text()))


def _buckets(report: dict[str, Any]) -> dict[str, float]:
    """Loss by position over the final model, merged into L0-multiple ranges: [0,128) [128,512) [512,1024) ..."""
    edges = [0, 128, 512, 1024, 2048]
    final = report["stages"][-1] if report["stages"] else {}
    out: dict[str, float] = {}
    for lo, hi in itertools.pairwise(edges):
        inside = [b["loss"] for b in final.get("positionLoss", []) if lo <= b["from"] and b["to"] <= hi]
        if inside:
            out[f"{lo}-{hi}"] = sum(inside) / len(inside)
    return out


def row(variant: str, seed: int | str, report: dict[str, Any]) -> list[str]:
    final = report["stages"][-1] if report["stages"] else {}
    acc = final.get("passkeyAccuracy", {})
    loss = _buckets(report)
    return [variant, str(seed), f"{final.get('ropeTheta', float('nan')):,.0f}",
            *(f"{acc[str(n)]:.2f}" if str(n) in acc else "-" for n in LENGTHS),
            *(f"{loss[k]:.3f}" if k in loss else "-" for k in ("0-128", "128-512", "512-1024", "1024-2048")),
            f"{report.get('wallSeconds', float('nan')):.0f}", report.get("status", "?")]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--steps-scale", type=float, default=1.0, help="multiply every stage's steps")
    parser.add_argument("--nproc", type=int, default=2)
    parser.add_argument("--workdir", type=Path, default=ROOT / "bench-runs" / "theta-ablation")
    args = parser.parse_args()
    reports = {(v, s): run_one(args.workdir, v, s, args.steps_scale, args.nproc) for v in VARIANTS for s in args.seeds}
    header = ["variant", "seed", "final θ", *(f"passkey@{n}" for n in LENGTHS),
              "loss 0-128", "128-512", "512-1024", "1024-2048", "wall s", "status"]
    rows = [row(v, s, r) for (v, s), r in reports.items()]
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(header)]
    print("  ".join(h.rjust(w) for h, w in zip(header, widths, strict=True)))
    for r in rows:
        print("  ".join(c.rjust(w) for c, w in zip(r, widths, strict=True)))
    for v in VARIANTS:
        accs = [reports[(v, s)]["stages"][-1]["passkeyAccuracy"].get("2048") for s in args.seeds
                if reports[(v, s)]["stages"]]
        accs = [a for a in accs if a is not None]
        if accs:
            print(f"{v}: mean passkey@2048 over seeds {args.seeds} = {sum(accs) / len(accs):.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
