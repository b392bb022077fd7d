"""`ctxext render`: the PyTorchJob of a stage attempt as YAML; bad arguments name the option."""

from __future__ import annotations

import yaml
from typer.testing import CliRunner

from ctxext.cli.main import app
from tests.unit.helpers import EXAMPLES

runner = CliRunner()


def test_render_prints_the_pytorchjob_yaml():
    out = runner.invoke(app, ["render", str(EXAMPLES / "llama3-8b-1m.yaml"), "--stage", "3", "--attempt", "2",
                              "-n", "team-a"])
    assert out.exit_code == 0, out.output
    body = yaml.safe_load(out.stdout)
    assert body["kind"] == "PyTorchJob" and body["metadata"]["name"] == "llama3-8b-1m-s3-a2"
    assert body["metadata"]["namespace"] == "team-a"
    assert body["spec"]["nprocPerNode"] == "8" and body["spec"]["runPolicy"]["backoffLimit"] == 0
    assert body["spec"]["pytorchReplicaSpecs"]["Worker"]["replicas"] == 3


def test_render_rejects_a_stage_outside_the_plan():
    out = runner.invoke(app, ["render", str(EXAMPLES / "tiny-cpu.yaml"), "--stage", "5"])
    assert out.exit_code == 2
    assert "--stage: must be between 0 (the base model's evaluation) and 2, got 5" in out.output
