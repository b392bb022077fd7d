"""Peak memory per GPU of one training stage: states under ZeRO, plus activations at that length.

Model states (Rajbhandari et al., ZeRO) with Ψ parameters and W ranks (ZeRO shards over all ranks,
the sequence-parallel ones included). On GPU (bf16 with fp32 master weights and Adam) weights take
2Ψ bytes, gradients 2Ψ and optimizer states 12Ψ; on CPU (fp32) 4Ψ, 4Ψ and 8Ψ::

    ZeRO 0: w + g + o        ZeRO 1: w + g + o/W
    ZeRO 2: w + (g + o)/W    ZeRO 3: (w + g + o)/W
    + DeepSpeed's own allocations by ZeRO stage (:func:`deepspeed_terms`)

With the trainer's config ZeRO 1 on GPU runs DeepSpeed's ZeRO optimizer, not its bf16 optimizer:
``engine._do_optimizer_sanity_check`` picks ``BF16_Optimizer`` only for ZeRO 1 with
``grad_accum_dtype`` fp32, and the trainer sets that at ZeRO 2 and 3 only. So there is no fp32
gradient buffer of the whole model (the planner counted +4Ψ for it before); the ZeRO optimizer's
reduce buckets are counted instead. A single-rank stage runs ZeRO-1 whatever was asked
(:data:`SINGLE_RANK_ZERO_STAGE`: one rank has nothing to partition), so the planner estimates it at
that stage.

On GPU at ZeRO 2 and 3 the trainer accumulates gradients in fp32 (``data_types.grad_accum_dtype``,
``ctxext_trainer.engine.FP32_ACCUMULATION_STAGES``): the gradient partition is fp32 instead of
bf16, +2Ψ/W at both stages (:data:`FP32_GRAD_ACCUM_EXTRA_BYTES`, counted with the gradients;
DeepSpeed 0.19.8 measured on CPU, ``bench/grad_accum_memory.py``: the live gradient partition of a
ZeRO-2 rank goes from 2Ψ/W bf16 to 4Ψ/W fp32, ZeRO-3's ``grad_partitions_flat_buffer`` likewise).

Activations for s = seqLen / sequenceParallel · batchSize local tokens, a bytes per element, E the
elements one decoder layer keeps per token for backward (SDPA/flash attention: no s² term). Counted
from transformers' Llama layer: two RMSNorms (input, fp32 upcast = 2 elements, output), q/k/v,
rotated q/k, attention output, the post-attention residual, and gate, up, act(gate), act·up::

    E = 11h + 3·kv + 4·I   (+ h + 2·kv for Ulysses all-to-all buffers when sequenceParallel > 1)
    with checkpointing:  layers · s · h · a  (layer inputs)  +  2 · s · E · a  (one layer recomputed,
                         plus the gradients flowing through it)
    without:             layers · s · E · a  +  s · E · a  (the gradients flowing through the layer in
                         backward, while its saved tensors still live)
    selective (c of the layers checkpointed): c · s · h · a + (layers − c) · s · E · a + 2 · s · E · a
    logits: min(s, LOSS_CHUNK_TOKENS) · V · (a + 8)   (the trainer computes the loss in chunks)

Worked example, Llama-3-8B (Ψ = 8.03e9, h = 4096, I = 14336, kv = 1024, V = 128256) at 65,536
tokens on 8 GPUs, sequenceParallel 8, ZeRO 3, checkpointing, bf16:
states 16Ψ/8 = 14.96 GiB; s = 8192; inputs 32·8192·4096·2 = 2.00 GiB; one layer 2·8192·111616·2 =
3.41 GiB; logits 4096·128256·10 = 4.89 GiB; DeepSpeed's ZeRO-3 terms 4.84 GiB (:func:`deepspeed_terms`:
reduce bucket 0.93, live parameters 2.93, lm_head's full gradient 0.98); runtime overhead 1.5 GiB →
about 32.1 GiB (activations get 10% for allocator fragmentation); fp32 gradient accumulation (ZeRO 2
and 3 under bf16) adds 2Ψ/8 = 1.87 GiB → about 34.0 GiB.

Buffers the layer count above leaves out (:func:`ring_attention_bytes`, :func:`deepspeed_terms`):

* the zigzag ring (``ring > 1``): its fp32 saved outputs (``out`` + ``lse``) for every layer kept for
  backward, and during one layer's backward fp32 dQ, fp32 dK/dV with their shift buffers, the next
  K/V in flight and — with GQA — K/V expanded to the query heads and the expanded dK/dV in fp32;
* DeepSpeed (:func:`deepspeed_terms`, each term named after what DeepSpeed 0.19 allocates with the
  trainer's config): reduce buckets, the fp32 master copy ZeRO 1/2 make even of an fp32 model,
  ZeRO-3's persistent and live (gathered) parameters, and the full gradient of the largest
  parameter before its reduce-scatter.

For the 1M stage of ``examples/llama3-8b-1m.yaml`` (SP 32 = Ulysses 8 × ring 4, s = 32,768) the ring
adds 0.50 GiB saved + 3.13 GiB transient (2.0 GiB of it the GQA expansion) and ZeRO 3 adds 4.84 GiB
(above). Headroom: the planner refuses a stage above
``gpuMemoryGiB``, warns above 90% of it, and picks selective checkpointing to fit 90%.

``bench/planner_memory.py`` compares this with measured peaks of the real trainer on CPU: ZeRO 0–2
cover 0.86–1.03 of the step growth and 1.09–1.27 of the peak; ZeRO 3 on CPU 0.56–0.82 and
0.85–1.07, an excess that no DeepSpeed allocation sized by the config explains (bench/README.md).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from ctxext.api.spec import ModelArchitecture

GIB = 1024**3
#: Tokens per chunk of the chunked LM-head + cross-entropy in the trainer.
LOSS_CHUNK_TOKENS = 4096
#: The ZeRO stage a one-rank stage runs (the trainer's ``effective_zero_stage``).
SINGLE_RANK_ZERO_STAGE = 1
#: CUDA context, NCCL buffers, allocator reserve.
RUNTIME_OVERHEAD_GIB = 1.5
#: A CPU rank (torch, DeepSpeed, gloo) before the model is built: 0.38–0.52 GiB measured.
CPU_RUNTIME_OVERHEAD_GIB = 0.5
FRAGMENTATION = 1.10
#: Bytes per parameter (before ZeRO's division by W) that fp32 gradient accumulation adds on GPU, by ZeRO stage.
FP32_GRAD_ACCUM_EXTRA_BYTES = {2: 2, 3: 2}


def parameter_count(arch: ModelArchitecture, head_dim: int | None = None) -> int:
    """Parameters of a Llama-shaped decoder.

    >>> a = ModelArchitecture(num_layers=32, hidden_size=4096, intermediate_size=14336,
    ...     num_attention_heads=32, num_key_value_heads=8, vocab_size=128256)
    >>> parameter_count(a)
    8030261248
    """
    h, i, v = arch.hidden_size, arch.intermediate_size, arch.vocab_size
    d = head_dim or h // arch.num_attention_heads
    q_dim = arch.num_attention_heads * d
    kv_dim = (arch.num_key_value_heads or arch.num_attention_heads) * d
    per_layer = h * q_dim + 2 * h * kv_dim + q_dim * h + 3 * h * i + 2 * h
    embeddings = v * h * (1 if arch.tie_word_embeddings else 2)
    return arch.num_layers * per_layer + embeddings + h


@dataclass(frozen=True)
class MemoryEstimate:
    """Estimated peak memory of one rank, in GiB, by component."""

    weights: float
    gradients: float
    optimizer: float
    activations: float
    logits: float
    overhead: float
    attention: float = 0.0
    """Ring-attention buffers (:func:`ring_attention_bytes`), fragmentation included."""
    buffers: float = 0.0
    """What DeepSpeed allocates beyond the states (:func:`deepspeed_terms`: buckets, master copy, ZeRO-3
    persistent and live parameters, the largest full gradient)."""

    @property
    def total(self) -> float:
        return (self.weights + self.gradients + self.optimizer + self.activations + self.logits + self.overhead
                + self.attention + self.buffers)

    def as_dict(self) -> dict[str, float]:
        return {k: round(v, 3) for k, v in {**asdict(self), "total": self.total}.items()}


def ring_attention_bytes(arch: ModelArchitecture, *, tokens: int, ring: int, saved_layers: int, act_bytes: int,
                         head_dim: int | None = None) -> tuple[float, float]:
    """(saved, transient) bytes of the zigzag ring on one rank holding ``tokens`` local tokens.

    saved = layers kept for backward × (4·s·q + 4·s·heads)       fp32 out and lse
    transient (one layer's backward) = 4·s·q                     fp32 dQ
        + 16·s·kv                                               fp32 dK, dV and their shift buffers
        + 2·a·s·kv                                              next K/V in flight
        + (4·a + 8)·s·q  (GQA only)                             K/V and dK/dV expanded to the query heads
    with q = heads·d and kv = kvHeads·d (the Ulysses split leaves s·q per rank unchanged). No ring: (0, 0).

    >>> a = ModelArchitecture(num_layers=32, hidden_size=4096, intermediate_size=14336,
    ...     num_attention_heads=32, num_key_value_heads=8, vocab_size=128256)
    >>> [round(b / GIB, 3) for b in ring_attention_bytes(a, tokens=32768, ring=4, saved_layers=1, act_bytes=2)]
    [0.504, 3.125]
    """
    if ring <= 1:
        return 0.0, 0.0
    heads = arch.num_attention_heads
    d = head_dim or arch.hidden_size // heads
    q, kv = heads * d, (arch.num_key_value_heads or heads) * d
    s = tokens
    saved = saved_layers * (4 * s * q + 4 * s * heads)
    gqa = (4 * act_bytes + 8) * s * q if q != kv else 0
    return float(saved), float(4 * s * q + 16 * s * kv + 2 * act_bytes * s * kv + gqa)


@dataclass(frozen=True)
class ZeroSettings:
    """The ZeRO settings the trainer's DeepSpeed config runs with, in elements.

    ``ctxext_trainer.engine.deepspeed_config`` sets none of these, so DeepSpeed's defaults apply
    (``deepspeed.runtime.zero.config.DeepSpeedZeroConfig``, 0.19; ``tests/unit/test_memory_terms.py``
    checks each against it). It sets ``contiguous_gradients`` (ZeRO 1–3), ``overlap_comm`` on CUDA,
    ``reduce_scatter`` (ZeRO 3) and ``grad_accum_dtype`` fp32 under bf16 at ZeRO 2–3."""

    reduce_bucket_size: int = 500_000_000
    allgather_bucket_size: int = 500_000_000
    """Unused: ZeRO 1/2 all-gather the updated partitions straight into the flat weights
    (``all_gather_into_tensor_dp_groups``, NCCL and gloo), so no gather bucket is allocated."""
    prefetch_bucket_size: int = 50_000_000
    param_persistence_threshold: int = 100_000
    max_live_parameters: int = 1_000_000_000
    max_reuse_distance: int = 1_000_000_000


ZERO_SETTINGS = ZeroSettings()


def parameter_sizes(arch: ModelArchitecture, head_dim: int | None = None) -> list[int]:
    """Element count of every parameter tensor of a Llama-shaped decoder (sums to :func:`parameter_count`)."""
    h, i, v = arch.hidden_size, arch.intermediate_size, arch.vocab_size
    d = head_dim or h // arch.num_attention_heads
    q, kv = arch.num_attention_heads * d, (arch.num_key_value_heads or arch.num_attention_heads) * d
    layer = [h * q, h * kv, h * kv, q * h, h * i, h * i, i * h, h, h]
    return [v * h] * (1 if arch.tie_word_embeddings else 2) + layer * arch.num_layers + [h]


def deepspeed_terms(arch: ModelArchitecture, *, zero_stage: int, on_gpu: bool, world_size: int, weight_bytes: int,
                    head_dim: int | None = None, zero: ZeroSettings = ZERO_SETTINGS) -> dict[str, float]:
    """Bytes per rank that DeepSpeed 0.19 allocates beyond weights, gradients and optimizer states, by name.

    With Ψ parameters, W ranks, b bytes per weight element, the trainer's config (:class:`ZeroSettings`):

    * ``reduceBuckets`` (ZeRO 1–3, ``contiguous_gradients``): ``torch.empty(reduce_bucket_size)`` in
      the model dtype — two at ZeRO 1/2 with ``overlap_comm`` (CUDA; ``stage_1_and_2.setup_buckets``),
      one at ZeRO 3 (``stage3.py``, ``ipg_buckets``). CUDA's allocator holds the whole tensor; on
      CPU only the pages written are resident: at most the Ψ gradients copied in.
    * ``masterWeights`` (ZeRO 1/2 on CPU): ``stage_1_and_2`` clones this rank's partition to fp32 even
      when the model is fp32 (``single_partition_of_fp32_groups``): 4Ψ/W. On GPU the fp32 master is
      part of the optimizer's 12Ψ; ZeRO 3 reuses an fp32 partition (``fp32_partitioned_groups_flat``).
    * ``persistentParameters`` (ZeRO 3): tensors of at most ``param_persistence_threshold`` elements
      stay whole on every rank (``ds_persist``): their size × b × (1 − 1/W) beyond the partition.
    * ``liveParameters`` (ZeRO 3): gathered parameters. After a module runs, the coordinator keeps
      every parameter used again within the next ``max_reuse_distance`` elements of the trace
      (``__params_to_release``; at the forward/backward turn that is the last layers and the head),
      plus up to ``prefetch_bucket_size`` prefetched and the module running: min(Ψ not persistent,
      max_reuse_distance + prefetch_bucket_size + largest tensor) × b.
    * ``fullGradient`` (ZeRO 2/3): autograd materialises a parameter's whole gradient before DeepSpeed's
      hook copies it into the bucket and reduce-scatters it: the largest tensor × b.

    Worked example, Llama-3-8B (Ψ = 8.03e9, largest tensor lm_head 128256 × 4096 = 525M) on 8 GPUs,
    bf16, ZeRO 3: buckets 5e8·2 = 0.93 GiB; persistent (the 65 norms of 4096) 0.0005 GiB; live
    (1e9 + 5e7 + 525M)·2 = 2.93 GiB; full gradient 525M·2 = 0.98 GiB → 4.84 GiB. ZeRO 1 on GPU: two
    buckets, 1.86 GiB. Tiny model on CPU (1.08M parameters, all below the threshold), ZeRO 3, W = 2:
    every tensor persists (+2.2 MB), nothing is gathered on demand.

    >>> a = ModelArchitecture(num_layers=32, hidden_size=4096, intermediate_size=14336,
    ...     num_attention_heads=32, num_key_value_heads=8, vocab_size=128256)
    >>> t = deepspeed_terms(a, zero_stage=3, on_gpu=True, world_size=8, weight_bytes=2)
    >>> [round(t[k] / GIB, 2) for k in ("reduceBuckets", "persistentParameters", "liveParameters", "fullGradient")]
    [0.93, 0.0, 2.93, 0.98]
    """
    sizes = parameter_sizes(arch, head_dim)
    params, largest, world = sum(sizes), max(sizes), max(1, world_size)
    terms = dict.fromkeys(("reduceBuckets", "masterWeights", "persistentParameters", "liveParameters",
                           "fullGradient"), 0.0)
    if zero_stage == 0:
        return terms
    bucket = zero.reduce_bucket_size if on_gpu else min(zero.reduce_bucket_size, params)
    terms["reduceBuckets"] = float((2 if on_gpu and zero_stage in (1, 2) else 1) * bucket * weight_bytes)
    if zero_stage in (1, 2) and not on_gpu:
        terms["masterWeights"] = 4.0 * params / world
    if zero_stage >= 2:
        terms["fullGradient"] = float(largest * weight_bytes)
    if zero_stage >= 3:
        persistent = sum(n for n in sizes if n <= zero.param_persistence_threshold)
        terms["persistentParameters"] = persistent * weight_bytes * (1 - 1 / world)
        gathered = min(params - persistent, zero.max_reuse_distance + zero.prefetch_bucket_size + largest)
        terms["liveParameters"] = float(gathered * weight_bytes)
    return terms


def estimate_memory(
    arch: ModelArchitecture,
    *,
    seq_len: int,
    batch_size: int,
    world_size: int,
    sequence_parallel: int,
    zero_stage: int,
    activation_checkpointing: bool,
    on_gpu: bool,
    head_dim: int | None = None,
    checkpointed_layers: int | None = None,
    ring_degree: int = 1,
) -> MemoryEstimate:
    """Peak memory of one rank for one stage (see the module docstring for the model).

    ``checkpointed_layers`` (with ``activation_checkpointing``): how many decoder layers recompute
    in backward; None = all of them. ``ring_degree``: the zigzag ring's share of ``sequence_parallel``."""
    n = parameter_count(arch, head_dim)
    w_b, g_b, o_b, act_b = (2, 2, 12, 2) if on_gpu else (4, 4, 8, 4)
    world = max(1, world_size)
    w, g, o = float(n * w_b), float(n * g_b), float(n * o_b)
    if on_gpu:
        g += FP32_GRAD_ACCUM_EXTRA_BYTES.get(zero_stage, 0) * n  # fp32 accumulation (module docstring)
    if zero_stage >= 1:
        o /= world
    if zero_stage >= 2:
        g /= world
    if zero_stage >= 3:
        w /= world
    h, inter, v = arch.hidden_size, arch.intermediate_size, arch.vocab_size
    d = head_dim or h // arch.num_attention_heads
    kv = (arch.num_key_value_heads or arch.num_attention_heads) * d
    s = seq_len // max(1, sequence_parallel) * batch_size
    per_token_layer = 11 * h + 3 * kv + 4 * inter + ((h + 2 * kv) if sequence_parallel > 1 else 0)
    if activation_checkpointing:
        c = arch.num_layers if checkpointed_layers is None else max(0, min(checkpointed_layers, arch.num_layers))
        acts = (c * s * h + (arch.num_layers - c) * s * per_token_layer + 2 * s * per_token_layer) * act_b
        saved_layers = arch.num_layers - c + 1
    else:
        acts = (arch.num_layers + 1) * s * per_token_layer * act_b
        saved_layers = arch.num_layers
    ring_saved, ring_transient = ring_attention_bytes(arch, tokens=s, ring=ring_degree, saved_layers=saved_layers,
                                                      act_bytes=act_b, head_dim=head_dim)
    logits = min(s, LOSS_CHUNK_TOKENS) * v * (act_b + 8)
    return MemoryEstimate(
        weights=w / GIB,
        gradients=g / GIB,
        optimizer=o / GIB,
        activations=acts * FRAGMENTATION / GIB,
        logits=logits / GIB,
        overhead=RUNTIME_OVERHEAD_GIB if on_gpu else CPU_RUNTIME_OVERHEAD_GIB,
        attention=(ring_saved + ring_transient) * FRAGMENTATION / GIB,
        buffers=sum(deepspeed_terms(arch, zero_stage=zero_stage, on_gpu=on_gpu, world_size=world, weight_bytes=w_b,
                                    head_dim=head_dim).values()) / GIB,
    )
