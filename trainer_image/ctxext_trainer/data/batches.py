"""Per-step batches for every rank: length curriculum, data-parallel split, sequence-parallel shards;
and :func:`build_stage_data`, which streams a stage's corpus from its token cache.

Every rank runs the same deterministic stream and keeps only its part, so no rank needs to know
another's position and a checkpoint holds one :class:`~ctxext_trainer.data.packing.StreamState`.
One optimizer step draws ``dp · accumulation · batch`` sequences of the step's length ``L``;
sequence ``j`` belongs to micro-step ``j // (dp·batch)`` and data-parallel rank
``(j mod dp·batch) // batch``. Each sequence-parallel rank ``r`` of ``sp`` then keeps its tokens of
inputs, labels and positions: ``[r·L/sp, (r+1)·L/sp)`` with Ulysses only, its zigzag share with a
ring (:func:`ctxext_trainer.zigzag.shard_ranges`; positions stay the global ones, so RoPE and the
ring's causal blocks agree).

Example: dp 1, sp 2, batch 1, accumulation 1, L = 8 → rank 0 gets positions 0..3, rank 1 gets
4..7; labels were shifted before cutting, so rank 0's last label is token 4. With ring 2 instead
(Ulysses 1) rank 0 gets positions 0, 1, 6, 7 and rank 1 gets 2..5.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ctxext.stage_config import StageConfig
from ctxext_trainer.data.augment import is_synthetic, split_documents, synthetic_sequence, upsampling_weights
from ctxext_trainer.data.packing import PackedSequence, StreamState, TokenStream, next_packed
from ctxext_trainer.data.sources import load_documents
from ctxext_trainer.data.token_cache import DocumentTokens, stage_token_corpus
from ctxext_trainer.eval.haystack import SentencePool
from ctxext_trainer.tokenizer import Tokenizer
from ctxext_trainer.zigzag import shard_ranges


def step_length(step: int, *, seed: int, seq_len: int, min_seq_len: int | None, multiple: int) -> int:
    """Sequence length of optimizer step ``step`` (0-based): ``seq_len``, or with a within-stage
    curriculum a value drawn from [min_seq_len, seq_len] from seed and step, rounded down to a
    multiple of ``multiple`` (the sequence-parallel degree).

    >>> step_length(3, seed=1, seq_len=512, min_seq_len=None, multiple=2)
    512
    >>> all(128 <= step_length(s, seed=1, seq_len=512, min_seq_len=128, multiple=8) <= 512 for s in range(50))
    True
    >>> step_length(7, seed=1, seq_len=512, min_seq_len=130, multiple=8) % 8
    0
    """
    if not min_seq_len or min_seq_len >= seq_len:
        return seq_len
    drawn = random.Random(f"ctxext-len:{seed}:{step}").randint(min_seq_len, seq_len)
    return max(multiple, min(seq_len, max(drawn // multiple * multiple, -(-min_seq_len // multiple) * multiple)))


@dataclass(frozen=True)
class Layout:
    """This rank's place: data-parallel and sequence-parallel coordinates, batch shape."""

    dp_rank: int = 0
    dp_size: int = 1
    sp_rank: int = 0
    sp_size: int = 1
    batch_size: int = 1
    accumulation: int = 1
    ring_size: int = 1
    """Ring ranks of the ``sp_size`` (Ulysses = sp_size / ring_size inside each)."""

    @property
    def token_multiple(self) -> int:
        """Step lengths are multiples of this: sp, or 2·sp with a ring (2·ring zigzag chunks)."""
        return self.sp_size * (2 if self.ring_size > 1 else 1)

    def ranges(self, length: int) -> list[tuple[int, int]]:
        """This rank's token ranges of a ``length``-token sequence.

        >>> Layout(sp_rank=1, sp_size=2, ring_size=2).ranges(8)
        [(2, 4), (4, 6)]
        """
        ulysses = self.sp_size // self.ring_size
        return shard_ranges(length, ring=self.ring_size, ulysses=ulysses, ring_rank=self.sp_rank // ulysses,
                            ulysses_rank=self.sp_rank % ulysses)


def _cut(values: list[int], ranges: list[tuple[int, int]]) -> list[int]:
    return [v for lo, hi in ranges for v in values[lo:hi]]


