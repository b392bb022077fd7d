"""#22 item 2 at the CLI: `ctxext validate` says, before anything is applied, what a TrainJob cannot carry.

The shipped GPU example as shipped (a priority class, Auto): valid, with a warning that a cluster serving only
TrainJob refuses it. The same manifest with ``spec.backend: TrainJob``: exit 2 and the field, in plain words.
"""

from __future__ import annotations

from pathlib import Path

import yaml
from typer.testing import CliRunner

from ctxext.cli.main import app

ROOT = Path(__file__).resolve().parents[2]
runner = CliRunner()


def test_validate_warns_for_auto_and_refuses_for_trainjob(tmp_path: Path) -> None:
    shipped = ROOT / "examples/llama3-8b-1m.yaml"
    auto = runner.invoke(app, ["validate", str(shipped)])
    assert auto.exit_code == 0, auto.output
    assert "serves only TrainJob" in auto.output and "spec.scheduling.priorityClassName" in auto.output
    obj = yaml.safe_load(shipped.read_text())
    obj["spec"]["backend"] = "TrainJob"
    forced = tmp_path / "trainjob.yaml"
    forced.write_text(yaml.safe_dump(obj))
    refused = runner.invoke(app, ["validate", str(forced)])
    assert refused.exit_code == 2 and "spec.scheduling.priorityClassName" in refused.output
    assert "Traceback" not in refused.output and "is valid" not in refused.output
    plain = runner.invoke(app, ["validate", str(ROOT / "examples/tiny-cpu.yaml")])
    assert plain.exit_code == 0 and "warning" not in plain.output, plain.output


def test_operator_backend_option_refuses_an_unknown_api_in_one_line(monkeypatch) -> None:
    monkeypatch.setenv("CTXEXT_BACKEND", "auto")  # the command sets it in this process: restored after the test
    result = runner.invoke(app, ["operator", "--backend", "rayjob"])
    assert result.exit_code == 2 and "CTXEXT_BACKEND" in result.output and "'pytorchjob'" in result.output
    assert "Traceback" not in result.output
