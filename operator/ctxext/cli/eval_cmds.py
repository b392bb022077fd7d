"""`ctxext eval`: run the evaluation suite on any local model (base model, stage output, GGUF file).

torch and transformers are imported inside the command only, so ``ctxext`` itself (the operator
image) imports without them. Arguments are checked before anything heavy is loaded; a bad one is
one line on stderr and exit 2::

    $ ctxext eval --model /models/smollm2 --lengths 1024,4096 --depths 0,0.5,1 --tasks passkey,needle
    $ ctxext eval --model out/stage-2/model --lengths 128,512 --output out/base -o json
    $ ctxext eval --model /nope --lengths 1024
    error: --model: /nope does not exist
"""

from __future__ import annotations

import json
import logging
import time
from enum import StrEnum
from pathlib import Path
from typing import Any, cast

import typer
from rich.table import Table

from ctxext.cli.common import OutputFormat as _Formats
from ctxext.cli.common import console, emit, err_console, reports_errors
from ctxext.errors import SpecError

DEFAULT_DEPTHS = [0.0, 0.25, 0.5, 0.75, 1.0]
DEFAULT_SAMPLES = 5
DEFAULT_SEED = 20240917
TASKS = ("passkey", "needle", "multiKeyNiah", "multiValueNiah", "variableTracking", "perplexity")


class EvalOutput(StrEnum):
    table = "table"
    json = "json"


def parse_lengths(text: str) -> list[int]:
    """``"1024,4K"`` → ``[1024, 4096]`` (sorted, unique); SpecError on anything else.

    >>> parse_lengths("4k, 1024")
    [1024, 4096]
    """
    out = set()
    for part in (p.strip() for p in text.split(",") if p.strip()):
        scale = 1024 if part[-1:] in ("k", "K") else 1
        digits = part[:-1] if scale > 1 else part
        if not digits.isdigit() or int(digits) * scale < 16:
            raise SpecError([("--lengths", f"{part!r} is not a length in tokens (an integer ≥ 16, e.g. 1024 or 4K)")])
        out.add(int(digits) * scale)
    if not out:
        raise SpecError([("--lengths", "give at least one length, e.g. --lengths 1024,4096")])
    return sorted(out)


def parse_depths(text: str) -> list[float]:
    """``"0,0.5,1"`` → ``[0.0, 0.5, 1.0]``; each in [0, 1]."""
    out = set()
    for part in (p.strip() for p in text.split(",") if p.strip()):
        try:
            value = float(part)
        except ValueError:
            value = -1.0
        if not 0.0 <= value <= 1.0:
            raise SpecError([("--depths", f"{part!r} is not a depth between 0 (start) and 1 (end)")])
        out.add(value)
    if not out:
        raise SpecError([("--depths", "give at least one depth, e.g. --depths 0,0.5,1")])
    return sorted(out)


def parse_tasks(text: str) -> list[str]:
    tasks = list(dict.fromkeys(p.strip() for p in text.split(",") if p.strip()))
    bad = [t for t in tasks if t not in TASKS]
    if bad or not tasks:
        raise SpecError([("--tasks", f"unknown task {', '.join(bad) or '(none)'}; choose from {', '.join(TASKS)}")])
    return tasks


