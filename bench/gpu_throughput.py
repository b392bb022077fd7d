"""GPU throughput: tokens/s and MFU of one trainer stage vs a plain transformers loop, ~1B Llama, 16K-64K tokens.

Needs one CUDA GPU (H100 or H200: about 4 minutes). Without CUDA it stops at once with exit code 2
and says so (``--smoke-cpu`` instead runs the same plumbing on a tiny model on CPU, no MFU).

The model: random weights in the Llama-3.2-1B shape (16 layers, hidden 2048, MLP 8192, 32 heads,
8 KV heads, vocabulary 128,256, tied embeddings: 1.24B parameters), saved once as bf16
safetensors with the byte tokenizer (token ids < 256; only the shapes matter for speed).

* **trainer stage**: the real entry point, ``python -m torch.distributed.run --standalone
  --nproc-per-node 1 -m ctxext_trainer --stage-config FILE`` (torchrun of *this* interpreter), one
  process per length: DeepSpeed ZeRO-3, bf16 with fp32 master weights, torch AdamW (no DeepSpeed
  op is built), activation checkpointing, flash_attention_2 when ``flash_attn`` is installed else
  sdpa, chunked LM head + CE, health guard and metrics; evaluation off. Step times and the peak
  CUDA memory come from its ``train_log.jsonl``. The stage also saves its final checkpoint and
  exports the model (not timed; the output directory is deleted after each length).
* **plain loop**: the same model with transformers only, in a fresh process per length: bf16
  weights, ``model(input_ids, labels=input_ids).loss``, ``loss.backward()``, fused torch AdamW,
  ``gradient_checkpointing_enable()``, the same attention implementation. An out-of-memory step
  is reported as OOM (HF materialises the full fp32 logits: 64K × 128K × 4 B = 32 GiB).

Every cell (one length of one run) is its own process with its own timeout, so an OOM, a crash
or a hang in one is reported and the others still run. Cells run shortest length first, trainer
then plain. ``--budget-seconds`` bounds the whole run: a cell that would start after it is
reported as skipped, a running one is cut at it; results always come out, and ``--json-out``
is rewritten after every cell, so a run killed from outside still leaves the finished cells.

Per length, ``--warmup`` steps are dropped and the median of the remaining ``--steps`` is used.
MFU = tokens/s × model FLOPs per token / the card's dense bf16 peak, with FLOPs per token
= 6·N + 6·L·h·T: N the parameters in matrix multiplies (all but the input embedding, plus the
LM head), L layers, h = heads × head_dim, T the sequence length (causal attention counts half
of the T² scores); activation-checkpointing recomputation is not counted (that would be HFU).

    .venv/bin/python bench/gpu_throughput.py                         # 16K, 32K, 64K
    .venv/bin/python bench/gpu_throughput.py --lengths 16384 --steps 3
    .venv/bin/python bench/gpu_throughput.py --smoke-cpu --lengths 256,512 --steps 2
    bash bench/gpu_device_run.sh          # on a bare GPU machine without deepspeed/pydantic (see there)
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any

import _harness as h
from gpu_variants import VARIANTS, Variant, checkpointed_layers, parse_variants

ROOT = Path(__file__).resolve().parents[1]
#: The two import packages' source roots (pyproject: packages under operator/ and trainer_image/);
#: put on sys.path and on the children's PYTHONPATH so that nothing needs ``pip install -e .``.
SOURCE_DIRS = (ROOT / "operator", ROOT / "trainer_image")
for _dir in reversed(SOURCE_DIRS):
    if str(_dir) not in sys.path:
        sys.path.insert(0, str(_dir))

#: Dense (no sparsity) bf16 tensor-core peak, TFLOPS, from NVIDIA's data sheets; matched in order.
PEAK_BF16_TFLOPS: tuple[tuple[str, float], ...] = (
    ("H200 NVL", 835.0),
    ("H200", 989.0),
    ("H100 PCIe", 756.0),
    ("H100 NVL", 835.0),
    ("H100", 989.0),  # H100 SXM5 ("NVIDIA H100 80GB HBM3")
)
ONE_B_SHAPE: dict[str, Any] = {"hidden_size": 2048, "intermediate_size": 8192, "num_hidden_layers": 16,
                               "num_attention_heads": 32, "num_key_value_heads": 8, "vocab_size": 128256,
                               "tie_word_embeddings": True}
TINY_SHAPE: dict[str, Any] = {"hidden_size": 128, "intermediate_size": 512, "num_hidden_layers": 4,
                              "num_attention_heads": 4, "num_key_value_heads": 4, "vocab_size": 260,
                              "tie_word_embeddings": True}
#: A cell is not started with less than this many seconds of the budget left.
MIN_CELL_SECONDS = 20.0
GIB = 1024**3


def peak_tflops(device_name: str) -> float | None:
    """Dense bf16 peak of a card by its CUDA name; None when unknown (pass --peak-tflops).

    >>> peak_tflops("NVIDIA H100 80GB HBM3"), peak_tflops("NVIDIA H200"), peak_tflops("NVIDIA A10G")
    (989.0, 989.0, None)
    """
    for key, value in PEAK_BF16_TFLOPS:
        if key.lower() in device_name.lower():
            return value
    return None


def param_counts(shape: dict[str, Any]) -> tuple[int, int]:
    """(all parameters, parameters in matrix multiplies) of a Llama shape.

    The matmul count leaves out the input embedding (a lookup) and adds the LM head, which is a
    matmul whether or not its weight is tied to the embedding.

    >>> param_counts(ONE_B_SHAPE)
    (1235814400, 1235814400)
    """
    h, i, layers, v = (shape["hidden_size"], shape["intermediate_size"], shape["num_hidden_layers"],
                       shape["vocab_size"])
    d = h // shape["num_attention_heads"]
    kv = shape["num_key_value_heads"] * d
    per_layer = h * h + 2 * h * kv + h * h + 3 * h * i + 2 * h
    embed = v * h
    total = layers * per_layer + h + embed * (1 if shape["tie_word_embeddings"] else 2)
    matmul = layers * per_layer + h + v * h
    return total, matmul


def flops_per_token(shape: dict[str, Any], seq_len: int) -> float:
    """Training FLOPs per token (forward + backward, no recomputation): 6·N_matmul + 6·L·h·T (causal).

    >>> round(flops_per_token(ONE_B_SHAPE, 65536) / 1e9, 2)
    20.3
    """
    _, matmul = param_counts(shape)
    return 6.0 * matmul + 6.0 * shape["num_hidden_layers"] * shape["hidden_size"] * seq_len


def cell_timeout(limit: float, deadline: float | None, now: float) -> float | None:
    """Seconds a cell may run: its own limit, cut at the budget's deadline; None = skip it (too
    little budget left to be worth starting).

    >>> cell_timeout(240, None, 0), cell_timeout(240, 100, 10), cell_timeout(240, 100, 90)
    (240, 90, None)
    """
    if deadline is None:
        return limit
    left = deadline - now
    return min(limit, left) if left >= MIN_CELL_SECONDS else None


def child_env(device: str) -> dict[str, str]:
    """Environment of the cell processes: our source roots on PYTHONPATH, offline, no DeepSpeed op builds."""
    env = dict(os.environ)
    path = [str(d) for d in SOURCE_DIRS] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
    env["PYTHONPATH"] = os.pathsep.join(dict.fromkeys(path))
    env.setdefault("OMP_NUM_THREADS", "1")
    env.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", TOKENIZERS_PARALLELISM="false",
               PYTHONUNBUFFERED="1")
    # DeepSpeed: no JIT op build (we pass torch AdamW), no CUDA-toolkit version check, fixed accelerator.
    env.setdefault("DS_BUILD_OPS", "0")
    env.setdefault("DS_SKIP_CUDA_CHECK", "1")
    env.setdefault("DS_ACCELERATOR", device)
    return env


def _kill_tree(pid: int) -> None:
    """SIGKILL a process and all its descendants (torchrun starts its workers in new sessions, so a
    process-group kill would leave them holding the GPU)."""
    try:
        import psutil

        try:
            root = psutil.Process(pid)
            procs = [*root.children(recursive=True), root]
        except psutil.NoSuchProcess:
            return
        for p in procs:
            with contextlib.suppress(psutil.Error):
                p.kill()
        psutil.wait_procs(procs, timeout=30)
    except ImportError:
        with contextlib.suppress(OSError):
            os.killpg(pid, signal.SIGKILL)


def run_cell(cmd: list[str], log_path: Path, timeout: float, device: str,
             extra_env: dict[str, str] | None = None) -> dict[str, Any]:
    """Run one cell process, output to ``log_path``; {exit_code, wall_seconds[, timed_out]}."""
    t0 = time.monotonic()
    with log_path.open("w") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=str(ROOT),
                                env={**child_env(device), **(extra_env or {})},
                                start_new_session=True)
        try:
            code = proc.wait(timeout=timeout)
            timed_out = False
        except subprocess.TimeoutExpired:
            _kill_tree(proc.pid)
            code = proc.wait()
            timed_out = True
    out: dict[str, Any] = {"exit_code": code, "wall_seconds": time.monotonic() - t0}
    if timed_out:
        out["timed_out"] = True
    return out


def _tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


def make_model(shape: dict[str, Any], directory: Path, device: str) -> Path:
    """Random Llama of ``shape`` saved (bf16 on CUDA, fp32 on CPU) with the byte tokenizer."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from ctxext_trainer.tokenizer import ByteTokenizer

    tok = ByteTokenizer()
    config = LlamaConfig(**shape, max_position_embeddings=8192,
                         rope_parameters={"rope_type": "default", "rope_theta": 500000.0},
                         bos_token_id=tok.bos_id, eos_token_id=tok.eos_id, pad_token_id=tok.pad_id)
    torch.manual_seed(0)
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    with torch.device(device):
        model: Any = LlamaForCausalLM(config)
    model = model.to(dtype)
    model.save_pretrained(str(directory), safe_serialization=True)
    tok.save(directory)
    return directory


