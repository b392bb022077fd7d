"""`ctxext run`'s pure parts: workdir layout and stage skipping, progress parsing, report assembly."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ctxext.errors import SpecError
from ctxext.local_run.layout import Workdir, local_stage_config, stage_model_path, world_size
from ctxext.local_run.progress import read_progress
from ctxext.local_run.report import beyond_within_ratio, build_report, checks, write_report_md
from ctxext.manifest import job_from_object
from ctxext.planner import plan_curriculum
from ctxext.results import StageResult, write_result
from tests.unit.helpers import example, with_path


def _job(tmp_path: Path, **changes: object):
    model = tmp_path / "base"
    model.mkdir(exist_ok=True)
    (model / "config.json").write_text(json.dumps({"max_position_embeddings": 128}))
    obj = with_path(example("tiny-cpu.yaml"), "spec.model.source", f"file://{model}")
    defaults = {"spec.targetContextLength": 512, "spec.evaluation.lengths": [128, 256, 512],  # the example goes to 1024
                "spec.curriculum.stages": [{"seqLen": 256, "steps": 150}, {"seqLen": 512, "steps": 600}]}
    for path, value in (defaults | changes).items():
        obj = with_path(obj, path, value)
    job = job_from_object(obj)
    return job, plan_curriculum(job.spec)


def _result(stage: int, seq_len: int, status: str = "Succeeded", **evaluation: object) -> StageResult:
    return StageResult(status=status, stage=stage, seq_len=seq_len, rope_theta=1e4 * stage, final_loss=1.5,
                       steps_done=10, total_steps=10, evaluation=dict(evaluation))


def test_stage_states_and_skipping(tmp_path: Path) -> None:
    wd = Workdir(tmp_path / "run")
    assert wd.stage_state(1) == "pending"
    (wd.stage_dir(1) / "checkpoints").mkdir(parents=True)
    (wd.stage_dir(1) / "checkpoints" / "OWNER").write_text("{}")  # a trainer claimed it, saved nothing yet
    assert wd.stage_state(1) == "pending"
    (wd.stage_dir(1) / "checkpoints" / "step-50").mkdir(parents=True)
    assert wd.stage_state(1) == "partial"
    write_result(wd.stage_dir(1), _result(1, 256, status="Failed"))
    assert wd.stage_state(1) == "failed"
    write_result(wd.stage_dir(1), _result(1, 256))
    assert wd.stage_state(1) == "done"


def test_stage_configs_chain_models_and_ports(tmp_path: Path) -> None:
    job, plan = _job(tmp_path)
    wd = Workdir(tmp_path / "run")
    first = local_stage_config(job, plan, wd, 1, metrics_port=9501)
    second = local_stage_config(job, plan, wd, 2, metrics_port=0)
    assert first.model_path == str(tmp_path / "base") and first.device == "cpu" and first.metrics_port == 9501
    assert second.model_path == str(wd.stage_dir(1) / "model") == str(stage_model_path(job, wd, 2))
    assert second.output_dir == str(wd.stage_dir(2)) and second.metrics_port == 0
    assert second.min_seq_len == plan.original_context_length  # variableLength in the example
    assert world_size(plan, None) == 2 and world_size(plan, 3) == 3
    _, sp2 = _job(tmp_path, **{"spec.parallelism.sequenceParallel": 2})
    with pytest.raises(SpecError, match="sequence-parallel degree 2"):
        world_size(sp2, 3)


def test_workdir_belongs_to_one_spec(tmp_path: Path) -> None:
    job, _ = _job(tmp_path)
    other, _ = _job(tmp_path, **{"spec.curriculum.stageDefaults.steps": 7})
    wd = Workdir(tmp_path / "run")
    wd.claim(job)
    wd.claim(job)
    with pytest.raises(SpecError, match="another spec"):
        wd.claim(other)


def test_progress_from_train_log(tmp_path: Path) -> None:
    job, plan = _job(tmp_path)
    config = local_stage_config(job, plan, Workdir(tmp_path / "run"), 1, metrics_port=0)
    Path(config.output_dir).mkdir(parents=True)
    assert read_progress(config, 2) is None
    log = Path(config.output_dir) / "train_log.jsonl"
    lines = [json.dumps({"step": i, "loss": 2.0, "seqLen": 200, "seconds": 0.5}) for i in range(1, 4)]
    log.write_text("\n".join(lines) + '\n{"step": 4, "lo')  # the last line is being written
    p = read_progress(config, 2)
    assert p is not None and p.step == 3 and p.seq_len == 200
    assert p.perplexity == pytest.approx(7.389, rel=1e-3)
    # 200 tokens x batch x accumulation x DP (2 ranks / SP 1 = 2) per 0.5 s
    assert p.tokens_per_second == pytest.approx(200 * config.batch_size * config.gradient_accumulation * 2 / 0.5)


def test_report_has_every_length_and_the_claims(tmp_path: Path) -> None:
    _, plan = _job(tmp_path)
    buckets = [{"from": 0, "to": 128, "loss": 2.0}, {"from": 128, "to": 256, "loss": 2.1},
               {"from": 256, "to": 512, "loss": 2.1}]
    baseline = {"passkeyAccuracy": {"128": 1.0, "256": 0.3, "512": 0.0},
                "perplexity": {"128": 3.0, "256": 9.0, "512": 30.0}, "positionLoss": buckets}
    final = {"passkeyAccuracy": {"128": 0.98, "256": 1.0, "512": 0.94},
             "perplexity": {"128": 3.2, "256": 3.1, "512": 3.0}, "positionLoss": buckets}
    results = [_result(1, 256, **final), _result(2, 512, **final)]
    report = build_report(job_name="tiny-cpu", plan=plan, baseline=baseline, results=results,
                          status="Succeeded", wall_seconds=12.0, model_path="/m")
    assert report["lengths"] == [128, 256, 512] and report["originalContextLength"] == 128
    assert [s["index"] for s in report["stages"]] == [1, 2]
    assert report["stages"][1]["passkeyAccuracy"]["512"] == 0.94 and report["stages"][1]["seqLen"] == 512
    outcome = {c["name"].split(" (")[0]: c["passed"] for c in report["checks"]}
    assert all(outcome.values()), report["checks"]
    assert json.loads(json.dumps(report)) == report
    write_report_md(Workdir(tmp_path), report)
    text = (tmp_path / "report.md").read_text()
    assert "| after stage 2 (512 tok) |" in text and "0.94" in text
    assert (tmp_path / "loss_by_position.png").read_bytes()[:4] == b"\x89PNG"


def test_claims_fail_with_the_numbers() -> None:
    out = checks({"passkeyAccuracy": {"512": 0.6}, "perplexity": {"128": 3.0}},
                 {"passkeyAccuracy": {"128": 0.5, "512": 0.95}, "perplexity": {"128": 3.6},
                  "positionLoss": [{"from": 0, "to": 128, "loss": 1.0}, {"from": 128, "to": 512, "loss": 1.5}]},
                 original=128, longest=512)
    assert [c["passed"] for c in out] == [False, True, False, False, False]
    assert out[3]["value"] == 1.5 and out[4]["value"] == pytest.approx(0.2)
    assert beyond_within_ratio([], 128) is None


def test_report_shows_effective_length_per_model(tmp_path: Path) -> None:
    from rich.console import Console

    from ctxext.local_run.display import summary_table

    _, plan = _job(tmp_path)
    base = {"passkeyAccuracy": {"128": 1.0, "256": 0.3, "512": 0.0}, "retrievalAccuracy": {"128": 1.0, "256": 0.3,
            "512": 0.0}, "effectiveLength": 128, "effectiveLengthByTask": {"passkey": 128},
            "effectiveLengthThreshold": 0.85}
    final = {"passkeyAccuracy": {"128": 1.0, "256": 0.9, "512": 0.9}, "retrievalAccuracy": {"128": 1.0, "256": 0.9,
             "512": 0.9}, "effectiveLength": 512, "effectiveLengthByTask": {"passkey": 512},
             "effectiveLengthThreshold": 0.85}
    report = build_report(job_name="tiny-cpu", plan=plan, baseline=base, results=[_result(1, 256, **final),
                          _result(2, 512, **final)], status="Succeeded", wall_seconds=1.0, model_path="/m")
    write_report_md(Workdir(tmp_path), report)
    text = (tmp_path / "report.md").read_text()
    assert "## Effective length" in text and "threshold (0.85" in text
    assert "| base model | 128 | passkey 128 |" in text and "| after stage 2 (512 tok) | 512 | passkey 512 |" in text
    console = Console(width=200, record=True)
    console.print(summary_table(report))
    shown = console.export_text()
    assert "eff. length" in shown and "512" in shown.splitlines()[-2]
