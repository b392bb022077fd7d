"""Command outputs quoted in README.md are what the commands print today (issue #23 item 8).

A fenced block right after ``<!-- output of: ctxext ARGS -->`` must equal the command's stdout
(run from the repository root, not a terminal, so 200 columns; trailing spaces ignored); one after
``<!-- summary of: PATH -->`` must equal the tables `ctxext run` prints for the report.json at PATH
(a measured run's, kept in bench/results/). To
regenerate every such block after a deliberate change::

    CTXEXT_WRITE_README=1 .venv/bin/pytest -q tests/unit/test_readme_outputs.py
"""

from __future__ import annotations

import io
import json
import os
import re
import shlex
import subprocess
import sys

import pytest
import yaml
from typer.testing import CliRunner

from ctxext.cli.main import app
from tests.unit.helpers import ROOT, minimal

README = ROOT / "README.md"
BLOCK = re.compile(r"(<!-- output of: (?P<cmd>[^>]+?) -->\n```[a-z]*\n)(?P<body>.*?)(```)", re.S)


def _run(cmd: str) -> str:
    argv = shlex.split(cmd)
    assert argv[0] == "ctxext", cmd
    env = {k: v for k, v in os.environ.items() if k not in ("COLUMNS", "LINES")}
    proc = subprocess.run([sys.executable, "-m", "ctxext.cli.main", *argv[1:]], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    return "".join(line.rstrip() + "\n" for line in proc.stdout.splitlines())


def _norm(text: str) -> str:
    return "".join(line.rstrip() + "\n" for line in text.splitlines())


def test_quoted_command_outputs_are_current() -> None:
    text = README.read_text()
    blocks = list(BLOCK.finditer(text))
    assert any(m["cmd"].startswith("ctxext plan") for m in blocks), "README lost its `ctxext plan` output marker"
    if os.environ.get("CTXEXT_WRITE_README"):
        README.write_text(BLOCK.sub(lambda m: m.group(1) + _run(m["cmd"]) + m.group(4), text))
        return
    for m in blocks:
        assert _norm(m["body"]) == _run(m["cmd"]), (
            f"README.md's output of `{m['cmd']}` is stale; regenerate with "
            f"CTXEXT_WRITE_README=1 .venv/bin/pytest -q {__file__}")


SUMMARY = re.compile(r"(<!-- summary of: (?P<path>[^>]+?) -->\n```[a-z]*\n)(?P<body>.*?)(```)", re.S)


def _summary(path: str) -> str:
    """What `ctxext run` prints at the end of the run whose report.json is ``path`` (not a terminal)."""
    from rich.console import Console

    from ctxext.local_run.display import checks_table, summary_table

    report = json.loads((ROOT / path).read_text())
    console = Console(width=200, record=True, color_system=None, file=io.StringIO())
    console.print(summary_table(report))
    console.print(checks_table(report))
    return _norm(console.export_text())


def test_the_quoted_run_summary_is_what_run_prints_for_its_report() -> None:
    text = README.read_text()
    blocks = list(SUMMARY.finditer(text))
    assert blocks, "README lost its `ctxext run` summary marker"
    if os.environ.get("CTXEXT_WRITE_README"):
        README.write_text(SUMMARY.sub(lambda m: m.group(1) + _summary(m["path"]) + m.group(4), text))
        return
    for m in blocks:
        assert _norm(m["body"]) == _summary(m["path"]), f"README.md's summary of {m['path']} is stale"


def test_the_quoted_validation_error_is_what_validate_prints(tmp_path) -> None:
    quoted = re.search(r"`(error: spec\.curriculum\.stages\[1\]\.seqLen: [^`]+)`", README.read_text())
    assert quoted, "README lost its example error message"
    f = tmp_path / "m.yaml"
    f.write_text(yaml.safe_dump(minimal(curriculum={"stages": [{"seqLen": 32768}, {"seqLen": 32768},
                                                               {"seqLen": 65536}]})))
    result = CliRunner().invoke(app, ["validate", str(f)])
    assert result.exit_code == 2 and quoted[1] in result.output.splitlines(), result.output


def test_the_quoted_layout_line_is_what_plan_prints() -> None:
    quoted = re.search(r"`(stage 2: SP 16 = [^`]+)`", README.read_text())
    assert quoted, "README lost its example layout line"
    assert " ".join(quoted[1].split()) in _run("ctxext plan examples/llama3-8b-1m.yaml")


def test_the_kubectl_get_cej_columns_are_the_crds() -> None:
    """The recorded `kubectl get cej` output has the CRD's default (priority 0) printer columns."""
    crd = yaml.safe_load((ROOT / "crds/ctxext.dev_contextextensionjobs.yaml").read_text())
    columns = crd["spec"]["versions"][0]["additionalPrinterColumns"]
    expected = ["NAME"] + [c["name"].upper() for c in columns if not c.get("priority")]  # Age is one of them
    block = re.search(r"What `kubectl get cej` showed.*?```\n(?P<body>.*?)```", README.read_text(), re.S)
    assert block, "README lost its `kubectl get cej` output"
    assert block["body"].splitlines()[0].split() == expected


@pytest.mark.parametrize("command", ["plan", "validate", "run", "eval", "init-tiny", "crd"])
def test_every_command_in_the_commands_table_exists(command: str) -> None:
    assert f"| `ctxext {command}" in README.read_text()
    assert CliRunner().invoke(app, [command, "--help"]).exit_code == 0
