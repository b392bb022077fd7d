"""Evaluation's corpus, taken from the stage's token cache (issue 25 item 6).

Stage evaluation runs on every rank. It used to read the corpus as text (first the whole corpus,
then a bounded prefix) and tokenize its perplexity text itself, and it scanned the whole corpus
for held-out documents when ``validationFraction`` was small. Now it maps the token cache the
stage's training built (:mod:`ctxext_trainer.data.token_cache`; built by whichever process comes
first, e.g. the base model's evaluation before stage 1) and reads no corpus file:

* **perplexity** packs the held-out documents' tokens, ``tokens[offsets[i]:offsets[i+1]]`` for
  each document with ``train[i]`` False, each followed by ``eos`` (:meth:`TokenCorpus.held_out`,
  the complement of what training streams: no token is in both). Nothing is tokenized; only the
  ``samplesPerCell × longest`` tokens used are copied out of the map.
* **needle haystacks** (only when a corpus task — needle, multiKeyNiah, multiValueNiah,
  variableTracking — is evaluated) need sentences, since a fact lands on a sentence boundary: the
  first ``budget`` tokens of the cache, document by document, are decoded back to text::

      budget = max(MIN_TOKENS, longest length · (samples per cell + 1))

  ``MIN_TOKENS`` (256 Ki tokens) gives short evaluations sentences from many documents; each
  sample's haystack (at most ``longest`` tokens) starts at a seeded sentence and runs on. Decoding
  is exact for the byte tokenizer and Llama-3's byte-level BPE. Only the sentences a haystack uses
  are tokenized (one by one, as before). Before, evaluation kept up to 2 MiB of text: for a
  corpus under 256 Ki tokens the haystacks are unchanged, for larger ones they start in a shorter
  prefix. passkey (the classic filler) and perplexity decode nothing.

When the split holds no document back (``validationFraction`` 0, or a one-document corpus)
perplexity is measured on the training documents and the evaluation says so in a note.

>>> eval_token_budget([128, 256], samples_per_cell=3)  # the floor
262144
>>> eval_token_budget([1_048_576], samples_per_cell=4)  # 5 Mi tokens of haystack at 1M
5242880
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ctxext_trainer.data.token_cache import DocumentTokens, TokenCorpus, stage_token_corpus

MIN_TOKENS = 1 << 18
NO_HELD_OUT = "perplexity measured on the training corpus (the validation split holds no document)"


def eval_token_budget(lengths: Sequence[int], samples_per_cell: int) -> int:
    """Tokens of the cache decoded into haystack text per rank."""
    return max(MIN_TOKENS, max(lengths) * (samples_per_cell + 1))


def haystack_texts(corpus: TokenCorpus, decode: Callable[[list[int]], str], budget: int) -> list[str]:
    """The documents of the first ``budget`` tokens of the cache, decoded (the last one cut at the bound).

    All documents, in corpus order, as the needle haystacks always used (held-out ones included:
    the needle tasks score retrieval, not the text's likelihood)."""
    texts: list[str] = []
    offsets = corpus.offsets
    for i in range(len(offsets) - 1):
        start, end = int(offsets[i]), min(int(offsets[i + 1]), budget)
        if start >= budget:
            break
        if end > start:
            text = decode(corpus.tokens[start:end].tolist())
            if text.strip():
                texts.append(text)
    return texts


@dataclass
class EvalCorpus:
    """What stage evaluation reads: haystack texts, perplexity documents (tokens), a note if any."""

    haystack: list[str]
    perplexity: DocumentTokens
    note: str | None
    cache: TokenCorpus


def stage_eval_corpus(config: Any, tokenizer: Any, tokenizer_dir: Path, *, haystack: bool = True) -> EvalCorpus:
    """The stage's evaluation corpus from its token cache (mapped, or built once if evaluation runs first);
    ``haystack`` False: no haystack text (no corpus task is evaluated)."""
    corpus = stage_token_corpus(config, tokenizer, tokenizer_dir)
    lengths = config.eval_lengths or [config.original_context_length, config.seq_len]
    budget = eval_token_budget(lengths, config.evaluation.samples_per_cell)
    texts = haystack_texts(corpus, tokenizer.decode, budget) if haystack else []
    held = corpus.held_out()
    if len(held):
        return EvalCorpus(texts, held, None, corpus)
    return EvalCorpus(texts, corpus.training(), NO_HELD_OUT, corpus)