def trainer_records(out: Path) -> list[dict[str, Any]]:
    """The stage's ``train_log.jsonl`` records (a torn last line is dropped)."""
    log = out / "train_log.jsonl"
    records = []
    if log.is_file():
        for line in log.read_text().splitlines():
            with contextlib.suppress(json.JSONDecodeError):
                records.append(json.loads(line))
    return records


def trainer_stage(model_dir: Path, workdir: Path, logs: Path, seq_len: int, steps: int, device: str,
                  timeout: float, variant: Variant = VARIANTS["default"], shape: dict[str, Any] | None = None,
                  memory_gib: float | None = None) -> dict[str, Any]:
    """One stage through torchrun + ``-m ctxext_trainer`` (one :mod:`gpu_variants` variant); step seconds
    and peak memory from its train_log.jsonl, what it ran with from its result.json."""
    from ctxext.api.spec import EvaluationSpec
    from ctxext.stage_config import StageConfig

    layers = checkpointed_layers(shape or ONE_B_SHAPE, seq_len, memory_gib, variant)
    out = workdir / f"stage-{variant.name}-{seq_len}"
    config = StageConfig(job="bench", job_name="bench-s1-a1", stage=1, total_stages=1, model_path=str(model_dir),
                         output_dir=str(out), seq_len=seq_len, rope_theta=8.0e6, original_context_length=8192,
                         steps=steps, learning_rate=1e-5, warmup_steps=0, lr_schedule="constant",
                         batch_size=1, gradient_accumulation=1, sequence_parallel=1, zero_stage=3,
                         activation_checkpointing=True, checkpointed_layers=layers, device=device,
                         evaluation=EvaluationSpec(enabled=False), checkpoint_interval=10**6, keep_checkpoints=1,
                         metrics_port=0)
    config_file = workdir / f"stage-{variant.name}-{seq_len}.json"
    config_file.write_text(config.dumps())
    log_path = logs / f"trainer-{variant.name}-{seq_len}.log"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=1",
           "-m", "ctxext_trainer", "--stage-config", str(config_file)]
    result = run_cell(cmd, log_path, timeout, device, extra_env=variant.env)
    result.update(variant=variant.name, checkpointed_layers=layers)
    with contextlib.suppress(OSError, json.JSONDecodeError):
        result["runtime"] = json.loads((out / "result.json").read_text()).get("runtime")
    records = trainer_records(out)
    result["step_seconds"] = [r["seconds"] for r in records]
    result["seq_lens"] = sorted({int(r.get("seqLen", seq_len)) for r in records})
    peaks = [r["maxMemoryAllocated"] for r in records if r.get("maxMemoryAllocated") is not None]
    if peaks:
        result["peak_gib"] = max(peaks) / GIB
    if result.get("timed_out"):
        result["error"] = f"timed out after {result['wall_seconds']:.0f}s; {len(records)} steps logged\n" + _tail(
            log_path)
    elif result["exit_code"] != 0 or not records:
        result["error"] = f"exit code {result['exit_code']}, {len(records)} steps logged\n" + _tail(log_path)
    shutil.rmtree(out, ignore_errors=True)  # the final ZeRO-3 checkpoint of a 1B model is ~17 GB
    return result


