"""Step time and peak memory of the ctxext trainer next to a plain transformers + torch AdamW loop, on CPU.

    OMP_NUM_THREADS=1 .venv/bin/python bench/trainer_step.py                 # 1K, 4K, 16K × ckpt off/on
    OMP_NUM_THREADS=1 .venv/bin/python bench/trainer_step.py --lengths 1024 4096 --checkpointing off

Both sides train the same freshly initialised small Llama (byte vocabulary, 3.0M parameters) on
sequences of the same length, batch 1, fp32, SDPA attention, ``OMP_NUM_THREADS=1``. *ctxext* is
the real stage runner (``ctxext_trainer.stage.run_stage``: DeepSpeed engine at ZeRO ``--zero``,
chunked loss, gradient-health statistics, loss all-reduce, metrics); its per-step wall and CPU
times come from the stage's ``train_log.jsonl``. *plain* is ``model(input_ids, labels=...).loss
.backward(); clip_grad_norm_; AdamW.step()``. Activation checkpointing (``--checkpointing
off|on|both``) is the stage's ``activationCheckpointing`` on the ctxext side and
``model.gradient_checkpointing_enable(use_reentrant=False)`` on the plain side (which is also what
the stage does, in ``model_loading.load_causal_lm``).

Every cell (side × length × checkpointing) runs in its own subprocess with a timeout (``--timeout``,
600 s; a cell over it is reported as ``timeout``), so memory figures are that cell's alone:

* ``peak`` = the process's peak RSS (``VmHWM``, ``/proc/self/status``) over set-up and training.
* ``growth`` = peak RSS during the training steps − RSS right before the first training step (after
  the model, optimizer / engine and data are built; the peak mark is reset there through
  ``/proc/self/clear_refs``). On the ctxext side that is the moment ``run_steps`` is entered.

Timing: each side's first ``--warmup`` steps are dropped and the table shows medians of the rest,
in wall time and in process CPU time (``time.process_time``; with one thread it is the step's
compute and stays meaningful on a machine shared with other jobs, where wall time is not).
Lengths ≥ ``--long-from`` (16384) run only ``--long-steps`` measured steps after ``--long-warmup``
(2 after 1 by default): one 16K step takes over a minute on one core, and 8 would not fit a cell's
timeout. Their medians are therefore of 2 steps.

Per side and checkpointing mode, the growth exponent b of growth ≈ a·L^b is fitted by least squares
on log-log over the lengths that completed (≥ 2 needed). Prints tables, then one JSON line.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import _harness as h

SHAPE: dict[str, Any] = dict(vocab_size=260, hidden_size=256, intermediate_size=688, num_hidden_layers=4,
                             num_attention_heads=8, num_key_value_heads=4, tie_word_embeddings=False, bos_token_id=1,
                             eos_token_id=2, pad_token_id=0)
THETA = 500000.0
MIB = 1024 * 1024
SIDES = ("ctxext", "plain")


# -- memory marks (inside a cell) -----------------------------------------------------------------------
def _status() -> dict[str, int]:
    return h.parse_proc_status(Path("/proc/self/status").read_text())


class MemoryMarks:
    """RSS right before the first training step and the peaks before / during training, in bytes."""

    def __init__(self) -> None:
        self.setup_peak = 0
        self.before = 0
        self.reset = False
        self.train_peak = 0

    def start(self) -> None:
        import contextlib
        import ctypes
        import gc

        gc.collect()
        with contextlib.suppress(OSError):
            ctypes.CDLL("libc.so.6").malloc_trim(0)
        status = _status()
        self.setup_peak, self.before = status["VmHWM"], status["VmRSS"]
        try:  # VmHWM restarts at the current RSS (Linux ≥ 4.0)
            Path("/proc/self/clear_refs").write_text("5")
            self.reset = True
        except OSError:
            self.reset = False

    def stop(self) -> None:
        self.train_peak = _status()["VmHWM"]

    def figures(self) -> dict[str, Any]:
        return {"peakMiB": round(max(self.setup_peak, self.train_peak) / MIB, 1),
                "growthMiB": round((self.train_peak - self.before) / MIB, 1),
                "rssBeforeMiB": round(self.before / MIB, 1), "setupPeakMiB": round(self.setup_peak / MIB, 1),
                "peakReset": self.reset}


# -- the two sides (inside a cell) ------------------------------------------------------------------------
def make_model_dir(root: Path, max_len: int) -> tuple[Path, int]:
    """The model (saved) and its corpus under ``root``; returns the model directory and the parameter count."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from ctxext_trainer.tokenizer import ByteTokenizer

    torch.manual_seed(0)
    config = LlamaConfig(**SHAPE, max_position_embeddings=max_len,
                         rope_parameters={"rope_type": "default", "rope_theta": THETA})
    model_dir = root / "model"
    model = LlamaForCausalLM(config)
    model.save_pretrained(str(model_dir), safe_serialization=True)
    ByteTokenizer().save(model_dir)
    corpus = root / "corpus"
    corpus.mkdir()
    for i in range(64):
        (corpus / f"d{i}.txt").write_text(f"Document {i}: " + "context windows grow with theta. " * (40 + 7 * i))
    return model_dir, sum(p.numel() for p in model.parameters())


