"""DeepSpeed engine: the config dict (pure), the learning-rate schedule (pure) and initialisation.

A torch optimizer (AdamW, or SGD for the gradient-equality tests) is passed to
``deepspeed.initialize`` so DeepSpeed compiles no C++ extension. Gradient clipping is left to
DeepSpeed (``gradient_clipping``); the health guard checks the gradients before every step.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch.optim.lr_scheduler import LambdaLR

from ctxext.stage_config import StageConfig

GRADIENT_CLIPPING = 1.0


#: ZeRO stages whose optimizer takes ``data_types.grad_accum_dtype`` (DeepSpeed 0.19: stage 2's
#: fp32 gradient partition, stage 3's ``grad_partitions_flat_buffer``). Without it they accumulate the
#: micro-batches' gradients in the model dtype: a bf16 sum of 32 micro-batches is off by about 0.5%.
#: ZeRO-0 rejects the key under bf16 (``unsupported mix``); stage 1 with it switches to DeepSpeed's
#: separate bf16 optimizer, whose sum of the same 32 micro-batches is still off by 1.7e-3 (bf16:
#: 5.8e-3, ZeRO 2/3 with fp32: 2.4e-9; tests/trainer/grad_accum_worker.py on 2 gloo ranks): both keep
#: the model dtype.
FP32_ACCUMULATION_STAGES = (2, 3)


def deepspeed_config(config: StageConfig, *, gradient_clipping: float = GRADIENT_CLIPPING,
                     bf16: bool | None = None) -> dict[str, Any]:
    """The DeepSpeed JSON config of a stage (``bf16``: default on CUDA only; the tests turn it on on CPU).

    Under bf16 at ZeRO 2–3 gradients accumulate over the micro-batches in fp32
    (``data_types.grad_accum_dtype``, :data:`FP32_ACCUMULATION_STAGES`); the reduction of each
    micro-batch's gradient across ranks stays in bf16 (``communication_data_type``), whose rounding
    does not grow with the number of micro-batches.

    >>> from ctxext.stage_config import StageConfig
    >>> c = StageConfig(job="j", job_name="j-s1-a1", stage=1, total_stages=1, model_path="/m", output_dir="/o",
    ...                 seq_len=256, rope_theta=1e4, original_context_length=128, steps=2, learning_rate=1e-3,
    ...                 device="cpu", zero_stage=2, gradient_accumulation=4)
    >>> d = deepspeed_config(c)
    >>> d["zero_optimization"]["stage"], d["gradient_accumulation_steps"], d["bf16"]["enabled"], "data_types" in d
    (2, 4, False, False)
    >>> deepspeed_config(c.model_copy(update={"device": "cuda"}))["data_types"]
    {'grad_accum_dtype': 'fp32'}
    """
    bf16 = config.device == "cuda" if bf16 is None else bf16
    zero: dict[str, Any] = {"stage": config.zero_stage}
    if config.zero_stage == 3:
        # reduce_scatter pinned: its gradient averaging is what loss.sequence_parallel_loss_scale assumes
        zero.update(stage3_gather_16bit_weights_on_model_save=True, contiguous_gradients=True, reduce_scatter=True,
                    overlap_comm=config.device == "cuda")
    elif config.zero_stage in (1, 2):
        zero.update(contiguous_gradients=True, overlap_comm=config.device == "cuda")
    return {
        "train_micro_batch_size_per_gpu": config.batch_size,
        "gradient_accumulation_steps": config.gradient_accumulation,
        "gradient_clipping": gradient_clipping,
        "zero_optimization": zero,
        "bf16": {"enabled": bf16},
        **({"data_types": {"grad_accum_dtype": "fp32"}} if bf16 and config.zero_stage in FP32_ACCUMULATION_STAGES
           else {}),
        "zero_allow_untested_optimizer": True,
        "steps_per_print": 1_000_000_000,
        "wall_clock_breakdown": False,
        "dump_state": False,
    }


def lr_factor(step: int, *, steps: int, warmup: int, schedule: str, min_ratio: float) -> float:
    """Learning-rate multiplier at optimizer step ``step`` (0-based).

    Linear warm-up over ``warmup`` steps, then constant, or cosine / linear decay to ``min_ratio``.

    >>> [round(lr_factor(s, steps=10, warmup=2, schedule="cosine", min_ratio=0.1), 3) for s in (0, 1, 2, 9)]
    [0.5, 1.0, 1.0, 0.134]
    """
    if warmup and step < warmup:
        return (step + 1) / warmup
    if schedule == "constant" or steps <= warmup + 1:
        return 1.0
    progress = min(1.0, (step - warmup) / (steps - warmup))
    if schedule == "linear":
        return 1.0 - (1.0 - min_ratio) * progress
    return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


def build_engine(module: torch.nn.Module, config: StageConfig, ds_config: dict[str, Any], *, mpu: Any = None,
                 optimizer: str = "adamw") -> Any:
    """``deepspeed.initialize`` with a torch optimizer and the stage's LR schedule; returns the engine."""
    import deepspeed

    params = [p for p in module.parameters() if p.requires_grad]
    opt: torch.optim.Optimizer
    if optimizer == "sgd":
        opt = torch.optim.SGD(params, lr=config.learning_rate)
    else:
        # fused: one CUDA kernel for the whole update instead of a dozen foreach passes (CPU: foreach)
        opt = torch.optim.AdamW(params, lr=config.learning_rate, betas=(0.9, 0.95), weight_decay=0.0,
                                fused=config.device == "cuda" and torch.cuda.is_available())

    def schedule(o: torch.optim.Optimizer) -> LambdaLR:
        return LambdaLR(o, lambda s: lr_factor(s, steps=config.steps, warmup=config.warmup_steps,
                                               schedule=config.lr_schedule,
                                               min_ratio=config.min_learning_rate_ratio))

    engine, _, _, _ = deepspeed.initialize(model=module, optimizer=opt, lr_scheduler=schedule, config=ds_config,
                                           mpu=mpu)
    return engine


