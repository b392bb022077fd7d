"""The evaluation suite: retrieval grids and perplexity on one model, as one ``evaluation`` dict.

:func:`evaluate_model` is shared by the trainer (after each stage, through
:func:`ctxext_trainer.eval.stage.evaluate_stage`), the local runner (the base model's baseline) and
``ctxext eval``. Result for tasks passkey + perplexity at lengths 128, 512, depths 0, 0.5, 1::

    {"passkeyAccuracy": {"128": 1.0, "512": 0.8},
     "perplexity": {"128": 3.1, "512": 2.9},
     "positionLoss": [{"from": 0, "to": 128, "loss": 1.2}, ..., {"from": 384, "to": 512, "loss": 1.0}],
     "grids": {"passkey": {"128": {"0": 1.0, "0.5": 1.0, "1": 1.0}, "512": {"0": 0.6, ...}}},
     "retrievalAccuracy": {"128": 1.0, "512": 0.8}, "effectiveLength": 128,           # at threshold 0.85
     "effectiveLengthByTask": {"passkey": 128}, "effectiveLengthThreshold": 0.85,
     "samplesPerCell": 5,
     "plots": ["<output_dir>/eval/passkey_heatmap.png", "<output_dir>/eval/perplexity_by_position.png"],
     "notes": ["needle at 128: the prompt needs 160 tokens before any haystack"]}   # only when any

Accuracy at a length is the mean over all its depths and samples; ``positionLoss`` is at the
longest length. With a torch.distributed group initialized, ranks split the samples and sequences
(see :mod:`ctxext_trainer.eval.parallel`) and every rank returns the same dict; plots and metrics
come from rank 0.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from ctxext.effective_length import DEFAULT_THRESHOLD, effective_length_summary
from ctxext.model_info import BUILTIN_DIR
from ctxext_trainer.eval import metrics as eval_metrics
from ctxext_trainer.eval.generate import greedy_generate, own_attention, truncate_at_eos
from ctxext_trainer.eval.haystack import SentencePool, read_corpus_texts
from ctxext_trainer.eval.parallel import Split, gather, shard, split_of, world
from ctxext_trainer.eval.perplexity import run_perplexity
from ctxext_trainer.eval.sharded import sharded_greedy
from ctxext_trainer.eval.tasks import CORPUS_TASKS, RETRIEVAL_TASKS, PromptTooLong, build_sample, score
from ctxext_trainer.tokenizer import Tokenizer

log = logging.getLogger(__name__)
ALL_TASKS = (*RETRIEVAL_TASKS, "perplexity")
METRIC_OF_TASK = {t: f"{t}Accuracy" for t in RETRIEVAL_TASKS}
BUILTIN_CORPUS = BUILTIN_DIR / "tiny-corpus"
TOKENS_PER_BATCH = 16384
"""Default tokens per model call: batch = max(1, TOKENS_PER_BATCH // length)."""


def builtin_corpus_texts() -> list[str] | None:
    """The documents of the shipped tiny corpus, or None when it is not installed."""
    try:
        return read_corpus_texts(BUILTIN_CORPUS)
    except FileNotFoundError:
        return None


def _key(x: float) -> str:
    """Depth key: ``_key(0.5) == '0.5'``, ``_key(1.0) == '1'``."""
    return f"{x:g}"


def run_retrieval(model: Any, tokenizer: Tokenizer, task: str, *, lengths: Sequence[int], depths: Sequence[float],
                  samples_per_cell: int, seed: int, pool: SentencePool, rank: int, world_size: int,
                  tokens_per_batch: int, notes: list[str], split: Callable[[int], Split] | None = None
                  ) -> dict[int, dict[float, float]]:
    """Accuracy grid length → depth → fraction correct of one task (lengths that do not fit are noted).
    ``split(length)``: how that length's samples are spread (default: each rank alone)."""
    local: list[tuple[int, float, bool]] = []
    for length in sorted(lengths):
        try:
            samples = [build_sample(task, length=length, depth=d, index=i, seed=seed, tokenizer=tokenizer, pool=pool)
                       for d in depths for i in range(samples_per_cell)]
        except PromptTooLong as exc:
            notes.append(str(exc))
            continue
        started = time.monotonic()
        max_new = max(s.max_new_tokens for s in samples)
        how = split(length) if split else Split(rank, world_size)
        per_call = 1 if how.group is not None else max(1, tokens_per_batch // length)
        for batch in shard(samples, rank=how.part, world_size=how.parts, batch=per_call):
            if how.group is not None:
                outs = [sharded_greedy(model, list(batch[0][1].input_ids), max_new_tokens=max_new,
                                       group=how.group, pad_id=tokenizer.pad_id)]
            else:
                outs = greedy_generate(model, [s.input_ids for _, s in batch], max_new_tokens=max_new,
                                       pad_id=tokenizer.pad_id)
            for (i, s), toks in zip(batch, outs, strict=True):
                if i >= 0 and how.lead:
                    text = tokenizer.decode(truncate_at_eos(toks, tokenizer.eos_id))
                    local.append((s.length, s.depth, score(s, text)))
        log.info("%s at %d: %d samples in %.1fs on rank %d", task, length, len(samples), time.monotonic() - started,
                 rank)
    grid: dict[int, dict[float, list[bool]]] = {}
    for length, depth, ok in gather(local, world_size):
        grid.setdefault(length, {}).setdefault(depth, []).append(ok)
    return {n: {d: sum(v) / len(v) for d, v in sorted(row.items())} for n, row in sorted(grid.items())}


def _check_args(tasks: Sequence[str], lengths: Sequence[int], depths: Sequence[float], samples: int) -> None:
    unknown = [t for t in tasks if t not in ALL_TASKS]
    if unknown:
        raise ValueError(f"unknown task(s) {', '.join(unknown)}; expected some of {', '.join(ALL_TASKS)}")
    if not lengths or any(n < 2 for n in lengths):
        raise ValueError(f"lengths must be integers ≥ 2, got {list(lengths)}")
    if not depths or any(not 0.0 <= d <= 1.0 for d in depths):
        raise ValueError(f"depths must lie in [0, 1], got {list(depths)}")
    if samples < 1:
        raise ValueError(f"samples per cell must be ≥ 1, got {samples}")


def evaluate_model(model: Any, tokenizer: Tokenizer, *, tasks: Sequence[str], lengths: Sequence[int],
                   depths: Sequence[float], samples_per_cell: int, seed: int, original_length: int,
                   output_dir: str | Path | None, corpus_texts: Sequence[str] | None = None,
                   perplexity_texts: Sequence[str] | None = None, labels: Mapping[str, str] | None = None,
                   registry: Any = None, tokens_per_batch: int = TOKENS_PER_BATCH, bucket_width: int | None = None,
                   title: str = "", effective_length_threshold: float = DEFAULT_THRESHOLD,
                   sequence_group: Any = None, shard_above: int = 0,
                   perplexity_tokens: Sequence[Sequence[int]] | None = None) -> dict[str, Any]:
    """Run ``tasks`` on ``model`` and return the evaluation dict (format above).

    ``corpus_texts`` are the haystack of the needle tasks and, unless ``perplexity_texts`` is given,
    the perplexity text; both default to the builtin tiny corpus. ``perplexity_tokens`` (tokenized
    documents, e.g. the token cache's held-out ones) replace the perplexity text when given. Plots go
    to ``output_dir/eval/`` (none when ``output_dir`` is None). ``labels`` (cej, cej_namespace, stage) label
    the gauges in ``registry``. ``bucket_width`` defaults to ``original_length``. With any retrieval task the dict
    also holds ``retrievalAccuracy``, ``effectiveLength`` and ``effectiveLengthByTask``
    (:mod:`ctxext.effective_length`, at ``effective_length_threshold``). Raises ValueError on bad
    arguments or when a corpus task has no corpus text.

    ``sequence_group`` (the stage's sequence-parallel group) with ``shard_above``: lengths above
    ``shard_above`` are evaluated one sequence per group, sharded over its ranks as in training
    (:mod:`ctxext_trainer.eval.sharded`); shorter ones one sequence per rank. The model attends with
    its own attention (and padding mask) whatever a training stage registered (:func:`own_attention`).
    """
    tasks, depths = list(dict.fromkeys(tasks)), sorted(set(depths))
    lengths = sorted(set(lengths))
    _check_args(tasks, lengths, depths, samples_per_cell)
    rank, world_size = world()
    if corpus_texts is None and (any(t in CORPUS_TASKS for t in tasks) or "perplexity" in tasks):
        corpus_texts = builtin_corpus_texts()
    if corpus_texts is None and any(t in CORPUS_TASKS for t in tasks):
        raise ValueError(f"{', '.join(t for t in tasks if t in CORPUS_TASKS)} need corpus text "
                         f"(none given and {BUILTIN_CORPUS} is missing)")
    lm = model
    was_training = bool(getattr(lm, "training", False))
    lm.eval()
    sharded = split_of(rank, world_size, sequence_group)

    def split(length: int) -> Split:
        return sharded if length > shard_above else Split(rank, world_size)
    notes: list[str] = []
    grids: dict[str, dict[int, dict[float, float]]] = {}
    perplexity: dict[int, float] = {}
    buckets: dict[int, list[dict[str, float]]] = {}
    own = contextlib.ExitStack()
    own.enter_context(own_attention())
    try:
        for task in (t for t in tasks if t in RETRIEVAL_TASKS):
            pool = (SentencePool.classic(tokenizer.encode) if task == "passkey"
                    else SentencePool.from_texts(corpus_texts or [], tokenizer.encode))
            grids[task] = run_retrieval(lm, tokenizer, task, lengths=lengths, depths=depths,
                                        samples_per_cell=samples_per_cell, seed=seed, pool=pool, rank=rank,
                                        world_size=world_size, tokens_per_batch=tokens_per_batch, notes=notes,
                                        split=split)
        if "perplexity" in tasks:
            texts = perplexity_texts if perplexity_texts is not None else corpus_texts
            if texts or perplexity_tokens:
                perplexity, buckets = run_perplexity(
                    lm, tokenizer, texts, lengths=lengths, count=samples_per_cell,
                    bucket_width=bucket_width or original_length, rank=rank, world_size=world_size,
                    tokens_per_batch=tokens_per_batch, split=split, token_docs=perplexity_tokens)
            missing = [n for n in lengths if n not in perplexity]
            if missing:
                notes.append(f"perplexity: not enough text for length(s) {', '.join(map(str, missing))}")
    finally:
        own.close()
        lm.train(was_training)
    evaluation: dict[str, Any] = {}
    for task, grid in grids.items():
        evaluation[METRIC_OF_TASK[task]] = {str(n): sum(row.values()) / len(row) for n, row in grid.items() if row}
    evaluation.update(effective_length_summary(evaluation, threshold=effective_length_threshold))
    if perplexity:
        evaluation["perplexity"] = {str(n): v for n, v in perplexity.items()}
        evaluation["positionLoss"] = buckets[max(buckets)]
    evaluation["grids"] = {t: {str(n): {_key(d): v for d, v in row.items()} for n, row in g.items()}
                           for t, g in grids.items()}
    evaluation["samplesPerCell"] = samples_per_cell
    evaluation["plots"] = []
    if rank == 0 and output_dir is not None:
        from ctxext_trainer.eval.plots import heatmap, loss_plot

        out = Path(output_dir) / "eval"
        for task, grid in grids.items():
            if grid:
                name = f"{title + ': ' if title else ''}{task} accuracy"
                path = heatmap(grid, title=name, path=out / f"{task}_heatmap.png")
                evaluation["plots"].append(str(path))
        if perplexity:
            path = loss_plot(buckets, perplexity, original_length=original_length, title=title or "perplexity",
                             path=out / "perplexity_by_position.png")
            evaluation["plots"].append(str(path))
    if world_size > 1:
        evaluation["plots"] = gather(evaluation["plots"], world_size)
    if rank == 0:
        eval_metrics.publish(grids, perplexity, labels=labels, registry=registry)
    if notes:
        evaluation["notes"] = notes
    return evaluation
