"""What a user sees of a finished `ctxext run`: report.md's links, and a rerun of a finished run."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from rich.console import Console

from ctxext.local_run.layout import Workdir
from ctxext.local_run.report import build_report, write_report_md
from ctxext.local_run.runner import LocalRun, RunOptions
from ctxext.results import StageResult, write_result
from tests.unit.test_local_run import _job

PLOT = "eval/passkey_heatmap.png"


def _result(wd: Workdir, stage: int, seq_len: int) -> StageResult:
    plot = wd.stage_dir(stage) / PLOT
    return StageResult(status="Succeeded", stage=stage, seq_len=seq_len, rope_theta=1e4 * stage, final_loss=1.5,
                       steps_done=10, total_steps=10, wall_seconds=100.0, model_path=str(wd.stage_dir(stage) / "model"),
                       evaluation={"passkeyAccuracy": {"128": 1.0}, "plots": [str(plot)]})


def _finished_workdir(tmp_path: Path, root: Path) -> tuple[object, object, Workdir]:
    job, plan = _job(tmp_path)
    wd = Workdir(root)
    wd.claim(job)
    wd.baseline_dir.mkdir(parents=True, exist_ok=True)
    (wd.baseline_dir / PLOT).parent.mkdir(parents=True)
    (wd.baseline_dir / PLOT).write_bytes(b"png")
    wd.baseline_file.write_text(json.dumps({"passkeyAccuracy": {"128": 1.0}, "plots": [str(wd.baseline_dir / PLOT)]}))
    for stage in plan.stages:
        result = _result(wd, stage.index, stage.seq_len)
        (wd.stage_dir(stage.index) / PLOT).parent.mkdir(parents=True)
        (wd.stage_dir(stage.index) / PLOT).write_bytes(b"png")
        (wd.stage_dir(stage.index) / "model").mkdir()
        write_result(wd.stage_dir(stage.index), result)
    return job, plan, wd


@pytest.mark.parametrize("absolute", [False, True], ids=["relative-workdir", "absolute-workdir"])
def test_report_md_links_are_relative_to_the_report(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                     absolute: bool) -> None:
    monkeypatch.chdir(tmp_path)
    root = Path("ctxext-runs/tiny-cpu")
    _, plan, wd = _finished_workdir(tmp_path, (tmp_path / root) if absolute else root)
    results = [r for s in plan.stages if (r := wd.result(s.index)) is not None]
    report = build_report(job_name="tiny-cpu", plan=plan, baseline=json.loads(wd.baseline_file.read_text()),
                          results=results, status="Succeeded", wall_seconds=12.0, model_path=None)
    text = write_report_md(wd, report).read_text()
    links = re.findall(r"!\[[^]]*\]\(([^)]+)\)", text)
    assert len(links) == 3, text
    for link in links:
        assert not Path(link).is_absolute() and (wd.report_md.parent / link).is_file(), link


def test_rerunning_a_finished_run_keeps_its_report(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    job, plan, wd = _finished_workdir(tmp_path, tmp_path / "run")
    first = LocalRun(job, plan, RunOptions(workdir=wd.root), Console(file=open("/dev/null", "w")))  # noqa: SIM115
    assert first.run() == 0
    report = json.loads(wd.report_json.read_text())
    report["wallSeconds"] = 362.0  # as if the stages had taken that long
    wd.report_json.write_text(json.dumps(report, indent=2))
    write_report_md(wd, report)
    again = LocalRun(job, plan, RunOptions(workdir=wd.root), Console(file=open("/dev/null", "w")))  # noqa: SIM115
    assert again.run() == 0
    assert json.loads(wd.report_json.read_text())["wallSeconds"] == 362.0
    assert "Succeeded** in 362 s" in wd.report_md.read_text()
