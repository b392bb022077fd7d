"""`ctxext eval --manifest` measures what `ctxext run` reports (issue #23 item 7).

Without it, `ctxext eval` measured perplexity on the whole builtin corpus with --samples sequences
and L0 = the model's max_position_embeddings, so its numbers moved with --samples and never matched
the report (which uses the held-out split, samplesPerCell sequences and originalContextLength).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from ctxext.cli.main import app
from ctxext.local_run.layout import Workdir, base_model_dir, local_stage_config
from ctxext.local_run.report import run_lengths
from ctxext.manifest import load_job
from ctxext.planner import plan_curriculum
from tests.unit.helpers import example, with_path


def test_eval_with_the_manifest_gives_the_runs_baseline_numbers(tmp_path: Path) -> None:
    from ctxext_trainer.tiny.evaluate import evaluate_config

    obj = example("tiny-cpu.yaml")
    for path, value in {"spec.targetContextLength": 512, "spec.curriculum.stages": [{"seqLen": 256}, {"seqLen": 512}],
                        "spec.evaluation.tasks": ["perplexity"], "spec.evaluation.samplesPerCell": 3,
                        "spec.evaluation.lengths": [128, 256],
                        "spec.evaluation.gates": []}.items():
        obj = with_path(obj, path, value)
    manifest = tmp_path / "m.yaml"
    manifest.write_text(yaml.safe_dump(obj))
    job = load_job(manifest)
    plan = plan_curriculum(job.spec)
    # What LocalRun.baseline evaluates: the base model at its own theta, at the run's lengths.
    config = local_stage_config(job, plan, Workdir(tmp_path / "run"), 1, metrics_port=0)
    lengths = run_lengths(plan, job.spec.evaluation.lengths)
    assert lengths == [128, 256, 512]
    config = config.model_copy(update={"eval_lengths": lengths, "output_dir": str(tmp_path / "baseline"),
                                       "rope_theta": plan.base_rope_theta or config.rope_theta})
    run = evaluate_config(config)

    runner = CliRunner()
    args = ["eval", "--model", str(base_model_dir(job)), "--tasks", "perplexity", "--device", "cpu", "-o", "json"]
    result = runner.invoke(app, [*args, "--manifest", str(manifest)])  # the run's lengths
    assert result.exit_code == 0, result.output
    ev = json.loads(result.stdout)
    assert ev["perplexity"] == pytest.approx(run["perplexity"], rel=1e-5)
    assert [(b["from"], b["to"]) for b in ev["positionLoss"]] == [(0, 128), (128, 256), (256, 384), (384, 512)]
    assert [b["loss"] for b in ev["positionLoss"]] == pytest.approx([b["loss"] for b in run["positionLoss"]],
                                                                     rel=1e-5)
    plain = runner.invoke(app, [*args, "--lengths", "128,256,512"])  # no manifest: other text, other count
    assert plain.exit_code == 0, plain.output
    assert json.loads(plain.stdout)["perplexity"] != pytest.approx(run["perplexity"], rel=1e-5)


def test_help_says_what_the_perplexity_is() -> None:
    text = " ".join(CliRunner().invoke(app, ["eval", "--help"]).output.replace("│", " ").split())
    assert "--manifest" in text and "held-out split" in text and "equal the run's report" in text
    assert "number of packed sequences perplexity is averaged over" in text