def torch_optimizer(engine: Any) -> torch.optim.Optimizer:
    """The torch optimizer inside DeepSpeed's wrappers (ZeRO 1–3, bf16): it owns the fp32 master state."""
    opt = engine.optimizer
    while not isinstance(opt, torch.optim.Optimizer) and getattr(opt, "optimizer", None) is not None:
        opt = opt.optimizer
    if not isinstance(opt, torch.optim.Optimizer):
        raise TypeError(f"no torch optimizer inside {type(engine.optimizer).__name__}")
    return opt


def step_without_update(engine: Any) -> None:
    """``engine.step()`` that applies no update: the weights and the optimizer state stay as they were.

    Used for a loss spike: DeepSpeed's step must still run (it closes the gradient-accumulation
    boundary, frees the gradients, advances its counters and the LR schedule), so it runs with every
    learning rate at 0 (AdamW then changes no weight, decoupled weight decay included) and the
    optimizer state (moments, step counts) is restored afterwards from a host copy — the spiking
    gradients reach neither the weights nor the moments. Costs one host copy of this rank's
    optimizer state, only on the (rare) skipped step.
    """
    opt = torch_optimizer(engine)
    saved = {p: {k: v.detach().to("cpu", copy=True) if torch.is_tensor(v) else v for k, v in st.items()}
             for p, st in opt.state.items()}
    lrs = [group["lr"] for group in opt.param_groups]
    scheduler = getattr(engine, "lr_scheduler", None)
    epoch = getattr(scheduler, "last_epoch", None)
    for group in opt.param_groups:
        group["lr"] = 0.0
    try:
        engine.step()
    finally:
        if epoch is None or getattr(scheduler, "last_epoch", None) == epoch:  # no schedule set the next rate
            for group, lr in zip(opt.param_groups, lrs, strict=True):
                group["lr"] = lr
        for p in [p for p in opt.state if p not in saved]:
            del opt.state[p]
        for p, st in saved.items():
            current = opt.state[p]
            for k, v in st.items():
                if torch.is_tensor(v) and torch.is_tensor(current.get(k)):
                    current[k].copy_(v)
                else:
                    current[k] = v
