"""Bad manifests give one clear message naming the field, exit code 2, never a traceback."""

import subprocess
import sys

import pytest
import yaml
from typer.testing import CliRunner

from ctxext.cli.main import app
from tests.unit.helpers import DELETE, example, minimal, with_path

runner = CliRunner()

BAD = [
    (with_path(minimal(), "spec.model.ropeThetaa", 1), "spec.model.ropeThetaa", "unknown field"),
    (with_path(minimal(), "spec.targetContextLength", "lots"), "spec.targetContextLength", "integer"),
    (with_path(minimal(), "spec.targetContextLength", DELETE), "spec.targetContextLength", "missing"),
    (with_path(minimal(), "spec.targetContextLength", 4096), "spec.targetContextLength", "greater than"),
    (minimal(targetContextLength=65536, curriculum={"stages": [{"seqLen": 32768}, {"seqLen": 32768},
                                                               {"seqLen": 65536}]}),
     "spec.curriculum.stages[1].seqLen", "strictly increasing"),
    (minimal(curriculum={"stages": [{"seqLen": 32768}]}), "spec.curriculum.stages[0].seqLen", "must equal"),
    (with_path(minimal(), "spec.model.ropeTheta", 0), "spec.model.ropeTheta", "greater than 0"),
    (with_path(minimal(), "spec.model.ropeTheta", -5), "spec.model.ropeTheta", "greater than 0"),
    (with_path(minimal(), "spec.model.ropeTheta", 1e300), "spec.model.ropeTheta", "less than or equal"),
    (with_path(minimal(), "spec.model.source", "ftp://x"), "spec.model.source", "must start with file:///"),
    (minimal(parallelism={"sequenceParallel": 3}), "spec.parallelism.sequenceParallel", "divide"),
    (minimal(curriculum={"thetaRule": "fixed"}), "spec.curriculum.stages", "fixed needs"),
    (minimal(curriculum={"thetaRule": "golden"}), "spec.curriculum.thetaRule", "scaling-law"),
    (minimal(parallelism={"zeroStage": 4}), "spec.parallelism.zeroStage", "less than or equal to 3"),
    (minimal(evaluation={"gates": [{"metric": "passkeyAccuracy"}]}), "spec.evaluation.gates[0]", "at least one"),
    (minimal(evaluation={"gates": [{"metric": "passkeyAccuracy", "min": 1, "atLength": "longest"}]}),
     "spec.evaluation.gates[0].atLength", "atLength"),
    (minimal(evaluation={"gates": [{"metric": "effectiveLength", "maxIncrease": 0.1}]}),
     "spec.evaluation.gates[0].maxIncrease", "not maxIncrease"),
    (minimal(evaluation={"gates": [{"metric": "passkeyAccuracy", "min": 80}]}),
     "spec.evaluation.gates[0].min", "between 0 and 1"),
    (minimal(evaluation={"effectiveLengthThreshold": 0}), "spec.evaluation.effectiveLengthThreshold",
     "greater than 0"),
]


@pytest.mark.parametrize("obj, path, words", BAD)
def test_validate_names_the_field(tmp_path, obj, path, words):
    f = tmp_path / "m.yaml"
    f.write_text(yaml.safe_dump(obj))
    result = runner.invoke(app, ["validate", str(f)])
    assert result.exit_code == 2, result.output
    assert path in result.output and words in result.output
    assert "Traceback" not in result.output


@pytest.mark.parametrize("text, words", [
    ("kind: Deployment\napiVersion: apps/v1\n", "expected apiVersion ctxext.dev/v1alpha1"),
    ("a: [1, 2\n", "invalid YAML at line"),
    ("", "no YAML document"),
    ("just a string\n", "expected a Kubernetes object"),
    ("a: &x [1, 2]\nb: *x\n", "aliases"),
])
def test_malformed_files(tmp_path, text, words):
    f = tmp_path / "m.yaml"
    f.write_text(text)
    result = runner.invoke(app, ["plan", str(f)])
    assert result.exit_code == 2 and words in result.output and "Traceback" not in result.output


def test_binary_file(tmp_path):
    f = tmp_path / "m.yaml"
    f.write_bytes(b"\xff\xfe\x00binary")
    result = runner.invoke(app, ["validate", str(f)])
    assert result.exit_code == 2 and "not UTF-8 text" in result.output


def test_unreadable_and_missing_files(tmp_path):
    assert "no such file" in runner.invoke(app, ["plan", str(tmp_path / "nope.yaml")]).output
    result = runner.invoke(app, ["validate", str(tmp_path)])
    assert result.exit_code == 2 and "is a directory" in result.output


def test_yaml_bomb_is_refused_quickly(tmp_path):
    lines = ['a0: &a0 ["x","x","x","x","x","x","x","x","x"]']
    lines += [f"a{i}: &a{i} [*a{i-1},*a{i-1},*a{i-1},*a{i-1},*a{i-1},*a{i-1},*a{i-1},*a{i-1},*a{i-1}]"
              for i in range(1, 10)]
    f = tmp_path / "bomb.yaml"
    f.write_text("\n".join(lines) + "\n")
    result = runner.invoke(app, ["validate", str(f)])
    assert result.exit_code == 2 and "aliases" in result.output


def test_plan_json_has_the_promised_shape(tmp_path):
    f = tmp_path / "m.yaml"
    f.write_text(yaml.safe_dump(example("llama3-8b-1m.yaml")))
    result = runner.invoke(app, ["plan", str(f), "-o", "json"])
    assert result.exit_code == 0, result.output
    data = yaml.safe_load(result.stdout)
    assert set(data) >= {"stages", "warnings"}
    first = data["stages"][0]
    assert {"index", "seqLen", "ropeTheta", "steps", "tokensPerStep", "estimatedMemoryGiB"} <= set(first)
    assert abs(data["stages"][-1]["ropeTheta"] - 3580165449) <= 1


def test_console_script_prints_no_traceback(tmp_path):
    f = tmp_path / "m.yaml"
    f.write_text("apiVersion: ctxext.dev/v1alpha1\nkind: ContextExtensionJob\nspec: 7\n")
    proc = subprocess.run([sys.executable, "-m", "ctxext.cli.main", "validate", str(f)],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    assert "spec:" in proc.stderr and "Traceback" not in proc.stderr + proc.stdout


@pytest.mark.parametrize("path, value", [
    ("spec.targetContextLength", "65536"),     # a string is not an integer (the API server agrees)
    ("spec.targetContextLength", 65536.0),     # neither is a float
    ("spec.suspend", "false"),
    ("spec.model.ropeTheta", "5e5"),
])
def test_types_are_strict_like_the_api_server(tmp_path, path, value):
    f = tmp_path / "m.yaml"
    f.write_text(yaml.safe_dump(with_path(minimal(), path, value)))
    result = runner.invoke(app, ["validate", str(f)])
    assert result.exit_code == 2 and path in result.output
