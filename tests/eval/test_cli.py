"""`ctxext eval`: one clear line and exit 2 on bad input; a json/table run on the tiny model directory."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from ctxext.cli.eval_cmds import parse_depths, parse_lengths
from ctxext.cli.main import app
from ctxext.errors import SpecError
from tests.eval.conftest import CORPUS, is_png

runner = CliRunner()


@pytest.mark.parametrize(("args", "message"), [
    (["--model", "/nonexistent/model", "--lengths", "1024"], "error: --model: /nonexistent/model does not exist"),
    (["--model", ".", "--lengths", "10x"], "error: --lengths: '10x' is not a length in tokens"),
    (["--model", ".", "--lengths", ","], "error: --lengths: give at least one length"),
    (["--model", ".", "--lengths", "1024", "--depths", "0,1.5"], "error: --depths: '1.5' is not a depth"),
    (["--model", ".", "--lengths", "1024", "--tasks", "passkey,bogus"], "error: --tasks: unknown task bogus"),
    (["--model", ".", "--lengths", "1024"], "is not a model directory (no config.json) and holds no .gguf file"),
])
def test_bad_input_is_one_line_and_exit_2(args, message):
    result = runner.invoke(app, ["eval", *args])
    assert result.exit_code == 2, result.output
    assert message in result.output and "Traceback" not in result.output
    assert len(result.output.strip().splitlines()) == 1


def test_parsers():
    assert parse_lengths("4K,1024,1024") == [1024, 4096]
    assert parse_depths("1, 0 ,0.5") == [0.0, 0.5, 1.0]
    with pytest.raises(SpecError):
        parse_lengths("0")


def test_eval_runs_on_a_model_directory(model_dir, tmp_path):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text(" ".join(CORPUS))
    out = tmp_path / "out"
    result = runner.invoke(app, ["eval", "--model", str(model_dir), "--lengths", "128,256", "--depths", "0,1",
                                 "--tasks", "passkey,needle,perplexity", "--samples", "1", "--corpus", str(corpus),
                                 "--original-length", "128", "--output", str(out), "-o", "json"])
    assert result.exit_code == 0, result.output
    ev = json.loads(result.stdout)
    assert set(ev["passkeyAccuracy"]) == {"128", "256"} and set(ev["perplexity"]) == {"128", "256"}
    assert json.loads((out / "eval" / "evaluation.json").read_text())["grids"] == ev["grids"]
    assert all(is_png(p) for p in ev["plots"])
    table = runner.invoke(app, ["eval", "--model", str(model_dir), "--lengths", "128", "--depths", "0.5",
                                "--samples", "1", "--corpus", str(corpus)])
    assert table.exit_code == 0, table.output
    assert "retrieval accuracy" in table.stdout and "passkey" in table.stdout and "perplexity" in table.stdout
