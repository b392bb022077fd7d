"""Process-group setup and teardown, and this rank's coordinates. The only module that knows about
torchrun / Kubeflow environment variables.

torchrun (which the Kubeflow PyTorchJob runs with ``PET_NNODES``, ``PET_NPROC_PER_NODE``,
``PET_NODE_RANK``, ``MASTER_ADDR``, ``MASTER_PORT``) exports ``RANK``, ``WORLD_SIZE``,
``LOCAL_RANK`` to each process; a plain ``python -m ctxext_trainer`` run gets single-process
defaults. Ranks are laid out sequence-parallel-major, as DeepSpeed's ``parallel_state_sp`` builds
its groups: rank = dp_rank · sp + sp_rank (ranks 0..sp−1 share one sequence), and inside a sequence
sp_rank = ring_rank · ulysses + ulysses_rank — the Ulysses ranks (all-to-all every layer) are
neighbours, on one node where possible; the ring (point-to-point K/V passing) spans them.
Example, 8 ranks, sp 4 = Ulysses 2 × ring 2: sequence groups {0..3} {4..7}, Ulysses groups
{0,1} {2,3} {4,5} {6,7}, ring groups {0,2} {1,3} {4,6} {5,7}.
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as torch_dist


@dataclass(frozen=True)
class Topology:
    """World, data-parallel and sequence-parallel coordinates of this process."""

    rank: int
    world_size: int
    local_rank: int
    sp_size: int
    ring_size: int = 1

    @property
    def sp_rank(self) -> int:
        return self.rank % self.sp_size

    @property
    def ulysses_size(self) -> int:
        return self.sp_size // self.ring_size

    @property
    def ring_rank(self) -> int:
        return self.sp_rank // self.ulysses_size

    @property
    def ulysses_rank(self) -> int:
        return self.sp_rank % self.ulysses_size

    @property
    def dp_rank(self) -> int:
        return self.rank // self.sp_size

    @property
    def dp_size(self) -> int:
        return self.world_size // self.sp_size

    @property
    def is_rank0(self) -> bool:
        return self.rank == 0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _skip_shm_comm_op() -> None:
    """On CPU, DeepSpeed JIT-compiles a shared-memory all-reduce C++ op at init (minutes on 2 cores,
    needs a compiler in the image). gloo is all we need, so unless ``CTXEXT_DS_SHM_COMM=1`` we
    answer DeepSpeed's lazy op-compatibility probe with "nothing compatible" (its only reader is
    that shm builder)."""
    import deepspeed.ops

    if os.environ.get("CTXEXT_DS_SHM_COMM") != "1" and "__compatible_ops__" not in vars(deepspeed.ops):
        deepspeed.ops.__compatible_ops__ = {}


def init_distributed(device: str, sp_size: int, ring_size: int = 1) -> Topology:
    """Initialise the default process group through DeepSpeed (gloo on CPU, nccl on CUDA)."""
    import deepspeed

    if device == "cpu":
        _skip_shm_comm_op()

    if "RANK" not in os.environ:  # plain single-process run
        os.environ.update(RANK="0", WORLD_SIZE="1", LOCAL_RANK="0", LOCAL_WORLD_SIZE="1")
        os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
        os.environ.setdefault("MASTER_PORT", str(_free_port()))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if device == "cuda":
        torch.cuda.set_device(local_rank)
    deepspeed.init_distributed(dist_backend="nccl" if device == "cuda" else "gloo", auto_mpi_discovery=False,
                               verbose=False)
    world = torch_dist.get_world_size()
    if world % sp_size:
        raise ValueError(f"world size {world} is not divisible by sequence_parallel {sp_size}")
    if sp_size % ring_size:
        raise ValueError(f"sequence_parallel {sp_size} is not divisible by ring_degree {ring_size}")
    return Topology(rank=torch_dist.get_rank(), world_size=world, local_rank=local_rank, sp_size=sp_size,
                    ring_size=ring_size)


def all_reduce_sum(tensor: torch.Tensor, group: Any = None) -> torch.Tensor:
    """Sum over ``group`` (the world when None), in place; a no-op when not initialised."""
    if torch_dist.is_available() and torch_dist.is_initialized():
        if tensor.device.type == "cpu" and torch_dist.get_backend(group) == "nccl":
            on_gpu = tensor.to(torch.device("cuda", torch.cuda.current_device()))
            torch_dist.all_reduce(on_gpu, op=torch_dist.ReduceOp.SUM, group=group)
            tensor.copy_(on_gpu.cpu())
        else:
            torch_dist.all_reduce(tensor, op=torch_dist.ReduceOp.SUM, group=group)
    return tensor


def barrier() -> None:
    if torch_dist.is_available() and torch_dist.is_initialized():
        torch_dist.barrier()


def _forget_deepspeed_groups() -> None:
    """DeepSpeed caches process groups in module globals; after the process group is destroyed they
    point at dead groups, and a second stage in the same process (the bench, tests) would fail."""
    from deepspeed.runtime.sequence_parallel import parallel_state_sp
    from deepspeed.utils import groups

    from ctxext_trainer import ring_attention

    ring_attention.unregister()
    parallel_state_sp._release_sequence_parallel_groups()
    for name, value in list(vars(groups).items()):
        if name.startswith("_") and name.isupper() and "GROUP" in name:
            if isinstance(value, dict):
                value.clear()
            else:
                setattr(groups, name, None)
    groups.mpu = None


def close_distributed() -> None:
    """Destroy the process group (always, also after errors: ranks otherwise abort at exit)."""
    if torch_dist.is_available() and torch_dist.is_initialized():
        _forget_deepspeed_groups()
        torch_dist.destroy_process_group()
