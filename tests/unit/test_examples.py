"""Every manifest in examples/ as shipped: validated, planned and rendered (each stage's PyTorchJob and,
where a gate needs it, the base model's evaluation job), through the CLI a user runs."""

from __future__ import annotations

import json

import pytest
import yaml
from typer.testing import CliRunner

from ctxext.cli.main import app
from ctxext.decide import baseline_lengths, baseline_needed, gate_problems
from ctxext.manifest import load_job
from ctxext.planner import plan_curriculum
from tests.unit.helpers import EXAMPLES

runner = CliRunner()
MANIFESTS = sorted(EXAMPLES.glob("*.yaml"))


def test_there_are_examples():
    assert {p.name for p in MANIFESTS} >= {"tiny-cpu.yaml", "llama3-8b-1m.yaml"}


@pytest.mark.parametrize("path", MANIFESTS, ids=lambda p: p.name)
def test_example_validates_plans_and_renders_every_job(path):
    out = runner.invoke(app, ["validate", str(path)])
    assert out.exit_code == 0 and "is valid" in out.output, out.output
    out = runner.invoke(app, ["plan", str(path), "-o", "json"])
    assert out.exit_code == 0, out.output
    job = load_job(path)
    plan = plan_curriculum(job.spec)
    assert gate_problems(job.spec, plan) == []
    assert len(json.loads(out.stdout)["stages"]) == len(plan.stages)
    stages = ([0] if baseline_needed(job.spec) else []) + [s.index for s in plan.stages]
    for stage in stages:
        out = runner.invoke(app, ["render", str(path), "--stage", str(stage), "-n", "team-a"])
        assert out.exit_code == 0, out.output
        body = yaml.safe_load(out.stdout)
        name = job.metadata["name"]
        assert body["metadata"]["name"] == f"{name}-s{stage}-a1"
        env = body["spec"]["pytorchReplicaSpecs"]["Master"]["template"]["spec"]["containers"][0]["env"]
        config = json.loads(next(e["value"] for e in env if e["name"] == "CTXEXT_STAGE_CONFIG"))
        # the example's own evaluation and gates reach the trainer unchanged
        assert config["evaluation"]["gates"] == [g.to_wire() for g in job.spec.evaluation.gates]
        if stage == 0:
            assert config["evaluateOnly"] is True and config["steps"] == 0
            assert config["evalLengths"] == baseline_lengths(job.spec, plan)
            assert config["ropeTheta"] == plan.base_rope_theta and config["outputDir"].endswith(f"{name}/baseline")
        else:
            assert config["evaluateOnly"] is False and config["steps"] == plan.stages[stage - 1].steps


def test_both_examples_gate_on_the_base_model_so_the_cluster_evaluates_it():
    for path in MANIFESTS:
        job = load_job(path)
        assert baseline_needed(job.spec), path.name  # each ships a perplexity maxIncrease gate