def plain_stage(model_dir: Path, workdir: Path, logs: Path, seq_len: int, steps: int, device: str,
                timeout: float) -> dict[str, Any]:
    """One length of the plain loop in a fresh process (``--plain-worker``); {step_seconds, peak_gib | error}."""
    cell_out = workdir / f"plain-{seq_len}.json"
    log_path = logs / f"plain-{seq_len}.log"
    cmd = [sys.executable, str(Path(__file__).resolve()), "--plain-worker", "--model-dir", str(model_dir),
           "--lengths", str(seq_len), "--steps", str(steps), "--warmup", "0", "--cell-out", str(cell_out)]
    if device == "cpu":
        cmd.append("--smoke-cpu")
    result = run_cell(cmd, log_path, timeout, device)
    data: dict[str, Any] = {}
    with contextlib.suppress(OSError, json.JSONDecodeError):
        data = json.loads(cell_out.read_text())
    result.update(data)
    result.setdefault("step_seconds", [])
    if result.get("timed_out"):
        result["error"] = (f"timed out after {result['wall_seconds']:.0f}s; {len(result['step_seconds'])} steps "
                           "done\n" + _tail(log_path))
    elif (result["exit_code"] != 0 or not data) and not result.get("error"):
        result["error"] = f"exit code {result['exit_code']}\n" + _tail(log_path)
    return result


