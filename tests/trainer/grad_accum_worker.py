"""Worker of test_grad_accumulation_dtype: run under torchrun with 2 processes (gloo, CPU, bf16).

For the ZeRO stage given and each accumulation mode, builds the trainer's own engine in bf16 (SGD,
no clipping) on the tiny model and feeds both ranks the same ``MICRO`` micro-batches (the same data
on both ranks keeps the bf16 cross-rank average exact, so only the accumulation can round):

* ``single``: one micro-batch per optimizer step at learning rate 0 — each micro-batch's own bf16
  gradient, exactly, summed by rank 0 in float64 (the fp32 reference: exact up to fp64);
* ``trainer``: ``MICRO`` micro-batches accumulated in one step with the trainer's DeepSpeed config;
* ``model-dtype``: the same without ``data_types`` (DeepSpeed's default: accumulate in bf16).

Rank 0 saves ``OUT/accum-z<stage>.pt``: {mode: {param: full gradient}} (the accumulated ones before
the boundary's update; the single-step ones summed and divided by ``MICRO``, as DeepSpeed scales) and,
for the accumulated modes, ``GUARD_NORM``: the health guard's global gradient norm at the boundary.

Usage: torchrun --nproc-per-node 2 grad_accum_worker.py MODEL_DIR OUT_DIR STAGE [STAGE ...]
(``$CTXEXT_GRAD_ACCUM_DEVICE=cuda``: the same on CUDA with nccl, one GPU per rank, for
``bench/gpu_check_grad_accum.py``.)
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import torch
import torch.distributed as dist
from deepspeed.utils import safe_get_full_grad

from ctxext.stage_config import StageConfig
from ctxext_trainer.distributed import close_distributed, init_distributed
from ctxext_trainer.engine import build_engine, deepspeed_config
from ctxext_trainer.grad_stats import engine_named_params, gradient_stats
from ctxext_trainer.loss import CausalLMTrainModule
from ctxext_trainer.model_loading import load_causal_lm

SEQ_LEN, THETA, MICRO = 64, 40000.0, 32
GUARD_NORM = "guard grad_norm"
DEVICE_ENV = "CTXEXT_GRAD_ACCUM_DEVICE"


def micro_batch(i: int, device: str = "cpu") -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(100 + i)
    tokens = torch.randint(4, 260, (1, SEQ_LEN + 1), generator=g)
    batch = {"input_ids": tokens[:, :-1], "labels": tokens[:, 1:], "position_ids": torch.arange(SEQ_LEN)[None]}
    return {k: v.to(device) for k, v in batch.items()}


def full_grads(engine: object, zero: int) -> dict[str, torch.Tensor]:
    return {name: safe_get_full_grad(p).detach().double().cpu().clone().reshape(p.ds_shape if zero == 3 else p.shape)
            for name, p in engine_named_params(engine)}


def run(model_dir: str, out_dir: str, zero: int, mode: str, device: str = "cpu") -> dict[str, torch.Tensor]:
    accumulation = 1 if mode == "single" else MICRO
    config = StageConfig(job="t", job_name="t", stage=1, total_stages=1, model_path=model_dir, output_dir=out_dir,
                         seq_len=SEQ_LEN, rope_theta=THETA, original_context_length=32, steps=1,
                         learning_rate=0.0 if mode == "single" else 0.1, device=device, zero_stage=zero,
                         gradient_accumulation=accumulation, activation_checkpointing=False)
    ds_config = deepspeed_config(config, gradient_clipping=0.0, bf16=True)
    if mode == "model-dtype":
        ds_config.pop("data_types", None)
    loaded = load_causal_lm(model_dir, theta=THETA, seq_len=SEQ_LEN, device=device, activation_checkpointing=False,
                            ds_config=ds_config)
    engine = build_engine(CausalLMTrainModule(loaded.model), config, ds_config, optimizer="sgd")
    engine.train()
    total: dict[str, torch.Tensor] = {}
    for i in range(MICRO):
        loss, _, _ = engine(**micro_batch(i, device))
        engine.backward(loss)
        if mode == "single":
            for name, g in full_grads(engine, zero).items():
                total[name] = total.get(name, torch.zeros_like(g)) + g / MICRO
        elif i == MICRO - 1:
            total = full_grads(engine, zero)
            # the guard's global norm, read where the train loop reads it (before the boundary's step)
            total[GUARD_NORM] = torch.tensor(gradient_stats(engine_named_params(engine), zero, dist.get_rank(),
                                                            dist.get_world_size()).grad_norm, dtype=torch.float64)
        engine.step()
    engine.destroy()
    return total


def main(model_dir: str, out_dir: str, stages: list[int]) -> None:
    device = os.environ.get(DEVICE_ENV, "cpu")
    topo = init_distributed(device, sp_size=1)
    try:
        for zero in stages:
            record = {mode: run(model_dir, out_dir, zero, mode, device)
                      for mode in ("single", "trainer", "model-dtype")}
            if topo.is_rank0:
                torch.save(record, Path(out_dir) / f"accum-z{zero}.pt")
    finally:
        close_distributed()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], [int(a) for a in sys.argv[3:]])
