"""Long lengths evaluated as training runs them: one sequence sharded over a sequence group (2 gloo
ranks, zigzag ring), equal to the unsharded evaluation, with a lower peak per rank."""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path

import pytest
import torch

from ctxext_trainer.eval.sharded import local_positions, padded_length

# The shipped tiny base (L0 128): passkey ~1.0 at 128, so the grids are not all zero.
ARGS = {"tasks": ["passkey", "perplexity"], "lengths": [128, 512], "depths": [0.0, 0.5, 1.0], "samples_per_cell": 2,
        "seed": 11, "original_length": 128}
PEAK_LENGTH = 2048


def _tiny_base():
    from transformers import AutoModelForCausalLM

    from ctxext.model_info import BUILTIN_DIR

    return AutoModelForCausalLM.from_pretrained(str(BUILTIN_DIR / "tiny"), attn_implementation="sdpa").eval()


def _ids(n: int) -> list[int]:
    g = torch.Generator().manual_seed(3)
    return torch.randint(3, 250, (n,), generator=g).tolist()


def test_every_position_is_held_once_and_pads_only_at_the_end():
    for n, ranks in ((10, 2), (256, 2), (203, 4), (7, 1)):
        held = sorted(p for r in range(ranks) for p in local_positions(n, ranks, r))
        assert held == list(range(padded_length(n, ranks)))
        assert padded_length(n, ranks) - n < 2 * ranks


def _rank_main(rank: int, port: int, out: str) -> None:
    import torch.distributed as dist

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), OMP_NUM_THREADS="1")
    dist.init_process_group("gloo", rank=rank, world_size=2)
    try:
        from ctxext_trainer.eval.sharded import sharded_token_losses
        from ctxext_trainer.eval.suite import evaluate_model
        from ctxext_trainer.tokenizer import ByteTokenizer
        from tests.eval.tensor_peak import TensorPeak

        group = dist.new_group([0, 1])
        model = _tiny_base()
        ev = evaluate_model(model, ByteTokenizer(), output_dir=None, sequence_group=group, shard_above=0, **ARGS)
        with torch.no_grad(), TensorPeak() as peak:
            losses = sharded_token_losses(model, _ids(PEAK_LENGTH), group)
        torch.save(losses, Path(out, f"losses{rank}.pt"))
        Path(out, f"rank{rank}.json").write_text(json.dumps({"ev": ev, "peak": peak.peak}))
        dist.barrier()
    finally:
        dist.destroy_process_group()


@pytest.mark.distributed
def test_sharded_evaluation_equals_unsharded_and_each_rank_holds_less(tmp_path):
    import torch.multiprocessing as mp

    from ctxext_trainer.eval.generate import token_losses
    from ctxext_trainer.eval.suite import evaluate_model
    from ctxext_trainer.tokenizer import ByteTokenizer
    from tests.eval.tensor_peak import TensorPeak

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(_rank_main, args=(port, str(tmp_path)), nprocs=2, join=True)
    model = _tiny_base()
    single = evaluate_model(model, ByteTokenizer(), output_dir=None, **ARGS)
    with torch.no_grad(), TensorPeak() as peak:
        whole = token_losses(model, torch.tensor([_ids(PEAK_LENGTH)]))[0]
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    accuracy = single["passkeyAccuracy"]
    assert accuracy["128"] >= 0.5  # a grid with signal, not all zeros
    for r, got in enumerate(ranks):
        ev = got["ev"]
        assert ev["grids"] == single["grids"] and ev["passkeyAccuracy"] == accuracy
        assert ev["perplexity"] == pytest.approx(single["perplexity"], rel=1e-4)
        assert [b["loss"] for b in ev["positionLoss"]] == pytest.approx(
            [b["loss"] for b in single["positionLoss"]], rel=1e-4)
        assert torch.allclose(torch.load(tmp_path / f"losses{r}.pt"), whole, atol=1e-4)
        # Half the tokens per rank: the activations (and logits chunks) of the forward roughly halve.
        assert got["peak"] < 0.7 * peak.peak, (got["peak"], peak.peak)