def plain_worker(model_dir: Path, seq_len: int, steps: int, device: str, cell_out: Path) -> int:
    """The plain loop's body (``--plain-worker``): transformers + torch AdamW only, one length.

    Writes ``cell_out`` after every step, so a cell killed at its timeout still reports the steps it did.
    """
    result: dict[str, Any] = {"step_seconds": []}

    def save() -> None:
        tmp = cell_out.with_suffix(".tmp")
        tmp.write_text(json.dumps(result))
        tmp.replace(cell_out)

    import torch

    def note_peak() -> None:
        if device == "cuda":
            result["peak_gib"] = torch.cuda.max_memory_allocated() / GIB

    try:
        from transformers import AutoModelForCausalLM

        from ctxext_trainer.model_loading import attention_implementation

        dtype = torch.bfloat16 if device == "cuda" else torch.float32
        model: Any = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=dtype,
                                                          attn_implementation=attention_implementation(device))
        model = model.to(device)
        result["attn_implementation"] = getattr(model.config, "_attn_implementation", None)
        model.config.use_cache = False
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.train()
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5, betas=(0.9, 0.95), weight_decay=0.0,
                                      fused=device == "cuda")
        save()
        for _ in range(steps):
            ids = torch.randint(0, 256, (1, seq_len), device=device)
            if device == "cuda":
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            loss = model(input_ids=ids, labels=ids).loss
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            if device == "cuda":
                torch.cuda.synchronize()
            result["step_seconds"].append(time.perf_counter() - t0)
            del loss, ids
            note_peak()
            save()
    except torch.cuda.OutOfMemoryError as exc:
        result["error"] = f"OOM: {str(exc).splitlines()[0]}"
    except Exception as exc:
        result["error"] = f"{type(exc).__name__}: {exc}\n" + "".join(traceback.format_exc().splitlines(True)[-8:])
    note_peak()
    save()
    return 0 if "error" not in result else 1