def ctxext_cell(model_dir: Path, out: Path, seq_len: int, steps: int, zero: int, checkpointing: bool,
                marks: MemoryMarks) -> tuple[list[float], list[float]]:
    import ctxext_trainer.stage as stage
    from ctxext.stage_config import StageConfig

    inner = stage.run_steps

    def measured_run_steps(parts: Any, state: Any) -> Any:
        marks.start()
        try:
            return inner(parts, state)
        finally:
            marks.stop()

    stage.run_steps = measured_run_steps
    config = StageConfig(job="bench", job_name="bench", stage=1, total_stages=1, model_path=str(model_dir),
                         output_dir=str(out), seq_len=seq_len, rope_theta=THETA, original_context_length=256,
                         steps=steps, learning_rate=1e-4, lr_schedule="constant", device="cpu", zero_stage=zero,
                         activation_checkpointing=checkpointing, metrics_port=0, checkpoint_interval=10**6,
                         data={"source": f"file://{model_dir.parent / 'corpus'}", "validationFraction": 0.0},
                         evaluation={"enabled": False})
    if stage.run_stage(config) != 0:
        raise SystemExit(f"ctxext stage run failed; see {out}/result.json")
    log = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
    return [float(r["seconds"]) for r in log], [float(r["cpuSeconds"]) for r in log]


def plain_cell(model_dir: Path, seq_len: int, steps: int, checkpointing: bool,
               marks: MemoryMarks) -> tuple[list[float], list[float]]:
    import torch
    from transformers import LlamaForCausalLM

    model = LlamaForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32, attn_implementation="sdpa")
    model.config.rope_parameters = {"rope_type": "default", "rope_theta": THETA}
    model.train()
    if checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, betas=(0.9, 0.95), weight_decay=0.0)
    gen = torch.Generator().manual_seed(0)
    batches = [torch.randint(4, 260, (1, seq_len), generator=gen) for _ in range(steps)]
    times, cpu = [], []
    marks.start()
    for ids in batches:
        t0, c0 = time.perf_counter(), time.process_time()
        loss = model(input_ids=ids, labels=ids, use_cache=False).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        times.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
        del loss
    marks.stop()
    return times, cpu


def run_cell(args: argparse.Namespace) -> int:
    """``--cell SIDE:LENGTH:CKPT``: one cell in this process; prints its JSON as the last line."""
    side, length, ckpt = args.cell.split(":")
    seq_len, checkpointing = int(length), ckpt == "on"
    marks = MemoryMarks()
    model_dir = Path(args.model_dir)
    if side == "ctxext":
        with tempfile.TemporaryDirectory(dir=model_dir.parent) as out:
            wall, cpu = ctxext_cell(model_dir, Path(out), seq_len, args.total_steps, args.zero, checkpointing, marks)
    else:
        wall, cpu = plain_cell(model_dir, seq_len, args.total_steps, checkpointing, marks)
    print(json.dumps({"wall": wall, "cpu": cpu, **marks.figures()}), flush=True)
    return 0


# -- the driver ----------------------------------------------------------------------------------------------
def steps_for(seq_len: int, args: argparse.Namespace) -> tuple[int, int]:
    """(warmup, measured) steps for one length."""
    if seq_len >= args.long_from:
        return args.long_warmup, args.long_steps
    return args.warmup, args.steps


