"""Sequence parallelism gives the single-process loss and gradients: Ulysses 2 at every ZeRO stage;
Ulysses 4 — more ranks than the tiny model's 2 KV heads, so DeepSpeed replicates each KV head on two
ranks — at ZeRO 0 and 3; Ulysses 2 × zigzag ring 2 (4 processes) at every ZeRO stage; ring 4 alone
at ZeRO 0.

The worker (``sp_grad_worker.py``, run by torchrun) builds the trainer's own engine (SGD, no
clipping) and saves the full gradients of one fixed 64-token sequence; here the same model computes
them in one process with plain transformers. The guard's global gradient norm must match too.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch
from transformers import AutoConfig, AutoModelForCausalLM

from ctxext.theta import rope_parameters

from .conftest import free_port, trainer_env
from .sp_grad_worker import SEQ_LEN, THETA, fixed_sequence

ZERO_STAGES = (0, 1, 2, 3)
KV_REPLICATION_STAGES = (0, 3)
HYBRID_STAGES = (0, 1, 2, 3)
RING_ONLY_STAGES = (0,)


def single_process_reference(model_dir: Path) -> tuple[float, dict[str, torch.Tensor]]:
    config = AutoConfig.from_pretrained(str(model_dir))
    config.rope_parameters = rope_parameters(THETA)
    model = AutoModelForCausalLM.from_pretrained(str(model_dir), config=config, attn_implementation="sdpa",
                                                 dtype=torch.float32)
    inputs, labels = fixed_sequence()
    logits = model(input_ids=torch.tensor([inputs]), position_ids=torch.arange(SEQ_LEN)[None]).logits
    loss = torch.nn.functional.cross_entropy(logits[0], torch.tensor(labels), ignore_index=-100)
    loss.backward()
    return float(loss.detach()), {name: p.grad.detach().clone() for name, p in model.named_parameters()}


def _run_worker(tiny_model: Path, out: Path, nproc: int, stages: tuple[int, ...], ring: int = 1) -> Path:
    worker = Path(__file__).with_name("sp_grad_worker.py")
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", f"--nproc-per-node={nproc}",
                           f"--master-port={free_port()}", str(worker), str(tiny_model), str(out),
                           str(ring), *map(str, stages)], env=trainer_env(), capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    return out


@pytest.fixture(scope="module")
def sp_gradients(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _run_worker(tiny_model, tmp_path_factory.mktemp("sp-grads"), 2, ZERO_STAGES)


@pytest.fixture(scope="module")
def kv_replicated_gradients(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _run_worker(tiny_model, tmp_path_factory.mktemp("sp4-grads"), 4, KV_REPLICATION_STAGES)


@pytest.fixture(scope="module")
def hybrid_gradients(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _run_worker(tiny_model, tmp_path_factory.mktemp("sp2x2-grads"), 4, HYBRID_STAGES, ring=2)


@pytest.fixture(scope="module")
def ring_gradients(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _run_worker(tiny_model, tmp_path_factory.mktemp("ring4-grads"), 4, RING_ONLY_STAGES, ring=4)


def _assert_matches_reference(saved_dir: Path, tiny_model: Path, zero_stage: int) -> None:
    ref_loss, reference = single_process_reference(tiny_model)
    saved = torch.load(saved_dir / f"grads-z{zero_stage}.pt")
    assert abs(saved["loss"] - ref_loss) < 1e-5 * max(1.0, abs(ref_loss)), (saved["loss"], ref_loss)
    assert set(saved["grads"]) == set(reference)
    for name, ref in reference.items():
        got = saved["grads"][name]
        rel = float((got - ref).norm() / ref.norm())
        assert rel < 1e-4, f"ZeRO-{zero_stage} {name}: relative difference {rel:.2e}"
    ref_norm = float(torch.sqrt(sum((g.double() ** 2).sum() for g in reference.values())))
    assert abs(saved["grad_norm"] - ref_norm) / ref_norm < 1e-4


@pytest.mark.distributed
@pytest.mark.parametrize("zero_stage", ZERO_STAGES)
def test_sequence_parallel_equals_single_process(sp_gradients: Path, tiny_model: Path, zero_stage: int) -> None:
    _assert_matches_reference(sp_gradients, tiny_model, zero_stage)


@pytest.mark.distributed
@pytest.mark.parametrize("zero_stage", KV_REPLICATION_STAGES)
def test_sequence_parallel_beyond_the_kv_heads_replicates_them_exactly(kv_replicated_gradients: Path,
                                                                      tiny_model: Path, zero_stage: int) -> None:
    _assert_matches_reference(kv_replicated_gradients, tiny_model, zero_stage)


@pytest.mark.distributed
@pytest.mark.parametrize("zero_stage", HYBRID_STAGES)
def test_ulysses_times_ring_equals_single_process(hybrid_gradients: Path, tiny_model: Path, zero_stage: int) -> None:
    _assert_matches_reference(hybrid_gradients, tiny_model, zero_stage)


@pytest.mark.distributed
@pytest.mark.parametrize("zero_stage", RING_ONLY_STAGES)
def test_ring_only_equals_single_process(ring_gradients: Path, tiny_model: Path, zero_stage: int) -> None:
    _assert_matches_reference(ring_gradients, tiny_model, zero_stage)
