"""After a Ulysses stage, evaluation attends with the model's own attention and its padding mask.

DeepSpeed-Ulysses replaces the ``sdpa`` attention function process-wide with a wrapper that drops
the mask (also in eval mode); a left-padded retrieval batch would then attend to its pads. Two gloo
ranks set up Ulysses 2 as a stage does, then decode a left-padded batch of prompts of different
lengths: each continuation must equal the prompt's decoded alone (no padding).
"""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path

import pytest

from tests.eval.conftest import CORPUS

PROMPTS = [CORPUS[0][:150], CORPUS[1][:90], CORPUS[0][40:160]]  # left-padded to 150 in one batch


def _tiny_base():
    from transformers import AutoModelForCausalLM

    from ctxext.model_info import BUILTIN_DIR

    return AutoModelForCausalLM.from_pretrained(str(BUILTIN_DIR / "tiny"), attn_implementation="sdpa").eval()


def _rank_main(rank: int, port: int, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), OMP_NUM_THREADS="1", RANK=str(rank),
                      LOCAL_RANK=str(rank), WORLD_SIZE="2")
    from ctxext_trainer.distributed import close_distributed, init_distributed
    from ctxext_trainer.eval.generate import greedy_generate
    from ctxext_trainer.sequence_parallel import setup_sequence_parallel
    from ctxext_trainer.tokenizer import ByteTokenizer

    topo = init_distributed("cpu", sp_size=2, ring_size=1)
    try:
        setup_sequence_parallel(_tiny_base().train(), topo, 1, "sdpa")  # the stage's training model
        model, tok = _tiny_base(), ByteTokenizer()  # the exported model, loaded for evaluation
        prompts = [tok.encode(p) for p in PROMPTS]
        batched = greedy_generate(model, prompts, max_new_tokens=8, pad_id=tok.pad_id)
        alone = [greedy_generate(model, [p], max_new_tokens=8, pad_id=tok.pad_id)[0] for p in prompts]
        Path(out, f"rank{rank}.json").write_text(json.dumps({"batched": batched, "alone": alone}))
        # Outside evaluation the wrapper is still DeepSpeed's (a training stage goes on as it was).
        from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS
        assert "sdpa" in ALL_ATTENTION_FUNCTIONS._local_mapping
    finally:
        close_distributed()


@pytest.mark.distributed
def test_evaluation_after_ulysses_keeps_the_padding_mask(tmp_path):
    import torch.multiprocessing as mp

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(_rank_main, args=(port, str(tmp_path)), nprocs=2, join=True)
    for r in range(2):
        got = json.loads((tmp_path / f"rank{r}.json").read_text())
        assert got["batched"] == got["alone"]