def spawn_cell(side: str, seq_len: int, ckpt: str, model_dir: Path, args: argparse.Namespace) -> dict[str, Any]:
    warmup, measured = steps_for(seq_len, args)
    cmd = [sys.executable, str(Path(__file__).resolve()), "--cell", f"{side}:{seq_len}:{ckpt}",
           "--model-dir", str(model_dir), "--total-steps", str(warmup + measured), "--zero", str(args.zero)]
    cell: dict[str, Any] = {"side": side, "seqLen": seq_len, "checkpointing": ckpt, "warmup": warmup,
                            "steps": measured}
    started = time.monotonic()
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=args.timeout, check=False)
    except subprocess.TimeoutExpired:
        cell.update(status="timeout", cellSeconds=round(time.monotonic() - started, 1))
        return cell
    cell["cellSeconds"] = round(time.monotonic() - started, 1)
    lines = proc.stdout.strip().splitlines()
    if proc.returncode != 0 or not lines:
        cell.update(status="failed", error=(proc.stderr.strip().splitlines() or ["?"])[-1][:300])
        return cell
    raw = json.loads(lines[-1])
    wall, cpu = raw.pop("wall")[warmup:], raw.pop("cpu")[warmup:]
    cell.update(status="ok", wallSeconds=round(statistics.median(wall), 4), cpuSeconds=round(statistics.median(cpu), 4),
                wallSteps=[round(v, 4) for v in wall], cpuSteps=[round(v, 4) for v in cpu], **raw)
    return cell