def _scratch() -> str | None:
    """/dev/shm when it has room for the model and one stage's final ZeRO-3 checkpoint (~20 GB for 1B
    parameters), so that writing them costs seconds, not minutes; else the default temp dir."""
    shm = Path("/dev/shm")
    try:
        return str(shm) if shm.is_dir() and shutil.disk_usage(shm).free > 40 * GIB else None
    except OSError:
        return None


def figures(step_seconds: list[float], warmup: int, seq_len: int, shape: dict[str, Any],
            peak: float | None) -> dict[str, Any]:
    """Median step time after warm-up → tokens/s, achieved TFLOPS and MFU (batch 1, one GPU).

    >>> f = figures([9.0, 2.0, 2.0], 1, 1000, TINY_SHAPE, None)
    >>> f["tokens_per_second"], f["steps_timed"], f["mfu"]
    (500.0, 2, None)
    >>> figures([9.0], 1, 1000, TINY_SHAPE, None)
    {}
    """
    timed = step_seconds[warmup:]
    if not timed:
        return {}
    step = statistics.median(timed)
    tps = seq_len / step
    tflops = tps * flops_per_token(shape, seq_len) / 1e12
    return {"step_seconds_median": step, "tokens_per_second": tps, "model_tflops": tflops,
            "mfu": tflops / peak if peak else None, "steps_timed": len(timed)}


def versions() -> dict[str, str | None]:
    """Versions of the libraries the figures depend on (None: not importable)."""
    import importlib.metadata as md

    out: dict[str, str | None] = {}
    for dist in ("torch", "transformers", "deepspeed", "flash_attn", "pydantic", "accelerate"):
        try:
            out[dist] = md.version(dist)
        except md.PackageNotFoundError:
            out[dist] = None
    return out


def summarize(seq_len: int, trainers: dict[str, dict[str, Any]], plain: dict[str, Any], warmup: int,
              shape: dict[str, Any], peak: float | None) -> dict[str, Any]:
    """One length's cell: each trainer variant's and the plain loop's figures, and their tokens/s ratios.

    ``trainer`` is the first variant (``default`` unless ``--variants`` says otherwise)."""
    p = {**plain, **figures(plain.get("step_seconds", []), warmup, seq_len, shape, peak)}
    variants = {}
    for name, r in trainers.items():
        f = {**r, **figures(r.get("step_seconds", []), warmup, seq_len, shape, peak)}
        f["over_plain_tokens_per_second"] = h.ratio(f.get("tokens_per_second"), p.get("tokens_per_second"))
        variants[name] = f
    first = next(iter(variants.values()), {})
    return {"seq_len": seq_len, "trainer": first, "plain": p, "variants": variants,
            "trainer_over_plain_tokens_per_second": first.get("over_plain_tokens_per_second")}


