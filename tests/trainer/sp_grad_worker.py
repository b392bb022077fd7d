"""Worker of test_sequence_parallel_gradients: run under torchrun with 2 or 4 processes.

For each ZeRO stage given, builds the trainer's own engine (sequence parallel = world size split as
Ulysses × ring with ring = RING, SGD, no clipping) on the tiny model (4 heads, 2 KV heads: Ulysses 4
replicates every KV head on two ranks), does one forward/backward on a fixed 64-token sequence cut
as the trainer cuts it (zigzag with a ring), and rank 0 saves the full gradients, the guard's
gradient norm and the sequence loss to ``OUT/grads-z<stage>.pt``.

Usage: torchrun --nproc-per-node N sp_grad_worker.py MODEL_DIR OUT_DIR RING 0 1 2 3
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import torch
from deepspeed.utils import safe_get_full_grad

from ctxext.stage_config import StageConfig
from ctxext_trainer.data.batches import Layout
from ctxext_trainer.distributed import all_reduce_sum, close_distributed, init_distributed
from ctxext_trainer.engine import build_engine, deepspeed_config
from ctxext_trainer.grad_stats import engine_named_params, gradient_stats
from ctxext_trainer.loss import CausalLMTrainModule, sequence_parallel_loss_scale
from ctxext_trainer.model_loading import load_causal_lm
from ctxext_trainer.sequence_parallel import setup_sequence_parallel

SEQ_LEN, THETA = 64, 40000.0


def fixed_sequence() -> tuple[list[int], list[int]]:
    g = torch.Generator().manual_seed(1234)
    tokens = torch.randint(4, 260, (SEQ_LEN + 1,), generator=g).tolist()
    labels = tokens[1:]
    labels[5] = -100  # an ignored label: the token count must be the global one
    return tokens[:-1], labels


def main(model_dir: str, out_dir: str, ring: int, stages: list[int]) -> None:
    topo = init_distributed("cpu", sp_size=int(os.environ["WORLD_SIZE"]), ring_size=ring)
    sp = None
    try:
        for zero in stages:
            config = StageConfig(job="t", job_name="t", stage=1, total_stages=1, model_path=model_dir,
                                 output_dir=out_dir, seq_len=SEQ_LEN, rope_theta=THETA, original_context_length=32,
                                 steps=1, learning_rate=0.1, device="cpu", zero_stage=zero,
                                 sequence_parallel=topo.sp_size, ring_degree=ring,
                                 activation_checkpointing=True)
            ds_config = deepspeed_config(config, gradient_clipping=0.0)
            loaded = load_causal_lm(model_dir, theta=THETA, seq_len=SEQ_LEN, device="cpu",
                                    activation_checkpointing=True, ds_config=ds_config)
            if sp is None:  # the groups (and DeepSpeed's Ulysses wrapper) once; each model attached
                sp = setup_sequence_parallel(loaded.model, topo, 1, loaded.attn_implementation)
            sp.attach(loaded.model)
            module = CausalLMTrainModule(loaded.model, sp_group=sp.sequence_group, chunk_tokens=16,
                                         loss_scale=sequence_parallel_loss_scale(zero, topo.sp_size, topo.ulysses_size))
            engine = build_engine(module, config, ds_config, mpu=sp.mpu, optimizer="sgd")
            engine.train()
            inputs, labels = fixed_sequence()
            layout = Layout(sp_rank=topo.sp_rank, sp_size=topo.sp_size, ring_size=ring)
            mine = [i for lo, hi in layout.ranges(SEQ_LEN) for i in range(lo, hi)]
            loss, _, _ = engine(input_ids=torch.tensor([[inputs[i] for i in mine]]),
                                labels=torch.tensor([[labels[i] for i in mine]]), position_ids=torch.tensor([mine]))
            engine.backward(loss)
            total_loss = all_reduce_sum(loss.detach() / module.loss_scale, sp.sequence_group)
            named = engine_named_params(engine)
            stats = gradient_stats(named, zero, topo.rank, topo.world_size)
            grads = {}
            for name, p in named:
                g = safe_get_full_grad(p)
                grads[name.removeprefix("lm.")] = g.detach().clone().reshape(p.ds_shape if zero == 3 else p.shape)
            if topo.is_rank0:
                record = {"grads": grads, "grad_norm": stats.grad_norm, "loss": float(total_loss)}
                torch.save(record, Path(out_dir) / f"grads-z{zero}.pt")
            engine.step()
            engine.destroy()
            del engine, module, loaded
    finally:
        close_distributed()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], int(sys.argv[3]), [int(s) for s in sys.argv[4:]])
