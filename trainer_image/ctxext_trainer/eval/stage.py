"""Evaluation after a stage: what the trainer calls once the stage's model is saved.

``evaluate_stage`` runs the stage config's evaluation (tasks, depths, samples per cell, seed) at its
``eval_lengths`` (L0 and every stage length so far, unless the spec lists lengths), with position
buckets of width L0, plots under ``<output_dir>/eval/`` and gauges labelled with the job and stage.
Needle haystacks and perplexity come from the stage's token cache, the one its training streams
(:mod:`ctxext_trainer.eval.corpus`: no corpus file is read when it exists, and it is built once
when evaluation runs first): perplexity on its held-out documents (the ``validationFraction`` split,
disjoint from what training streams), or — when the split holds none back, as with the
one-document tiny corpus — on the training documents (noted).

Called on every rank of the stage (after ``torch.distributed`` is initialized): the ranks split the
samples (:mod:`ctxext_trainer.eval.parallel`); ``model`` is the plain Hugging Face module. Lengths up
to L0 run one prompt per rank; longer ones one sequence per ``sequence_group`` (the stage's
sequence-parallel ranks), sharded as in training (:mod:`ctxext_trainer.eval.sharded`), so no rank
holds a long sequence's activations or any KV cache of it. Example::

    evaluation = evaluate_stage(model, tokenizer, config, output_dir=Path(config.output_dir),
                                is_rank0=topo.is_rank0)
    # {"passkeyAccuracy": {"128": 1.0, "256": 0.9}, "perplexity": {...}, "positionLoss": [...], "plots": [...]}

An allocator's out-of-memory error during evaluation (CUDA's, or the CPU allocator's) becomes
:class:`ctxext_trainer.eval.oom.EvaluationOutOfMemory`: the same model at the same lengths runs out
again on every retry, so the trainer reports it as permanent (reasonCode ``EvaluationOutOfMemory``,
exit code 2) with what to change. Fault injection for tests: ``CTXEXT_INJECT_EVAL_ALLOCATION_BYTES=N`` allocates N bytes
when evaluation starts.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ctxext.stage_config import StageConfig
from ctxext_trainer.eval.corpus import NO_HELD_OUT, stage_eval_corpus
from ctxext_trainer.eval.oom import EvaluationOutOfMemory, out_of_memory
from ctxext_trainer.eval.suite import builtin_corpus_texts, evaluate_model
from ctxext_trainer.eval.tasks import CORPUS_TASKS
from ctxext_trainer.tokenizer import Tokenizer

log = logging.getLogger(__name__)
INJECT_ALLOCATION_ENV = "CTXEXT_INJECT_EVAL_ALLOCATION_BYTES"



def stage_texts(config: Any) -> tuple[list[str] | None, list[str] | None, str | None]:
    """(haystack texts, perplexity texts, note) of a config's corpus read as text (``ctxext eval --job``,
    which has no stage and so no token cache); the builtin corpus if it cannot be read."""
    try:
        from ctxext_trainer.data.augment import split_documents
        from ctxext_trainer.data.sources import load_documents

        data = config.data
        docs = load_documents(data.source, fmt=str(data.format), text_field=data.text_field)
        _, held_out = split_documents(docs, data.validation_fraction, data.seed)
    except Exception as exc:  # a missing corpus must not lose the rest of the evaluation
        log.warning("evaluation corpus %s unreadable (%s); using the builtin tiny corpus", config.data.source, exc)
        builtin = builtin_corpus_texts()
        return builtin, builtin, f"corpus {config.data.source} unreadable ({exc}); used the builtin tiny corpus"
    if held_out:
        return docs, held_out, None
    return docs, docs, NO_HELD_OUT


def stage_corpus(config: StageConfig, tokenizer: Tokenizer
                 ) -> tuple[list[str] | None, Sequence[Any] | None, list[str] | None, str | None]:
    """(haystack texts, perplexity token documents, perplexity texts, note) of a stage: from the stage's
    token cache (:mod:`ctxext_trainer.eval.corpus`), the builtin corpus's texts if it cannot be had."""
    from ctxext_trainer.model_loading import resolve_model_path

    try:
        corpus = stage_eval_corpus(config, tokenizer, Path(resolve_model_path(config.model_path)),
                                   haystack=any(str(t) in CORPUS_TASKS for t in config.evaluation.tasks))
    except Exception as exc:  # a missing corpus must not lose the rest of the evaluation
        log.warning("evaluation corpus %s unreadable (%s); using the builtin tiny corpus", config.data.source, exc)
        builtin = builtin_corpus_texts()
        return builtin, None, builtin, f"corpus {config.data.source} unreadable ({exc}); used the builtin tiny corpus"
    return corpus.haystack, corpus.perplexity, None, corpus.note


def evaluate_stage(model: Any, tokenizer: Tokenizer, config: StageConfig, *, output_dir: Path, is_rank0: bool,
                   registry: Any = None, sequence_group: Any = None, title: str | None = None) -> dict[str, Any]:
    """The stage's ``evaluation`` dict (metric → {"<length>": value}, positionLoss at the longest
    length, plots). ``registry``: the trainer's prometheus registry, so its /metrics serves the gauges;
    ``title``: the plots' title (default: the job, stage and seqLen)."""
    spec = config.evaluation
    lengths: Sequence[int] = config.eval_lengths or sorted({config.original_context_length, config.seq_len})
    tasks = [str(t) for t in spec.tasks]
    haystack, ppl_tokens, ppl_texts, note = stage_corpus(config, tokenizer)
    notes = [note] if note else []
    if not haystack and any(t in CORPUS_TASKS for t in tasks):
        dropped = [t for t in tasks if t in CORPUS_TASKS]
        notes.append(f"{', '.join(dropped)} skipped: no corpus text")
        tasks = [t for t in tasks if t not in CORPUS_TASKS]
    try:
        if os.environ.get(INJECT_ALLOCATION_ENV):
            import torch

            torch.empty(int(os.environ[INJECT_ALLOCATION_ENV]), dtype=torch.uint8)
        evaluation = evaluate_model(
            model, tokenizer, tasks=tasks, lengths=lengths, depths=spec.depths,
            samples_per_cell=spec.samples_per_cell, seed=spec.seed, original_length=config.original_context_length,
            output_dir=output_dir, corpus_texts=haystack, perplexity_texts=ppl_texts, registry=registry,
            labels={"cej": config.job, "cej_namespace": config.namespace, "stage": str(config.stage)},
            title=title or f"{config.job} stage {config.stage}/{config.total_stages} (seqLen {config.seq_len})",
            effective_length_threshold=spec.effective_length_threshold, sequence_group=sequence_group,
            shard_above=config.original_context_length, perplexity_tokens=ppl_tokens)
    except Exception as exc:
        if not out_of_memory(exc):
            raise
        sp = config.sequence_parallel
        raise EvaluationOutOfMemory(
            f"stage {config.stage}'s evaluation at lengths {', '.join(map(str, lengths))} ran out of memory "
            f"({str(exc).splitlines()[0][:200]}); lengths above {config.original_context_length} are sharded over "
            f"sequenceParallel {sp}. The stage's model is exported; a retry would run out again: evaluate shorter "
            "lengths (spec.evaluation.lengths), raise the stage's sequenceParallel, or disable evaluation") from None
    if notes:
        evaluation["notes"] = notes + list(evaluation.get("notes", []))
    if is_rank0:
        summary = {k: v for k, v in evaluation.items()
                   if k.endswith("Accuracy") or k in ("perplexity", "effectiveLength")}
        log.info("stage %d evaluation: %s", config.stage, summary)
    return evaluation
