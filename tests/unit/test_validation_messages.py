"""Issue #23 item 10: gates that can never pass, non-finite numbers, source schemes, unnamed manifests."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from ctxext.cli.main import app
from tests.unit.helpers import DELETE, minimal, with_path

runner = CliRunner()


def _validate(tmp_path: Path, obj: dict | str, name: str = "m.yaml"):
    f = tmp_path / name
    f.write_text(obj if isinstance(obj, str) else yaml.safe_dump(obj))
    return runner.invoke(app, ["validate", str(f)])


@pytest.mark.parametrize("gate", [
    {"metric": "passkeyAccuracy", "min": 80},
    {"metric": "retrievalAccuracy", "min": -0.1},
    {"metric": "needleAccuracy", "max": 1.5},
])
def test_an_accuracy_gate_outside_0_1_is_refused(tmp_path: Path, gate: dict) -> None:
    result = _validate(tmp_path, minimal(evaluation={"gates": [gate]}))
    assert result.exit_code == 2, result.output
    bound = "min" if "min" in gate else "max"
    assert f"spec.evaluation.gates[0].{bound}" in result.output and "between 0 and 1" in result.output


def test_accuracy_gates_inside_0_1_and_other_metrics_are_accepted(tmp_path: Path) -> None:
    gates = [{"metric": "passkeyAccuracy", "min": 0.8}, {"metric": "passkeyAccuracy", "min": 1, "max": 1},
             {"metric": "perplexity", "max": 80}, {"metric": "effectiveLength", "min": 4096}]
    result = _validate(tmp_path, minimal(evaluation={"gates": gates}))
    assert result.exit_code == 0, result.output


@pytest.mark.parametrize("path, text", [
    ("spec.model.ropeTheta", ".nan"), ("spec.model.ropeTheta", ".inf"),
    ("spec.curriculum.stageDefaults.learningRate", "-.inf"), ("spec.evaluation.depths[1]", ".NaN"),
])
def test_non_finite_numbers_are_named_as_such(tmp_path: Path, path: str, text: str) -> None:
    obj = minimal(curriculum={"stageDefaults": {"learningRate": 1e-5}}, evaluation={"depths": [0.0, 0.5]})
    placeholder = 0.123456789
    target = path.replace("[1]", ".1")
    obj = with_path(obj, target, placeholder)
    result = _validate(tmp_path, yaml.safe_dump(obj).replace(str(placeholder), text))
    assert result.exit_code == 2, result.output
    line = next(x for x in result.output.splitlines() if x.startswith("error"))
    assert f"{path}: must be a finite number" in line, result.output
    assert "less than" not in line and "greater than" not in line


@pytest.mark.parametrize("path, value", [("spec.model.source", "http://example.com/llama"),
                                         ("spec.data.source", "ftp://host/data")])
def test_a_bad_source_names_the_accepted_schemes_not_a_regex(tmp_path: Path, path: str, value: str) -> None:
    result = _validate(tmp_path, with_path(minimal(), path, value))
    assert result.exit_code == 2, result.output
    line = next(x for x in result.output.splitlines() if x.startswith("error"))
    assert path in line and "file:///" in line and "s3://" in line and "builtin://" in line, line
    assert "^(" not in line and "\\S" not in line, line
    assert ("hf://" in line) == (path == "spec.model.source"), line


def test_a_manifest_without_metadata_gets_the_name_run_gives_it(tmp_path: Path) -> None:
    obj = with_path(minimal(), "metadata", DELETE)
    result = _validate(tmp_path, obj, name="my-job.yaml")
    assert result.exit_code == 0, result.output
    assert "<unnamed>" not in result.output
    assert "my-job is valid" in result.output
    assert "metadata.name" in result.output  # the warning: run names it after the file, kubectl needs one
    plan = runner.invoke(app, ["plan", str(tmp_path / "my-job.yaml")])
    assert plan.exit_code == 0 and "my-job:" in plan.output and "my-job.yaml:" not in plan.output, plan.output


def test_run_names_an_unnamed_job_after_the_file_everywhere(tmp_path: Path) -> None:
    """The workdir, the report and the metrics label all use the file's name (LocalRun said "local")."""
    from ctxext.manifest import job_name, load_job

    f = tmp_path / "my-job.yaml"
    f.write_text(yaml.safe_dump(with_path(minimal(), "metadata", DELETE)))
    job = load_job(f)
    assert job_name(job, f) == "my-job"
    named = tmp_path / "n.yaml"
    named.write_text(yaml.safe_dump(minimal()))
    assert job_name(load_job(named), named) == "t"
