"""Rank split: the work items are sharded evenly, and two gloo ranks reproduce one process's numbers.

The model is the shipped tiny model (``builtin://tiny``, trained to retrieve passkeys): its passkey grid
mixes 1.0, 0.0 and fractions, and its perplexity depends on the text, so a rank that drops, repeats or
misplaces a sample changes the gathered numbers. (A random model scores 0.0 in every cell and ~255 on
every text: it could not tell a sharding bug from a correct split.)"""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path

import pytest

from ctxext_trainer.eval.parallel import shard

ARGS = {"tasks": ["passkey", "perplexity"], "lengths": [128, 384], "depths": [0.0, 0.5, 1.0], "samples_per_cell": 3,
        "seed": 5, "original_length": 128, "tokens_per_batch": 1}


def trained_tiny():
    """The shipped tiny model: retrieves passkeys at 128 tokens, a third of them at the end of 384."""
    from transformers import AutoModelForCausalLM

    from ctxext_trainer.model_loading import resolve_model_path

    return AutoModelForCausalLM.from_pretrained(resolve_model_path("builtin://tiny")).eval()


def test_shard_pads_so_every_rank_makes_the_same_calls():
    items = list("abcde")
    ranks = [shard(items, rank=r, world_size=2, batch=2) for r in range(2)]
    assert [[[i for i, _ in b] for b in r] for r in ranks] == [[[0, 2], [4, -1]], [[1, 3], [-1, -1]]]
    assert sorted(i for r in ranks for b in r for i, _ in b if i >= 0) == [0, 1, 2, 3, 4]
    assert shard([], rank=0, world_size=2, batch=2) == []
    assert [len(b) for b in shard(items, rank=0, world_size=1, batch=4)] == [4, 4]


def _rank_main(rank: int, world_size: int, port: int, out: str) -> None:
    import torch.distributed as dist

    from tests.eval.conftest import CORPUS

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), OMP_NUM_THREADS="1")
    dist.init_process_group("gloo", rank=rank, world_size=world_size)
    try:
        from ctxext_trainer.eval.suite import evaluate_model
        from ctxext_trainer.tokenizer import ByteTokenizer

        ev = evaluate_model(trained_tiny(), ByteTokenizer(), output_dir=Path(out) / "plots", corpus_texts=CORPUS,
                            **ARGS)
        Path(out, f"rank{rank}.json").write_text(json.dumps(ev))
        dist.barrier()  # no rank tears gloo down while the other still uses it (seen once: SIGABRT in CI)
    finally:
        dist.destroy_process_group()


@pytest.mark.distributed
def test_two_ranks_split_the_cells_and_gather_the_same_result(tmp_path):
    import torch.multiprocessing as mp

    from ctxext_trainer.eval.suite import evaluate_model
    from ctxext_trainer.tokenizer import ByteTokenizer
    from tests.eval.conftest import CORPUS

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(_rank_main, args=(2, port, str(tmp_path)), nprocs=2, join=True)
    single = evaluate_model(trained_tiny(), ByteTokenizer(), output_dir=None, corpus_texts=CORPUS, **ARGS)
    cells = [v for by_depth in single["grids"]["passkey"].values() for v in by_depth.values()]
    assert 1.0 in cells and any(0.0 < v < 1.0 for v in cells), cells  # a grid a sharding bug would change
    assert len({round(v, 3) for v in single["perplexity"].values()}) == 2 and max(single["perplexity"].values()) < 50
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    for ev in ranks:
        assert ev["grids"] == single["grids"] and ev["passkeyAccuracy"] == single["passkeyAccuracy"]
        assert ev["perplexity"] == pytest.approx(single["perplexity"], rel=1e-6)
        assert [b["loss"] for b in ev["positionLoss"]] == pytest.approx([b["loss"] for b in single["positionLoss"]])
    assert ranks[0]["plots"] == ranks[1]["plots"] and len(ranks[0]["plots"]) == 2  # drawn once, by rank 0
