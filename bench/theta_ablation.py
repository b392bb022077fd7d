"""Does theta scaling matter? The demo's recipe extended 16x (128 → 512 → 1024 → 2048) on the tiny model
with a theta rule (ntk; also scaling-law with --variants) and with theta held at the base value
(fixed 10000), >= 2 training seeds each, same steps and data: passkey accuracy by length and depth and
held-out loss by position after 8x (stage 2, 1024 tokens) and 16x (stage 3, 2048 tokens).

    .venv/bin/python bench/theta_ablation.py                          # ntk vs fixed, seeds 1 2
    .venv/bin/python bench/theta_ablation.py --variants ntk scaling-law fixed --seeds 1 2 3

Each (variant, seed) is one ``ctxext run`` (bench/_tiny_runs.py: cached, resumable) of
examples/tiny-cpu.yaml with a third stage (2048 tokens, 300 steps), ``data.seed`` = the seed, no gates
(every stage runs), and every stage evaluated at 128, 512, 1024 and 2048 (5 depths x 10 samples; the
evaluation seed stays the demo's). Stages 1-2 are the demo's stages, so the 8x rows are the demo's
recipe with one more evaluation length. Loss by position is the held-out loss of packed 2048-token
sequences in position ranges; past a stage's own length it measures extrapolation. Writes
bench/results/theta_ablation.json and .png. Cost: ~15 min per run on 2 idle cores.
"""

from __future__ import annotations

import argparse
import itertools
import statistics
import sys
import time
from pathlib import Path
from typing import Any

from _harness import emit_json
from _tiny_runs import ROOT, demo_manifest, mean_min, run_manifest, table

LENGTHS = [128, 512, 1024, 2048]
RANGES = [(0, 128), (128, 512), (512, 1024), (1024, 2048)]
FACTORS = {8: 2, 16: 3}
"""Extension factor → the stage that reaches it."""


def manifest(variant: str, seed: int) -> dict[str, Any]:
    obj = demo_manifest()
    obj["metadata"]["name"] = f"ablation-{variant}-s{seed}"
    spec = obj["spec"]
    spec["targetContextLength"] = 2048
    cur = spec["curriculum"]
    cur["thetaRule"] = variant
    cur["stages"] = [*cur["stages"], {"seqLen": 2048, "steps": 300}]
    if variant == "fixed":
        for s in cur["stages"]:
            s["ropeTheta"] = spec["model"]["ropeTheta"]
    spec["data"]["seed"] = seed
    spec["evaluation"]["lengths"] = LENGTHS
    spec["evaluation"]["gates"] = []
    return obj


def position_loss(stage: dict[str, Any]) -> dict[str, float]:
    """Mean held-out loss per position range (positionLoss buckets of L0 = 128 merged).

    >>> position_loss({"positionLoss": [{"from": 0, "to": 128, "loss": 2.0}, {"from": 128, "to": 256, "loss": 2.5},
    ...                                 {"from": 256, "to": 384, "loss": 3.5}]})
    {'0-128': 2.0, '128-512': 3.0}
    """
    out: dict[str, float] = {}
    for lo, hi in RANGES:
        inside = [b["loss"] for b in stage.get("positionLoss", []) if lo <= b["from"] and b["to"] <= hi]
        if inside:
            out[f"{lo}-{hi}"] = round(statistics.fmean(inside), 4)
    return out


def cell(report: dict[str, Any], factor: int) -> dict[str, Any] | None:
    """The numbers of one run at one extension factor (None when that stage did not finish)."""
    stages = [s for s in report["stages"] if s["index"] == FACTORS[factor] and s.get("status") == "Succeeded"]
    if not stages:
        return None
    s = stages[0]
    acc = s.get("passkeyAccuracy") or {}
    length = str(128 * factor)
    return {"ropeTheta": s["ropeTheta"], "passkey": {n: acc.get(str(n)) for n in LENGTHS},
            "byDepth": ((s.get("grids") or {}).get("passkey") or {}).get(length, {}),
            "loss": position_loss(s), "effectiveLength": s.get("effectiveLength"),
            "stageSeconds": s.get("wallSeconds")}


