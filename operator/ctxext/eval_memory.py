"""Peak memory per rank of a stage's evaluation, as the trainer runs it (``ctxext_trainer.eval``). Pure.

After training, every rank loads the whole exported model (Ψ·a bytes) and evaluates under no_grad:

* lengths up to L0, or every length without sequence parallelism: one rank per prompt, batches of
  ``EVAL_TOKENS_PER_BATCH // length`` sequences (b), t = b·length tokens. Perplexity runs the
  forward without a KV cache: one layer's intermediates ``t·E·a`` plus the final hidden states and
  ``b·EVAL_LOSS_CHUNK`` positions of logits; retrieval decodes with a KV cache
  (``layers·t·2·kv·a``), prefilled in chunks of ``PREFILL_CHUNK`` tokens (``b·chunk·E·a``); a
  left-padded batch (retrieval prompts fall a few tokens short of their length) and every chunk
  after the first attend through a ``chunk × length`` mask, boolean and converted by sdpa to the
  model dtype (``b·chunk·length·(1 + a)``; one 16K prompt of the tiny shape in fp32: 320 MiB of the
  395 MiB its decode peaks at). The larger of the two counts.
* longer lengths with ``sequenceParallel`` R > 1: one sequence per R ranks, sharded as in training
  (zigzag ring over the R ranks), t = length / R tokens per rank, no KV cache: one layer's
  intermediates ``t·E·a``, the ring's K/V (own, in flight, outgoing: ``6·t·kv·a``), its fp32 output,
  merge and K/V expanded to the query heads (``(12 + 2a)·t·q``), ``EVAL_LOSS_CHUNK`` positions of logits.

``E = 2h + q + 2kv + 3I`` elements per token: the residual and normed input, q/k/v, the attention
output, and the MLP's gate, up and act(gate) alive together. Activations get the training
estimate's 10% fragmentation allowance; a runtime overhead is added as in training.

Worked example, Llama-3-8B (bf16) at 1,048,576 tokens over SP 32 (t = 32,768): weights 14.96 GiB,
intermediates 3.85, ring 2.61, logits 1.22, overhead 1.5 → 24.1 GiB per rank. Unsharded, the same
length would need 132 GiB for one layer's intermediates (and 128 GiB of KV cache to decode).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from ctxext.api.spec import ModelArchitecture
from ctxext.memory import CPU_RUNTIME_OVERHEAD_GIB, FRAGMENTATION, GIB, RUNTIME_OVERHEAD_GIB, parameter_count

#: ``ctxext_trainer.eval.suite.TOKENS_PER_BATCH``: tokens per model call of one rank.
EVAL_TOKENS_PER_BATCH = 16384
#: ``ctxext_trainer.eval.generate.PREFILL_CHUNK``: prompt tokens per prefill forward.
PREFILL_CHUNK = 4096
#: ``ctxext_trainer.eval.generate.LOSS_CHUNK``: positions per chunk of the vocabulary projection.
EVAL_LOSS_CHUNK = 1024


@dataclass(frozen=True)
class EvalMemoryEstimate:
    """Estimated evaluation peak of one rank at one length, in GiB, by component."""

    length: int
    sharded: bool
    weights: float
    activations: float
    kv_cache: float
    attention: float
    """The ring's buffers (sharded), or the chunked prefill's attention mask (unsharded)."""
    logits: float
    overhead: float

    @property
    def total(self) -> float:
        return self.weights + self.activations + self.kv_cache + self.attention + self.logits + self.overhead

    def describe(self) -> str:
        """One line of numbers for an error message.

        >>> EvalMemoryEstimate(1024, True, 15.0, 3.9, 0.0, 2.4, 1.2, 1.5).describe()
        'weights 15.0, activations 3.9, KV cache 0.0, attention 2.4, logits 1.2 GiB'
        """
        return (f"weights {self.weights:.1f}, activations {self.activations:.1f}, KV cache {self.kv_cache:.1f}, "
                f"attention {self.attention:.1f}, logits {self.logits:.1f} GiB")

    def as_dict(self) -> dict[str, float]:
        return {k: round(float(v), 3) for k, v in {**asdict(self), "total": self.total}.items()}


def estimate_eval_memory(arch: ModelArchitecture, *, length: int, sequence_parallel: int, original_length: int,
                         on_gpu: bool, head_dim: int | None = None) -> EvalMemoryEstimate:
    """Evaluation peak of one rank at ``length`` (module docstring).

    >>> a = ModelArchitecture(num_layers=32, hidden_size=4096, intermediate_size=14336,
    ...     num_attention_heads=32, num_key_value_heads=8, vocab_size=128256)
    >>> e = estimate_eval_memory(a, length=1048576, sequence_parallel=32, original_length=8192, on_gpu=True)
    >>> e.sharded, round(e.total, 1), round(e.activations, 2), round(e.attention, 2)
    (True, 24.1, 3.85, 2.61)
    >>> e = estimate_eval_memory(a, length=1048576, sequence_parallel=1, original_length=8192, on_gpu=True)
    >>> e.sharded, round(e.kv_cache), round(e.attention), round(e.total)  # decoding: KV cache + prefill mask
    (False, 128, 12, 157)
    """
    a = 2 if on_gpu else 4
    h, inter, vocab, layers = arch.hidden_size, arch.intermediate_size, arch.vocab_size, arch.num_layers
    d = head_dim or h // arch.num_attention_heads
    q, kv = arch.num_attention_heads * d, (arch.num_key_value_heads or arch.num_attention_heads) * d
    per_token = 2 * h + q + 2 * kv + 3 * inter
    weights = parameter_count(arch, head_dim) * a / GIB
    overhead = RUNTIME_OVERHEAD_GIB if on_gpu else CPU_RUNTIME_OVERHEAD_GIB
    logit_bytes = vocab * (a + 8)  # logits in the model dtype, their fp32 copy and the cross-entropy's
    if sequence_parallel > 1 and length > original_length:
        t = -(-length // sequence_parallel)
        ring = 6 * t * kv * a + (12 + 2 * a) * t * q
        return EvalMemoryEstimate(length, True, weights, t * per_token * a * FRAGMENTATION / GIB, 0.0,
                                  ring * FRAGMENTATION / GIB, EVAL_LOSS_CHUNK * logit_bytes / GIB, overhead)
    b = max(1, EVAL_TOKENS_PER_BATCH // length)
    t = b * length
    losses = (t * per_token * a + t * h * a) * FRAGMENTATION + b * min(length, EVAL_LOSS_CHUNK) * logit_bytes
    cache = layers * t * 2 * kv * a
    chunk = b * min(length, PREFILL_CHUNK)
    prefill, mask = chunk * per_token * a * FRAGMENTATION, chunk * length * (1 + a)
    if cache + prefill + mask > losses:
        return EvalMemoryEstimate(length, False, weights, prefill / GIB, cache / GIB, mask / GIB, 0.0, overhead)
    acts = (t * per_token * a + t * h * a) * FRAGMENTATION
    return EvalMemoryEstimate(length, False, weights, acts / GIB, 0.0, 0.0, (losses - acts) / GIB, overhead)


def peak_eval_memory(arch: ModelArchitecture, lengths: list[int], *, sequence_parallel: int, original_length: int,
                     on_gpu: bool, head_dim: int | None = None) -> EvalMemoryEstimate | None:
    """The largest estimate over the evaluated ``lengths`` (None without lengths)."""
    estimates = [estimate_eval_memory(arch, length=n, sequence_parallel=sequence_parallel,
                                      original_length=original_length, on_gpu=on_gpu, head_dim=head_dim)
                 for n in lengths]
    return max(estimates, key=lambda e: e.total, default=None)
