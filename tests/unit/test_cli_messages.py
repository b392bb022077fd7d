"""What the CLI says: one plain line on a busy port, clean help and usage lines."""

from __future__ import annotations

import socket
from pathlib import Path

from typer.testing import CliRunner

from ctxext.cli.main import app

ROOT = Path(__file__).resolve().parents[2]
runner = CliRunner()


def test_a_busy_metrics_port_is_one_plain_line_naming_the_port_and_the_option(tmp_path: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        result = runner.invoke(app, ["run", str(ROOT / "examples/tiny-cpu.yaml"), "--workdir", str(tmp_path / "w"),
                                     "--metrics-port", str(port)])
    lines = [line for line in result.output.splitlines() if line.startswith("error")]
    assert result.exit_code == 2, result.output
    assert len(lines) == 1 and f"port {port} is already in use" in lines[0] and "--metrics-port" in lines[0], \
        result.output
    assert "[" not in lines[0] and "Errno" not in lines[0]
    assert not (tmp_path / "w").exists()  # nothing started


def test_a_busy_trainer_metrics_port_is_found_before_the_run_starts(tmp_path: Path) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        base = probe.getsockname()[1]
    with socket.socket() as busy:  # the second trainer rank's port: base + 1 + rank 1
        busy.bind(("0.0.0.0", base + 2))
        busy.listen()
        result = runner.invoke(app, ["run", str(ROOT / "examples/tiny-cpu.yaml"), "--workdir", str(tmp_path / "w"),
                                     "--metrics-port", str(base)])
    assert result.exit_code == 2, result.output
    assert f"port {base + 2} is already in use" in result.output and "--metrics-port" in result.output


def test_unexpected_errors_render_the_error_prefix() -> None:
    from ctxext.cli.common import reports_errors

    @reports_errors
    def boom() -> None:
        raise RuntimeError("disk [full]")

    import typer

    cli = typer.Typer()
    cli.command()(boom)
    result = runner.invoke(cli, [])
    assert result.exit_code == 1
    assert result.output.strip() == "error: RuntimeError: disk [full]"


def test_a_port_taken_after_the_check_still_names_the_port_and_the_option() -> None:
    import pytest

    from ctxext.errors import SpecError
    from ctxext.local_run.progress import RunMetrics

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        with pytest.raises(SpecError, match=f"port {port} is already in use.*--metrics-port"):
            RunMetrics("j", 1).serve(port)


def test_spec_errors_are_printed_verbatim_not_as_markup() -> None:
    from ctxext.cli.common import reports_errors
    from ctxext.errors import SpecError

    @reports_errors
    def bad() -> None:
        raise SpecError([("spec.model.source", "got '[bold]x[/bold]'")])

    import typer

    cli = typer.Typer()
    cli.command()(bad)
    result = runner.invoke(cli, [])
    assert result.exit_code == 2
    assert result.output.strip() == "error: spec.model.source: got '[bold]x[/bold]'"


def test_help_has_no_bool_label_on_help_and_usage_names_the_argument_plainly() -> None:
    top = runner.invoke(app, ["--help"], terminal_width=100)
    assert top.exit_code == 0 and "--help" in top.output and "<bool>" not in top.output, top.output
    for command in ("run", "plan", "validate", "render", "eval", "init-tiny"):
        result = runner.invoke(app, [command, "--help"], terminal_width=100)
        assert result.exit_code == 0, result.output
        help_line = next(x for x in result.output.splitlines() if "--help" in x)
        assert "<bool>" not in help_line, help_line
        usage = next(x for x in result.output.splitlines() if "Usage:" in x)
        assert "{" not in usage and "}" not in usage, usage
    usage = next(x for x in runner.invoke(app, ["run", "--help"]).output.splitlines() if "Usage:" in x)
    assert usage.split() == ["Usage:", "ctxext", "run", "[OPTIONS]", "MANIFEST"]
    missing = runner.invoke(app, ["validate"])
    assert missing.exit_code == 2 and "Usage: ctxext validate [OPTIONS] MANIFEST" in missing.output, missing.output


def test_pyproject_license_is_an_spdx_string_setuptools_reads_without_a_warning() -> None:
    import tomllib
    import warnings

    from setuptools.config.pyprojecttoml import apply_configuration
    from setuptools.dist import Distribution

    data = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert data["project"]["license"] == "Apache-2.0"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        apply_configuration(Distribution(), ROOT / "pyproject.toml")
    assert not [w for w in caught if "license" in str(w.message).lower()], [str(w.message)[:200] for w in caught]
