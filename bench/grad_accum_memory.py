"""Gradient memory of fp32 gradient accumulation under bf16 ZeRO 2 / 3 (the planner's
``FP32_GRAD_ACCUM_EXTRA_BYTES``), measured on CPU with DeepSpeed itself.

Per cell (ZeRO stage × accumulation dtype) one ``torchrun --nproc-per-node 2`` of this script in
``--worker`` mode builds the trainer's engine (``deepspeed_config(..., bf16=True)``, SGD) on a small
Llama (hidden 256, 4 layers, Ψ ≈ 4.07M), runs 3 accumulated micro-batches and one step, and after
each phase counts the bytes of every live tensor storage (deduplicated) by dtype. Bytes are given
per parameter, Ψ, of the whole model (W = 2 ranks). DeepSpeed's fixed-size buckets (ZeRO-3: a
reduce bucket of 5e8 bf16 elements, 1 GB) are not Ψ-proportional and show as a constant in the
bf16 column.

    OMP_NUM_THREADS=1 .venv/bin/python bench/grad_accum_memory.py      # ~2 min on 2 loaded cores
"""

from __future__ import annotations

import gc
import json
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import _harness as h

MICRO, SEQ_LEN, THETA = 3, 64, 40000.0


def _live_bytes() -> dict[str, int]:
    import torch

    seen: set[int] = set()
    by: dict[str, int] = {}
    for obj in gc.get_objects():
        try:
            if not torch.is_tensor(obj):
                continue
            storage = obj.untyped_storage()
        except Exception:  # fake/meta tensors have no storage
            continue
        if storage.data_ptr() in seen or storage.nbytes() == 0:
            continue
        seen.add(storage.data_ptr())
        by[str(obj.dtype).removeprefix("torch.")] = by.get(str(obj.dtype).removeprefix("torch."), 0) + storage.nbytes()
    return by


def worker(model_dir: str, zero: int, accum: str) -> None:
    import torch

    from ctxext.stage_config import StageConfig
    from ctxext_trainer.distributed import close_distributed, init_distributed
    from ctxext_trainer.engine import build_engine, deepspeed_config
    from ctxext_trainer.loss import CausalLMTrainModule
    from ctxext_trainer.model_loading import load_causal_lm

    topo = init_distributed("cpu", sp_size=1)
    config = StageConfig(job="b", job_name="b", stage=1, total_stages=1, model_path=model_dir,
                         output_dir=tempfile.mkdtemp(), seq_len=SEQ_LEN, rope_theta=THETA,
                         original_context_length=32, steps=1, learning_rate=0.1, device="cpu", zero_stage=zero,
                         gradient_accumulation=MICRO, activation_checkpointing=False)
    ds = deepspeed_config(config, gradient_clipping=0.0, bf16=True)
    if accum == "bf16":
        ds.pop("data_types", None)
    model = load_causal_lm(model_dir, theta=THETA, seq_len=SEQ_LEN, device="cpu", activation_checkpointing=False,
                           ds_config=ds).model
    engine = build_engine(CausalLMTrainModule(model), config, ds, optimizer="sgd")
    params = sum(int(getattr(p, "ds_numel", p.numel())) for p in engine.module.parameters())
    phases: dict[str, dict[str, int]] = {"built": _live_bytes()}
    for i in range(MICRO):
        tokens = torch.randint(4, 260, (1, SEQ_LEN + 1), generator=torch.Generator().manual_seed(i))
        loss, _, _ = engine(input_ids=tokens[:, :-1], labels=tokens[:, 1:], position_ids=torch.arange(SEQ_LEN)[None])
        engine.backward(loss)
        phases[f"backward {i + 1}"] = _live_bytes()
        engine.step()
    phases["stepped"] = _live_bytes()
    if topo.is_rank0:
        print("RESULT " + json.dumps({"params": params, "phases": phases}), flush=True)
    close_distributed()


def make_model(directory: Path) -> Path:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from ctxext_trainer.tokenizer import ByteTokenizer

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=260, hidden_size=256, intermediate_size=1024, num_hidden_layers=4,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
                         rope_parameters={"rope_type": "default", "rope_theta": 10000.0}, tie_word_embeddings=False,
                         bos_token_id=1, eos_token_id=2, pad_token_id=0)
    LlamaForCausalLM(config).save_pretrained(str(directory))
    ByteTokenizer().save(directory)
    return directory


def main() -> None:
    if sys.argv[1:2] == ["--worker"]:
        worker(sys.argv[2], int(sys.argv[3]), sys.argv[4])
        return
    from ctxext.memory import FP32_GRAD_ACCUM_EXTRA_BYTES

    model = make_model(Path(tempfile.mkdtemp()) / "model")
    cells: dict[str, Any] = {}
    rows = []
    for zero in (2, 3):
        for accum in ("bf16", "fp32"):
            proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone",
                                   "--nproc-per-node=2", __file__, "--worker", str(model), str(zero), accum],
                                  capture_output=True, text=True, check=True)
            result = json.loads(next(line for line in proc.stdout.splitlines() if line.startswith("RESULT "))[7:])
            cells[f"z{zero}-{accum}"] = result
            psi = result["params"]
            for phase, by in result["phases"].items():
                rows.append([zero, accum, phase, by.get("float32", 0) / psi, by.get("bfloat16", 0) / psi])
    h.print_table(["zero", "accum", "phase", "fp32 B/Ψ", "bf16 B/Ψ"], rows,
                  title="live tensor bytes per parameter, rank 0 of 2")
    extra = {z: (cells[f"z{z}-fp32"]["phases"]["backward 1"]["float32"]
                 + cells[f"z{z}-fp32"]["phases"]["backward 1"].get("bfloat16", 0)
                 - cells[f"z{z}-bf16"]["phases"]["backward 1"]["float32"]
                 - cells[f"z{z}-bf16"]["phases"]["backward 1"].get("bfloat16", 0)) * 2 / cells[f"z{z}-fp32"]["params"]
             for z in (2, 3)}
    print("\nextra bytes per parameter before ZeRO's division by W=2 (measured vs planner):")
    for z, value in extra.items():
        print(f"  ZeRO-{z}: {value:.2f} vs {FP32_GRAD_ACCUM_EXTRA_BYTES[z]}")
    h.emit_json("grad_accum_memory", {"cells": cells, "extra_bytes_per_param": extra,
                                      "planner": FP32_GRAD_ACCUM_EXTRA_BYTES})


if __name__ == "__main__":
    main()