class StageData:
    """The packed, augmented sequences of a stage, resumable through :attr:`state`."""

    def __init__(self, docs: Sequence[Sequence[int]] | DocumentTokens, *, eos_id: int, seed: int, seq_len: int,
                 min_seq_len: int | None = None, upsample_long: bool = False, synthetic_ratio: float = 0.0,
                 synthetic_task: str = "passkey", encode: Any = None, state: StreamState | None = None,
                 synthetic_haystack: str = "corpus", tokenizer: Tokenizer | None = None):
        lengths = docs.lengths().tolist() if isinstance(docs, DocumentTokens) else [len(d) for d in docs]
        weights = upsampling_weights(lengths, seq_len) if upsample_long else None
        self.stream = TokenStream(docs, eos_id=eos_id, seed=seed, weights=weights, state=state)
        self.seed, self.seq_len, self.min_seq_len = seed, seq_len, min_seq_len
        self.synthetic_ratio, self.synthetic_task, self.encode = synthetic_ratio, synthetic_task, encode
        self.synthetic_haystack, self.tokenizer = synthetic_haystack, tokenizer
        self.filler = SentencePool.classic(tokenizer.encode) if tokenizer is not None else None

    @property
    def state(self) -> StreamState:
        return self.stream.state

    @state.setter
    def state(self, value: StreamState) -> None:
        self.stream.state = value

    def next_sequence(self, n: int) -> PackedSequence:
        number = self.stream.state.sequences
        self.stream.state.sequences += 1
        if self.encode is not None and is_synthetic(self.seed, number, self.synthetic_ratio):
            sample = synthetic_sequence(self.stream, n, task=self.synthetic_task, seed=self.seed,
                                        sequence_number=number, encode=self.encode,
                                        haystack=self.synthetic_haystack, tokenizer=self.tokenizer,
                                        filler=self.filler)
            if sample is not None:
                return sample
        return next_packed(self.stream, n)

    def step_batches(self, step: int, layout: Layout) -> list[dict[str, torch.Tensor]]:
        """This rank's micro-batches of optimizer step ``step`` (consumes the whole step's data)."""
        length = step_length(step, seed=self.seed, seq_len=self.seq_len, min_seq_len=self.min_seq_len,
                             multiple=layout.token_multiple)
        per_micro = layout.dp_size * layout.batch_size
        sequences = [self.next_sequence(length) for _ in range(per_micro * layout.accumulation)]
        ranges = layout.ranges(length)
        batches = []
        for micro in range(layout.accumulation):
            first = micro * per_micro + layout.dp_rank * layout.batch_size
            mine = sequences[first:first + layout.batch_size]
            batches.append({
                "input_ids": torch.tensor([_cut(s.input_ids, ranges) for s in mine], dtype=torch.long),
                "labels": torch.tensor([_cut(s.labels, ranges) for s in mine], dtype=torch.long),
                "position_ids": torch.tensor([_cut(s.position_ids, ranges) for s in mine], dtype=torch.long),
            })
        return batches


def training_documents(config: StageConfig) -> list[str]:
    """The corpus documents used for training (validation ones held out, as evaluation sees them)."""
    data = config.data
    docs = load_documents(data.source, fmt=str(data.format), text_field=data.text_field)
    train, _ = split_documents(docs, data.validation_fraction, data.seed)
    return train


def build_stage_data(config: StageConfig, tokenizer: Tokenizer, tokenizer_dir: Path) -> StageData:
    """The training documents from the stage's token cache (tokenized once per stage, memory-mapped:
    :mod:`ctxext_trainer.data.token_cache`) in a deterministic, resumable stage stream."""
    data = config.data
    token_docs = stage_token_corpus(config, tokenizer, tokenizer_dir).training()
    return StageData(token_docs, eos_id=tokenizer.eos_id, seed=data.seed, seq_len=config.seq_len,
                     min_seq_len=config.min_seq_len, upsample_long=data.long_context_upsampling,
                     synthetic_ratio=data.synthetic_retrieval_ratio,
                     synthetic_task=str(data.synthetic_retrieval_task), encode=tokenizer.encode,
                     synthetic_haystack=str(data.synthetic_haystack), tokenizer=tokenizer)
