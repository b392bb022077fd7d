"""Health guard decisions, checkpoint manifests (corruption detection), metrics names, status patches."""

from __future__ import annotations

import datetime as dt
import math
import urllib.request
from pathlib import Path

import pytest

from ctxext.stage_config import StageConfig
from ctxext_trainer import checkpoint
from ctxext_trainer.checkpoint import (
    SupersededError,
    claim_checkpoints,
    latest_valid_checkpoint,
    prune,
    save_checkpoint,
    verify_checkpoint,
    write_manifest,
)
from ctxext_trainer.grad_stats import layer_name
from ctxext_trainer.guard import HealthGuard
from ctxext_trainer.metrics import TrainerMetrics
from ctxext_trainer.reporting import StatusReporter, progress_patch, result_patch

CONFIG = StageConfig(job="tiny", namespace="team-a", job_name="tiny-s2-a1", stage=2, total_stages=3, model_path="/m",
                     output_dir="/o", seq_len=512, rope_theta=691374.2, original_context_length=128, steps=40,
                     learning_rate=1e-3, device="cpu")


def test_nonfinite_gradients_stop_with_the_step_in_the_reason() -> None:
    guard = HealthGuard(sigma=6, max_spikes=3, clip=1.0)
    assert guard.check_gradients(1, 0.5, 0) is None
    assert guard.check_gradients(2, 3.0, 0) is None
    stop = guard.check_gradients(113, math.nan, 17)
    assert stop is not None and stop.code == "NonFiniteGradients"
    assert stop.message.startswith("non-finite gradients at step 113")
    assert guard.health() == {"nonFiniteSteps": 1, "lossSpikes": 0, "maxGradNorm": 3.0, "clippedSteps": 1}
    assert guard.clip_ratio(4.0) == 0.25 and guard.clip_ratio(0.5) == 1.0


def test_loss_spikes_beyond_the_limit_stop_the_stage() -> None:
    guard = HealthGuard(sigma=6, max_spikes=2, clip=1.0)
    for step, loss in enumerate([2.0, 2.1, 1.9, 2.0, 2.0, 1.95], 1):
        assert guard.observe_loss(step, loss) is None
    assert guard.observe_loss(7, 2.5) is None and guard.spikes == 1  # 7.9σ above the window
    assert guard.observe_loss(8, 2.02) is None and guard.spikes == 1
    assert guard.observe_loss(9, 9.0) is None and guard.spikes == 2
    stop = guard.observe_loss(10, 9.0)
    assert stop is not None and stop.code == "LossSpikes" and "3 loss spikes by step 10" in stop.message
    restored = HealthGuard(sigma=6, max_spikes=2, clip=1.0)
    restored.load_state_dict(guard.state_dict())
    assert restored.state_dict() == guard.state_dict()


def _fake_checkpoint(root: Path, step: int) -> Path:
    d = root / f"step-{step}"
    (d / "global_step").mkdir(parents=True)
    (d / "global_step" / "model_states.pt").write_bytes(bytes(range(256)) * (step + 1))
    (d / "trainer_state.json").write_text(f'{{"step": {step}}}')
    write_manifest(d, step)
    return d


def test_truncated_latest_checkpoint_falls_back_to_the_previous_one(tmp_path: Path) -> None:
    for step in (2, 4, 6):
        _fake_checkpoint(tmp_path, step)
    assert latest_valid_checkpoint(tmp_path) == (6, tmp_path / "step-6")
    shard = tmp_path / "step-6" / "global_step" / "model_states.pt"
    shard.write_bytes(shard.read_bytes()[:100])
    assert "has 100 bytes" in (verify_checkpoint(tmp_path / "step-6") or "")
    assert latest_valid_checkpoint(tmp_path) == (4, tmp_path / "step-4")
    (tmp_path / "step-4" / "MANIFEST.json").unlink()  # crashed before the manifest was written
    assert latest_valid_checkpoint(tmp_path) == (2, tmp_path / "step-2")
    (tmp_path / "step-2" / "trainer_state.json").write_text('{"step": 9}')  # same size, other bytes
    assert verify_checkpoint(tmp_path / "step-2") == "trainer_state.json does not match its SHA-256"
    assert latest_valid_checkpoint(tmp_path) is None


def test_prune_keeps_the_newest(tmp_path: Path) -> None:
    for step in (1, 2, 3):
        _fake_checkpoint(tmp_path, step)
    (tmp_path / ".tmp-step-4").mkdir()
    prune(tmp_path, keep=2)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["step-2", "step-3"]


def test_layer_names() -> None:
    assert layer_name("lm.model.layers.3.mlp.up_proj.weight") == "layers.3"
    assert layer_name("lm.model.norm.weight") == "norm"


def _scrape_one_step(rank: int) -> str:
    metrics = TrainerMetrics(CONFIG, rank=rank)
    assert metrics.serve(0) is None  # 0 disables
    port = metrics.serve(_free_port())
    assert port
    try:
        for _ in range(2):
            metrics.record_step(step=3, loss=2.0, grad_norm=1.5, layer_max=1.0, layer_min=0.1, clip_ratio=1.0,
                                tokens_per_second=100.0, step_seconds=0.5, learning_rate=1e-3, update_ratio=1e-3,
                                tokens=512)
        metrics.record_nonfinite(2)
        return urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    finally:
        metrics.close()