def _status(r: dict[str, Any]) -> str:
    if r.get("skipped"):
        return "skipped"
    if r.get("timed_out"):
        return "timeout"
    if r.get("error"):
        return "OOM" if str(r["error"]).startswith("OOM") else "error"
    return "ok"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--lengths", default="16384,32768,65536")
    parser.add_argument("--steps", type=int, default=3, help="timed steps per length (after --warmup)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed first steps per length")
    parser.add_argument("--peak-tflops", type=float, help="dense bf16 peak of the card (default: from its name)")
    parser.add_argument("--workdir", help="where the model and stage outputs go (default: a temp dir in /dev/shm "
                        "if it has 40 GiB free, else in $TMPDIR)")
    parser.add_argument("--timeout", type=float, default=240.0, help="seconds per trainer stage")
    parser.add_argument("--plain-timeout", type=float, default=150.0, help="seconds per plain-loop length")
    parser.add_argument("--budget-seconds", type=float,
                        help="whole-run budget: cells that would start later are skipped, a running one is cut "
                        "(default: none)")
    parser.add_argument("--log-dir", help="keep each cell's full output here (default: the work dir, deleted)")
    parser.add_argument("--json-out", help="also write the JSON result line here (rewritten after every cell)")
    parser.add_argument("--variants", default="default",
                        help="trainer variants to run per length, in order (bench/gpu_variants.py): "
                        "default, zero3 (the pre-#16 behaviour), cudnn, fullckpt")
    parser.add_argument("--skip-plain", action="store_true", help="trainer variants only (no plain-loop cells)")
    parser.add_argument("--smoke-cpu", action="store_true",
                        help="check the plumbing on CPU: tiny model, no MFU (use --lengths 256)")
    parser.add_argument("--plain-worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--model-dir", help=argparse.SUPPRESS)
    parser.add_argument("--cell-out", help=argparse.SUPPRESS)
    args = parser.parse_args()
    started = time.monotonic()
    deadline = started + args.budget_seconds if args.budget_seconds else None
    device = "cpu" if args.smoke_cpu else "cuda"
    lengths = [int(x) for x in args.lengths.split(",")]
    if args.plain_worker:
        return plain_worker(Path(args.model_dir), lengths[0], args.steps, device, Path(args.cell_out))

    import torch

    shape = TINY_SHAPE if args.smoke_cpu else ONE_B_SHAPE
    json_out = Path(args.json_out) if args.json_out else None
    if device == "cuda" and not torch.cuda.is_available():
        message = (f"bench/gpu_throughput.py needs a CUDA GPU, and torch {torch.__version__} sees none "
                   f"(torch.cuda.is_available() is False). Run it on an H100/H200 machine; "
                   "--smoke-cpu checks the plumbing on CPU.")
        print(f"error: {message}", file=sys.stderr)
        h.emit_json("gpu_throughput", {"error": message}, path=json_out)
        return 2
    from ctxext_trainer.model_loading import attention_implementation

    name = torch.cuda.get_device_name(0) if device == "cuda" else "cpu"
    memory_gib = torch.cuda.get_device_properties(0).total_memory / GIB if device == "cuda" else None
    peak = args.peak_tflops or (peak_tflops(name) if device == "cuda" else None)
    attn = attention_implementation(device)
    libs = versions()
    print(f"gpu_throughput: device {name!r}" + (f" ({memory_gib:.0f} GiB)" if memory_gib else "")
          + f", dense bf16 peak for MFU: {peak or '?'} TFLOPS, attention: {attn}, "
          + ", ".join(f"{k} {v}" for k, v in libs.items()), file=sys.stderr, flush=True)
    if device == "cuda" and peak is None:
        print(f"warning: dense bf16 peak of {name!r} unknown; MFU not computed (pass --peak-tflops)", file=sys.stderr)
    steps = args.warmup + args.steps
    tmp = Path(args.workdir) if args.workdir else Path(tempfile.mkdtemp(prefix="ctxext-bench-gpu-", dir=_scratch()))
    tmp.mkdir(parents=True, exist_ok=True)
    logs = Path(args.log_dir) if args.log_dir else tmp
    logs.mkdir(parents=True, exist_ok=True)
    variants = parse_variants(args.variants)
    trainer: dict[int, dict[str, dict[str, Any]]] = {n: {v.name: {"skipped": "not reached"} for v in variants}
                                                     for n in lengths}
    plain: dict[int, dict[str, Any]] = {n: {"skipped": "--skip-plain" if args.skip_plain else "not reached"}
                                        for n in lengths}
    fatal: str | None = None

    def payload(final: bool) -> dict[str, Any]:
        cells = [summarize(n, trainer[n], plain[n], args.warmup, shape, peak) for n in lengths]
        return {"device": name, "device_memory_gib": memory_gib, "peak_tflops": peak, "attn_implementation": attn,
                "versions": libs, "shape": shape, "parameters": param_counts(shape)[0], "warmup": args.warmup,
                "steps": args.steps, "budget_seconds": args.budget_seconds, "complete": final,
                "variants": [v.name for v in variants],
                "error": fatal, "wall_seconds": time.monotonic() - started, "cells": cells}

    def checkpoint_json() -> None:
        if json_out is not None:
            h.write_json(json_out, "gpu_throughput", payload(final=False))

    def stamp(text: str) -> None:
        print(f"[{time.monotonic() - started:.0f}s] {text}", file=sys.stderr, flush=True)

    try:
        model_dir = tmp / "model"
        make_model(shape, model_dir, device)
        if device == "cuda":
            torch.cuda.empty_cache()
        stamp(f"model saved ({param_counts(shape)[0] / 1e9:.3f}B params) in {tmp}")
        for seq_len in lengths:
            cells: list[tuple[str, Any, float, dict[str, dict[str, Any]], str]] = [
                (f"trainer {v.name}", functools.partial(trainer_stage, variant=v, shape=shape, memory_gib=memory_gib),
                 args.timeout, trainer[seq_len], v.name) for v in variants]
            if not args.skip_plain:
                cells.append(("plain loop", plain_stage, args.plain_timeout, plain, seq_len))
            for label, runner, limit, table, key in cells:
                timeout = cell_timeout(limit, deadline, time.monotonic())
                if timeout is None:
                    table[key] = {"skipped": "budget", "step_seconds": []}
                    stamp(f"{label} {seq_len}: skipped (budget of {args.budget_seconds:.0f}s spent)")
                    continue
                try:
                    table[key] = runner(model_dir, tmp, logs, seq_len, steps, device, timeout)
                except Exception as exc:  # the bench's own plumbing; the cell itself runs in a child
                    table[key] = {"error": f"{type(exc).__name__}: {exc}", "step_seconds": []}
                r = table[key]
                fig = figures(r.get("step_seconds", []), args.warmup, seq_len, shape, peak)
                tps = f"{fig['tokens_per_second']:,.0f} tok/s" if fig else "no timed step"
                mem = f", peak {r['peak_gib']:.1f} GiB" if r.get("peak_gib") is not None else ""
                stamp(f"{label} {seq_len}: {_status(r)}, {tps}{mem}, wall {r.get('wall_seconds', 0):.0f}s"
                      + (f", runtime {r['runtime']}" if r.get("runtime") else "")
                      + (f"\n{r['error']}" if r.get("error") else ""))
                checkpoint_json()
    except Exception as exc:  # e.g. the model could not be made: still report what there is
        fatal = f"{type(exc).__name__}: {exc}"
        traceback.print_exc()
    finally:
        if not args.workdir:
            shutil.rmtree(tmp, ignore_errors=True)

    result = payload(final=True)
    rows: list[list[Any]] = []
    for c in result["cells"]:
        p = c["plain"]
        for vname, t in c["variants"].items():
            pct = [100 * r["mfu"] if r.get("mfu") is not None else None for r in (t, p)]
            rows.append([c["seq_len"], vname, t.get("tokens_per_second"), pct[0], t.get("peak_gib"),
                         p.get("tokens_per_second"), pct[1], p.get("peak_gib"), t.get("over_plain_tokens_per_second"),
                         f"{_status(t)}/{_status(p)}"])
    h.print_table(["seqLen", "variant", "trainer tok/s", "MFU %", "peak GiB", "plain tok/s", "MFU %", "peak GiB",
                   "trainer/plain", "trainer/plain status"], rows,
                  title=f"gpu_throughput: {param_counts(shape)[0] / 1e9:.2f}B Llama, {name}, batch 1, attention "
                        f"{attn}, peak {peak or '?'} TFLOPS bf16 (MFU), median of {args.steps} steps after "
                        f"{args.warmup} warm-up")
    for c in result["cells"]:
        for run, r in [*c["variants"].items(), ("plain", c["plain"])]:
            if r.get("error"):
                print(f"{c['seq_len']} {run}: {r['error']}", file=sys.stderr)
    h.emit_json("gpu_throughput", result, path=json_out)
    ran = [*(c["variants"].values() for c in result["cells"])]
    ok = fatal is None and all(_status(r) == "ok" for group in ran for r in group) and (
        args.skip_plain or all(_status(c["plain"]) == "ok" for c in result["cells"]))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