def _f(value: Any, spec: str = ".2f") -> str:
    return format(value, spec) if isinstance(value, int | float) else "–"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variants", nargs="+", default=["ntk", "fixed"], choices=["ntk", "scaling-law", "fixed"])
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--nproc", type=int, default=2)
    parser.add_argument("--workdir", type=Path, default=ROOT / "bench-runs" / "theta-ablation")
    parser.add_argument("--results", type=Path, default=ROOT / "bench" / "results" / "theta_ablation")
    args = parser.parse_args()
    started = time.monotonic()
    reports = {(v, s): run_manifest(manifest(v, s), args.workdir / f"{v}-seed{s}", nproc=args.nproc)
               for s in args.seeds for v in args.variants}
    cells = {(v, s, f): c for (v, s), r in reports.items() for f in FACTORS if (c := cell(r, f)) is not None}
    rows = [[f"{f}x", v, str(s), _f(c["ropeTheta"], ",.0f"), *(_f(c["passkey"][n]) for n in LENGTHS),
             *(_f(c["byDepth"].get(d)) for d in sorted(c["byDepth"], key=float)),
             *(_f(c["loss"].get(f"{lo}-{hi}"), ".3f") for lo, hi in RANGES), _f(c["effectiveLength"], "d")]
            for (v, s, f), c in sorted(cells.items(), key=lambda kv: (kv[0][2], kv[0][0], kv[0][1]))]
    print(table(["factor", "θ rule", "seed", "θ", *(f"passkey@{n}" for n in LENGTHS),
                 *(f"depth {d:g}" for d in (0, 0.25, 0.5, 0.75, 1)), *(f"loss {lo}-{hi}" for lo, hi in RANGES),
                 "eff. length"], rows))
    summary = []
    for f, v in itertools.product(FACTORS, args.variants):
        accs = [c["passkey"][128 * f] for (cv, _, cf), c in cells.items() if cv == v and cf == f
                and c["passkey"][128 * f] is not None]
        if accs:
            mean, low = mean_min(accs)
            summary.append({"factor": f, "variant": v, "seeds": len(accs), "mean": mean, "min": low})
            print(f"{f}x {v}: passkey@{128 * f} mean {mean:.3f}, min {low:.2f} over {len(accs)} seeds")
    for (v, s), r in reports.items():
        print(f"{v} seed {s}: {r['status']}, run wall {r.get('wallSeconds')} s")
    total = round(time.monotonic() - started, 1)
    print(f"bench wall time {total} s (reused runs cost nothing)")
    args.results.parent.mkdir(parents=True, exist_ok=True)
    out = {"command": " ".join(sys.argv), "summary": summary, "benchSeconds": total,
           "runs": {f"{v}-seed{s}": {"status": r["status"], "wallSeconds": r.get("wallSeconds")}
                    for (v, s), r in reports.items()},
           "cells": [{"variant": v, "seed": s, "factor": f, **c} for (v, s, f), c in cells.items()]}
    plot(cells, args.variants, args.results.with_suffix(".png"))
    emit_json("theta_ablation", out, args.results.with_suffix(".json"))
    return 0


def plot(cells: dict[tuple[str, int, int], dict[str, Any]], variants: list[str], path: Path) -> None:
    """Passkey by length after 8x and 16x, and loss by position after 16x: mean over seeds, min-max bars."""
    import matplotlib
    import matplotlib.ticker

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    for ax, f in zip(axes[:2], FACTORS, strict=True):
        for v in variants:
            mine = [c for (cv, _, cf), c in cells.items() if cv == v and cf == f]
            ys = [[c["passkey"][n] for c in mine if c["passkey"][n] is not None] for n in LENGTHS]
            ax.errorbar(LENGTHS, [statistics.fmean(y) if y else float("nan") for y in ys], marker="o", label=v,
                        yerr=[[statistics.fmean(y) - min(y) if y else 0 for y in ys],
                              [max(y) - statistics.fmean(y) if y else 0 for y in ys]], capsize=3)
        ax.axvline(128 * f, color="grey", ls=":")
        ax.set_xscale("log", base=2)
        ax.xaxis.set_minor_locator(matplotlib.ticker.NullLocator())
        ax.set(xticks=LENGTHS, xticklabels=[str(n) for n in LENGTHS], ylim=(-0.05, 1.05),
               xlabel="length (tokens)", ylabel="passkey accuracy", title=f"after {f}x (stage {FACTORS[f]})")
        ax.legend()
    for v in variants:
        mine = [c for (cv, _, cf), c in cells.items() if cv == v and cf == 16]
        keys = [f"{lo}-{hi}" for lo, hi in RANGES]
        axes[2].plot(keys, [statistics.fmean([c["loss"][k] for c in mine if k in c["loss"]] or [float("nan")])
                            for k in keys], marker="o", label=v)
    axes[2].set(xlabel="position range", ylabel="held-out loss", title="loss by position after 16x")
    axes[2].legend()
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


if __name__ == "__main__":
    sys.exit(main())