def summarize_cells(cells: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Ratio rows (ctxext ÷ plain per length and checkpointing) and growth exponents per side and mode."""
    ok = {(c["side"], c["seqLen"], c["checkpointing"]): c for c in cells if c["status"] == "ok"}
    keys = sorted({(c["seqLen"], c["checkpointing"]) for c in cells}, key=lambda k: (k[1], k[0]))
    rows = []
    for n, ckpt in keys:
        o, p = ok.get(("ctxext", n, ckpt)), ok.get(("plain", n, ckpt))
        row: dict[str, Any] = {"seqLen": n, "checkpointing": ckpt}
        for name, c in (("ctxext", o), ("plain", p)):
            for key in ("wallSeconds", "cpuSeconds", "peakMiB", "growthMiB"):
                row[f"{name}{key[0].upper()}{key[1:]}"] = c[key] if c else None
        for key, field in (("ratio", "wallSeconds"), ("cpuRatio", "cpuSeconds"), ("peakRatio", "peakMiB"),
                           ("growthRatio", "growthMiB")):
            r = h.ratio(o[field] if o else None, p[field] if p else None)
            row[key] = round(r, 3) if r is not None else None
        rows.append(row)
    fits = []
    for side in SIDES:
        for ckpt in sorted({c["checkpointing"] for c in cells}):
            pts = sorted((n, c["growthMiB"]) for (s, n, k), c in ok.items() if s == side and k == ckpt
                         and c["growthMiB"] > 0)
            fit: dict[str, Any] = {"side": side, "checkpointing": ckpt, "lengths": [n for n, _ in pts]}
            if len({n for n, _ in pts}) >= 2:
                a, b = h.fit_power_law([n for n, _ in pts], [g for _, g in pts])
                fit.update(a=a, b=round(b, 2))
            else:
                fit.update(a=None, b=None)
            fits.append(fit)
    return rows, fits


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--lengths", type=int, nargs="+", default=[1024, 4096, 16384])
    parser.add_argument("--steps", type=int, default=6, help="measured steps per cell (>= 5) below --long-from")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--long-from", type=int, default=16384, help="lengths from here use --long-steps")
    parser.add_argument("--long-steps", type=int, default=2, help="measured steps per cell at long lengths")
    parser.add_argument("--long-warmup", type=int, default=1)
    parser.add_argument("--zero", type=int, default=0, choices=[0, 1, 2, 3])
    parser.add_argument("--checkpointing", choices=["off", "on", "both"], default="both",
                        help="activation checkpointing on both sides")
    parser.add_argument("--timeout", type=float, default=600.0, help="seconds per cell (one subprocess)")
    parser.add_argument("--json-out", help="also write the JSON line here (rewritten after every cell)")
    parser.add_argument("--cell", help=argparse.SUPPRESS)
    parser.add_argument("--model-dir", help=argparse.SUPPRESS)
    parser.add_argument("--total-steps", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.cell:
        return run_cell(args)
    if args.steps < 5:
        parser.error("--steps must be at least 5")
    if args.long_steps < 1:
        parser.error("--long-steps must be at least 1")
    ckpts = ["off", "on"] if args.checkpointing == "both" else [args.checkpointing]
    lengths = sorted(set(args.lengths))
    threads = os.environ["OMP_NUM_THREADS"]
    config = {"zeroStage": args.zero, "ompNumThreads": threads, "shape": SHAPE,
              "steps": args.steps, "warmup": args.warmup, "longFrom": args.long_from, "longSteps": args.long_steps,
              "longWarmup": args.long_warmup, "timeoutSeconds": args.timeout}
    cells: list[dict[str, Any]] = []
    load = [h.machine()["loadavg_1m"]]
    started = time.monotonic()
    with tempfile.TemporaryDirectory() as tmp:
        model_dir, config["params"] = make_model_dir(Path(tmp), max(lengths))
        for n in lengths:
            for ckpt in ckpts:
                for side in SIDES:
                    cell = spawn_cell(side, n, ckpt, model_dir, args)
                    load.append(h.machine()["loadavg_1m"])
                    cells.append(cell)
                    print(f"[{time.monotonic() - started:6.0f}s] {side:>6} L={n:<6} ckpt {ckpt:<3} {cell['status']}"
                          + (f"  {cell['wallSeconds']:.3f} s/step  peak {cell['peakMiB']:.0f} MiB"
                             f"  growth {cell['growthMiB']:.0f} MiB" if cell["status"] == "ok" else "")
                          + f"  load {load[-1]}", file=sys.stderr, flush=True)
                    if args.json_out:
                        h.write_json(args.json_out, "trainer_step", {"partial": True, "config": config,
                                                                     "cells": cells, "loadavg1m": load})
    rows, fits = summarize_cells(cells)
    title = (f"ctxext trainer vs plain transformers + AdamW (CPU, one process per cell, OMP_NUM_THREADS={threads}, "
             f"{config['params'] / 1e6:.1f}M params, ZeRO {args.zero}; medians of {args.steps} steps after "
             f"{args.warmup}, "
             f"{args.long_steps} after {args.long_warmup} from L={args.long_from})")
    h.print_table(["seqLen", "ckpt", "ctxext s", "plain s", "ratio", "ctxext cpu s", "plain cpu s", "cpu ratio"],
                  [[r["seqLen"], r["checkpointing"], r["ctxextWallSeconds"], r["plainWallSeconds"], r["ratio"],
                    r["ctxextCpuSeconds"], r["plainCpuSeconds"], r["cpuRatio"]] for r in rows], title=title)
    h.print_table(["seqLen", "ckpt", "ctxext peak MiB", "plain peak MiB", "ctxext growth MiB", "plain growth MiB",
                   "growth ratio"],
                  [[r["seqLen"], r["checkpointing"], r["ctxextPeakMiB"], r["plainPeakMiB"], r["ctxextGrowthMiB"],
                    r["plainGrowthMiB"], r["growthRatio"]] for r in rows],
                  title="Peak RSS (whole process) and growth (training peak − RSS before the first step), MiB")
    h.print_table(["side", "ckpt", "lengths", "b"],
                  [[f["side"], f["checkpointing"], ",".join(map(str, f["lengths"])),
                    "-" if f["b"] is None else f"{f['b']:.2f}"] for f in fits],
                  title="Growth exponent b of growth ≈ a·L^b (least squares on log-log)")
    bad = [c for c in cells if c["status"] != "ok"]
    for c in bad:
        print(f"{c['side']} L={c['seqLen']} ckpt {c['checkpointing']}: {c['status']} {c.get('error', '')}")
    h.emit_json("trainer_step", {"config": config, "results": rows, "exponents": fits, "cells": cells,
                                 "loadavg1m": load, "wallSeconds": round(time.monotonic() - started, 1)},
                path=args.json_out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