def test_metrics_endpoint_names_and_labels() -> None:
    body = _scrape_one_step(0)
    labels = 'cej="tiny",cej_namespace="team-a",stage="2"'
    assert f"ctxext_train_loss{{{labels}}} 2.0" in body
    assert f"ctxext_train_perplexity{{{labels}}} {math.exp(2.0)}" in body
    assert f"ctxext_grad_nonfinite_total{{{labels}}} 2.0" in body
    assert f"ctxext_train_tokens_total{{{labels}}} 1024.0" in body
    assert f"ctxext_loss_spikes_total{{{labels}}} 0.0" in body  # there from the start, so increase() works
    assert 'rope_theta="691374.2",seq_len="512",stage="2",total_stages="' in body
    assert 'ctxext_memory_bytes{cej="tiny",cej_namespace="team-a",kind="max_rss",rank="0",stage="2"}' in body
    for name in ("ctxext_grad_norm", "ctxext_loss_spikes_total", "ctxext_tokens_per_second", "ctxext_train_step",
                 "ctxext_step_seconds", "ctxext_memory_bytes", "ctxext_stage_info"):
        assert f"\n{name}{{" in body
    assert 'job="' not in body and 'namespace="' not in body.replace('cej_namespace="', "")


def test_step_is_exported_before_the_first_step() -> None:
    """So that CtxextTrainingStalled sees a stage hung in its first step (tests/chart/test_alerts.py)."""
    from prometheus_client import generate_latest

    body = generate_latest(TrainerMetrics(CONFIG, rank=0).registry).decode()
    assert 'ctxext_train_step{cej="tiny",cej_namespace="team-a",stage="2"} 0.0' in body
    assert 'ctxext_train_total_steps{cej="tiny",cej_namespace="team-a",stage="2"} 40.0' in body


def test_only_rank0_exports_job_wide_metrics() -> None:
    """Every rank has the same loss and step: other ranks export only what is their own (memory)."""
    body = _scrape_one_step(1)
    series = [line.split("{")[0] for line in body.splitlines() if line and not line.startswith("#")]
    assert set(series) == {"ctxext_memory_bytes"}, set(series)
    assert 'rank="1"' in body


def test_status_patches() -> None:
    patch = progress_patch(CONFIG, step=5, loss=math.nan, tokens_per_second=10.0,
                           now=dt.datetime(2026, 5, 1, 12, 0, tzinfo=dt.UTC))
    assert patch["status"]["progress"] == {"jobName": "tiny-s2-a1", "stage": 2, "step": 5, "totalSteps": 40,
                                           "loss": None, "perplexity": None, "tokensPerSecond": 10.0,
                                           "updated": "2026-05-01T12:00:00Z"}
    assert result_patch("tiny-s2-a1", {"status": "Succeeded"}) == {
        "status": {"results": {"tiny-s2-a1": {"status": "Succeeded"}}}}
    assert not StatusReporter(CONFIG, is_rank0=True).progress(step=1, loss=1.0, tokens_per_second=1.0)


def test_unreachable_api_server_is_logged_not_raised(monkeypatch, tmp_path: Path) -> None:
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text("""apiVersion: v1
kind: Config
clusters: [{name: c, cluster: {server: "https://127.0.0.1:9"}}]
users: [{name: u, user: {token: t}}]
contexts: [{name: x, context: {cluster: c, user: u}}]
current-context: x
""")
    monkeypatch.setenv("KUBECONFIG", str(kubeconfig))
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    monkeypatch.setenv("CTXEXT_RESULT_RETRY_SECONDS", "0")  # no API server will come: do not wait for one
    config = CONFIG.model_copy(update={"report": CONFIG.report.model_copy(update={"kind": "kubernetes"})})
    reporter = StatusReporter(config, is_rank0=True, min_interval=0)
    assert reporter.progress(step=1, loss=1.0, tokens_per_second=1.0) is False
    assert reporter.result({"status": "Succeeded"}) is False


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class _ShardWriter:
    """Writes one shard per save as DeepSpeed does (``<root>/<tag>/...``); the fence around it is what is tested."""

    def save_checkpoint(self, root: str, *, tag: str, client_state: dict, save_latest: bool) -> None:
        shard = Path(root) / tag / "global_step" / "model_states.pt"
        shard.parent.mkdir(parents=True, exist_ok=True)
        shard.write_bytes(b"weights")


def test_an_attempt_whose_checkpoints_a_newer_attempt_claimed_stops_without_writing(tmp_path: Path) -> None:
    """#27 item 2: a pod of attempt 1 that outlives it (a node cut off from the API server) must not write the
    stage's checkpoints while attempt 2 resumes from them. One process plays both pods: ``_claims`` holds the
    token of the pod it is."""
    root, engine = tmp_path / "checkpoints", _ShardWriter()
    first = claim_checkpoints(root, "t-s1-a1", is_rank0=True)
    assert save_checkpoint(engine, root, 2, {"step": 2}, keep=3, is_rank0=True) == root / "step-2"
    second = claim_checkpoints(root, "t-s1-a2", is_rank0=True)  # attempt 2 starts in another pod ...
    (root / f".tmp-step-4-{second}").mkdir()  # ... and is writing its step 4 right now
    checkpoint._claims[str(root)] = first  # attempt 1's pod saves again
    with pytest.raises(SupersededError, match=r"^t-s1-a2 has taken over this stage's checkpoints .* step 4 there$"):
        save_checkpoint(engine, root, 4, {"step": 4}, keep=1, is_rank0=True)
    assert sorted(p.name for p in root.iterdir()) == [f".tmp-step-4-{second}", "OWNER", "step-2"]  # untouched
    checkpoint._claims[str(root)] = second
    assert save_checkpoint(engine, root, 4, {"step": 4}, keep=1, is_rank0=True) == root / "step-4"
    assert sorted(p.name for p in root.iterdir()) == ["OWNER", "step-4"] and verify_checkpoint(root / "step-4") is None