def _tables(evaluation: dict[str, Any]) -> list[tuple[str, Table]]:
    """(heading, table) pairs: retrieval accuracy grid, perplexity by length, loss by position."""
    tables = []
    grids: dict[str, dict[str, dict[str, float]]] = evaluation.get("grids", {})
    depths = sorted({d for g in grids.values() for row in g.values() for d in row}, key=float)
    if grids:
        t = Table()
        for col in ("task", "length", "mean", *(f"depth {float(d):.0%}" for d in depths)):
            t.add_column(col, justify="left" if col == "task" else "right")
        for task, grid in grids.items():
            for length, row in grid.items():
                mean = evaluation.get(f"{task}Accuracy", {}).get(length)
                t.add_row(task, length, "-" if mean is None else f"{mean:.2f}",
                          *("-" if d not in row else f"{row[d]:.2f}" for d in depths))
        tables.append((f"retrieval accuracy (samples per cell: {evaluation.get('samplesPerCell')})", t))
    if evaluation.get("retrievalAccuracy"):
        t = Table()
        for col in ("", *evaluation["retrievalAccuracy"]):
            t.add_column(col, justify="left" if not col else "right")
        t.add_row("mean over tasks", *(f"{v:.2f}" for v in evaluation["retrievalAccuracy"].values()))
        by_task = ", ".join(f"{k} {v}" for k, v in evaluation.get("effectiveLengthByTask", {}).items())
        tables.append((f"effective length {evaluation.get('effectiveLength')} at threshold "
                       f"{evaluation.get('effectiveLengthThreshold')} (by task: {by_task})", t))
    if evaluation.get("perplexity"):
        t = Table()
        t.add_column("length", justify="right")
        t.add_column("perplexity", justify="right")
        for length, value in evaluation["perplexity"].items():
            t.add_row(length, f"{value:.3f}")
        tables.append(("perplexity", t))
    if evaluation.get("positionLoss"):
        t = Table()
        t.add_column("positions", justify="right")
        t.add_column("loss", justify="right")
        for row in evaluation["positionLoss"]:
            t.add_row(f"[{row['from']}, {row['to']})", f"{row['loss']:.4f}")
        tables.append(("loss by position (longest length)", t))
    return tables


