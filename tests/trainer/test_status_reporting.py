"""Trainer rank 0 reports progress and the stage result into a real ContextExtensionJob's status."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from kubernetes import client, config

from ctxext.results import StageResult
from ctxext.stage_config import StageConfig
from ctxext_trainer.reporting import GROUP, PLURAL, VERSION, StatusReporter

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.apiserver
def test_progress_and_result_land_in_the_status_subresource(k8s_api: str) -> None:
    manifest = yaml.safe_load((ROOT / "examples" / "tiny-cpu.yaml").read_text())
    manifest["metadata"] = {"name": "report-test", "namespace": "default"}
    with config.new_client_from_config(config_file=k8s_api) as api:
        custom = client.CustomObjectsApi(api)
        custom.create_namespaced_custom_object(GROUP, VERSION, "default", PLURAL, manifest,
                                               field_validation="Strict")
        stage = StageConfig(job="report-test", namespace="default", job_name="report-test-s1-a1", stage=1,
                            total_stages=2, model_path="/m", output_dir="/o", seq_len=256, rope_theta=2e4,
                            original_context_length=128, steps=400, learning_rate=1e-3, device="cpu",
                            report={"kind": "kubernetes", "namespace": "default", "name": "report-test"})
        reporter = StatusReporter(stage, is_rank0=True, min_interval=3600)
        assert reporter.progress(step=3, loss=2.5, tokens_per_second=1234.5)
        assert not reporter.progress(step=4, loss=2.4, tokens_per_second=1234.5)  # rate-limited
        result = StageResult(status="Succeeded", job_name="report-test-s1-a1", stage=1, steps_done=400,
                             final_loss=1.2, evaluation={"passkeyAccuracy": {"256": 1.0}})
        assert reporter.result(result.to_wire())
        assert not StatusReporter(stage, is_rank0=False).progress(step=5, loss=1.0, tokens_per_second=1.0, force=True)

        status = custom.get_namespaced_custom_object_status(GROUP, VERSION, "default", PLURAL, "report-test")["status"]
    progress = status["progress"]
    assert progress["step"] == 3 and progress["totalSteps"] == 400 and progress["jobName"] == "report-test-s1-a1"
    assert progress["loss"] == 2.5 and progress["updated"].endswith("Z")
    assert status["results"]["report-test-s1-a1"]["finalLoss"] == 1.2
    assert status["results"]["report-test-s1-a1"]["evaluation"]["passkeyAccuracy"] == {"256": 1.0}
