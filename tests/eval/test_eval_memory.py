"""The planner's evaluation estimate (:mod:`ctxext.eval_memory`) against what evaluation really
allocates on the shipped tiny model (CPU, fp32; :mod:`tests.eval.tensor_peak` counts every tensor).

The estimate must cover the measured peak above the weights, and not by a wide margin: it is the
number the planner refuses a plan on. Decoding a left-padded batch of prompts, the attention mask
(boolean, converted to the model dtype by sdpa) outweighs the KV cache on this model.
"""

from __future__ import annotations

import torch

from ctxext.api.spec import ModelArchitecture
from ctxext.eval_memory import EVAL_TOKENS_PER_BATCH, estimate_eval_memory
from ctxext.memory import GIB
from tests.eval.tensor_peak import TensorPeak

TINY = ModelArchitecture(num_layers=4, hidden_size=128, intermediate_size=512, num_attention_heads=4,
                         num_key_value_heads=4, vocab_size=260, tie_word_embeddings=True)  # builtin://tiny
LENGTH = 2048


def _tiny_base():
    from transformers import AutoModelForCausalLM

    from ctxext.model_info import BUILTIN_DIR

    model = AutoModelForCausalLM.from_pretrained(str(BUILTIN_DIR / "tiny"), attn_implementation="sdpa").eval()
    model.config.use_cache = False  # as ctxext_trainer.model_loading.load_for_evaluation leaves it
    return model


def test_the_unsharded_estimate_covers_decoding_and_losses_of_a_batch():
    from ctxext_trainer.eval.generate import greedy_generate, token_losses

    model = _tiny_base()
    batch = EVAL_TOKENS_PER_BATCH // LENGTH  # prompts per call, as the suite batches them
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(3, 250, (batch, LENGTH), generator=g)
    # Retrieval prompts fall a few tokens short of their length (whole haystack sentences): left-padded.
    prompts = [row[:LENGTH - 5 * i] for i, row in enumerate(ids.tolist())]
    with TensorPeak() as decode:
        greedy_generate(model, prompts, max_new_tokens=4, pad_id=0)
    with torch.no_grad(), TensorPeak() as losses:
        token_losses(model, ids)
    e = estimate_eval_memory(TINY, length=LENGTH, sequence_parallel=1, original_length=128, on_gpu=False)
    estimated = (e.total - e.weights - e.overhead) * GIB
    measured = max(decode.peak, losses.peak)
    assert decode.peak > losses.peak and e.kv_cache > 0  # decoding is the larger, as the estimate says
    assert measured <= estimated <= 1.5 * measured, (measured / 2**20, estimated / 2**20, e)