@reports_errors
def eval_(
    model: Path = typer.Option(..., "--model", help="Hugging Face model directory, or a .gguf file.",
                               show_default=False),
    lengths: str | None = typer.Option(None, "--lengths", show_default=False,
                                       help="Comma-separated lengths in tokens, e.g. 1024,4096 or 1K,4K (required "
                                            "without --manifest; with it: the run's lengths). Perplexity at a "
                                            "length is measured on the start of the longest length's sequences, "
                                            "so it depends on the longest length given."),
    manifest: Path | None = typer.Option(
        None, "--manifest", metavar="MANIFEST", show_default=False,
        help="Measure as `ctxext run` and the operator do for this ContextExtensionJob: perplexity on the "
             "held-out split of its data.source, its evaluation samplesPerCell, seed, depths and threshold, "
             "and L0 = its originalContextLength. The numbers then equal the run's report at the same lengths "
             "(explicit options below still win)."),
    depths: str | None = typer.Option(None, "--depths", show_default=False,
                                      help="Comma-separated depths in [0, 1] [default: 0,0.25,0.5,0.75,1]."),
    tasks: str = typer.Option("passkey,perplexity", "--tasks", help=f"Comma-separated, from: {', '.join(TASKS)}."),
    samples: int | None = typer.Option(None, "--samples", min=1, max=10000, show_default=False,
                                       help="Samples per (task, length, depth) cell, and the number of packed "
                                            "sequences perplexity is averaged over [default: 5]. Perplexity "
                                            "from 1 or 2 sequences is noisy."),
    seed: int | None = typer.Option(None, "--seed", show_default=False, help="Seed of the samples "
                                    "[default: 20240917]."),
    corpus: Path | None = typer.Option(None, "--corpus", help="Text/jsonl file or directory for needle haystacks "
                                       "and perplexity (default: the whole builtin tiny corpus; a run measures "
                                       "on its held-out split — see --manifest)."),
    original_length: int | None = typer.Option(None, "--original-length", min=1,
                                               help="L0 (position-loss bucket width); default: --manifest's "
                                               "originalContextLength, else the model's max_position_embeddings "
                                               "(for a model ctxext extended, that is its new length: one bucket)."),
    output_dir: Path | None = typer.Option(None, "--output", help="Write plots and evaluation.json to DIR/eval/."),
    device: str = typer.Option("auto", "--device", help="cpu, cuda or auto."),
    threshold: float | None = typer.Option(None, "--threshold", min=0.01, max=1.0, show_default=False,
                                           help="Mean retrieval accuracy a length must reach to count towards the "
                                           "effective length [default: 0.85, RULER's]."),
    output: EvalOutput = typer.Option(EvalOutput.table, "-o", "--output-format", help="table or json."),
) -> None:
    """Evaluate a local model: passkey / needle grids over lengths × depths, perplexity by length.

    Perplexity is exp(mean next-token loss) over --samples packed sequences of the corpus at each length;
    with --manifest it is measured on the same text, sequences and L0 as the run's report."""
    task_list = parse_tasks(tasks)
    job = None
    if manifest is not None:
        from ctxext.manifest import load_job

        job = load_job(manifest)
    if lengths is not None:
        length_list = parse_lengths(lengths)
    elif job is not None:
        from ctxext.local_run.report import run_lengths
        from ctxext.planner import plan_curriculum

        length_list = run_lengths(plan_curriculum(job.spec), job.spec.evaluation.lengths)
    else:
        raise SpecError([("--lengths", "give the lengths to evaluate, e.g. --lengths 1024,4096 (or --manifest)")])
    spec = job.spec.evaluation if job is not None else None
    depth_list = parse_depths(depths) if depths is not None else (list(spec.depths) if spec else DEFAULT_DEPTHS)
    samples = samples if samples is not None else (spec.samples_per_cell if spec else DEFAULT_SAMPLES)
    seed = seed if seed is not None else (spec.seed if spec else DEFAULT_SEED)
    threshold = threshold if threshold is not None else (spec.effective_length_threshold if spec else 0.85)
    if job is not None and original_length is None:
        from ctxext.planner import plan_curriculum

        original_length = plan_curriculum(job.spec).original_context_length
    if not model.exists():
        raise SpecError([("--model", f"{model} does not exist")])
    if corpus is not None and not corpus.exists():
        raise SpecError([("--corpus", f"{corpus} does not exist")])
    if device not in ("auto", "cpu", "cuda"):
        raise SpecError([("--device", f"{device!r} is not one of auto, cpu, cuda")])

    import torch  # lazy: the operator image has no torch

    from ctxext_trainer.eval.haystack import read_corpus_texts
    from ctxext_trainer.eval.loading import ModelNotFound, load_for_eval
    from ctxext_trainer.eval.suite import evaluate_model

    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        texts = read_corpus_texts(corpus) if corpus is not None else None
    except (FileNotFoundError, ValueError) as exc:
        raise SpecError([("--corpus", str(exc))]) from None
    perplexity_texts = None
    if job is not None and corpus is None:  # the run's texts: the corpus, perplexity on its held-out split
        from types import SimpleNamespace

        from ctxext_trainer.eval.stage import stage_texts

        # stage_texts reads only config.data (the run's DataSpec); the trainer calls it with the stage config
        texts, perplexity_texts, note = stage_texts(cast(Any, SimpleNamespace(data=job.spec.data)))
        if note:
            err_console.print(f"[yellow]note:[/] {note}", highlight=False)
    started = time.monotonic()
    try:
        lm, tokenizer = load_for_eval(model, device=device)
    except ModelNotFound as exc:
        raise SpecError([("--model", str(exc))]) from None
    l0 = original_length or int(getattr(lm.config, "max_position_embeddings", 0) or min(length_list))
    try:
        evaluation = evaluate_model(lm, tokenizer, tasks=task_list, lengths=length_list, depths=depth_list,
                                    samples_per_cell=samples, seed=seed, original_length=l0, output_dir=output_dir,
                                    corpus_texts=texts, perplexity_texts=perplexity_texts, title=model.name,
                                    effective_length_threshold=threshold)
    except ValueError as exc:
        raise SpecError([("", str(exc))]) from None
    if output_dir is not None:
        (output_dir / "eval").mkdir(parents=True, exist_ok=True)
        (output_dir / "eval" / "evaluation.json").write_text(json.dumps(evaluation, indent=2))
    if output is EvalOutput.json:
        emit(evaluation, _Formats.json)
        return
    for heading, table in _tables(evaluation):
        console.print(f"[bold]{model.name}[/]: {heading}", highlight=False)
        console.print(table)
    for note in evaluation.get("notes", []):
        err_console.print(f"[yellow]note:[/] {note}", highlight=False)
    for plot in evaluation.get("plots", []):
        console.print(f"plot: {plot}", highlight=False)
    console.print(f"evaluated in {time.monotonic() - started:.1f}s on {device}", highlight=False)


def register(app: typer.Typer) -> None:
    app.command("eval")(eval_)
