"""The suite end to end on a tiny random byte-level Llama: result format, plots, gauges, stage entry point."""

from __future__ import annotations

import math

import pytest
import torch
from prometheus_client import CollectorRegistry

from ctxext.api.spec import EvaluationSpec
from ctxext.stage_config import StageConfig
from ctxext_trainer.eval.generate import greedy_generate, token_losses
from ctxext_trainer.eval.stage import evaluate_stage
from ctxext_trainer.eval.suite import evaluate_model
from tests.eval.conftest import CORPUS, is_png


def test_batched_left_padded_generation_equals_one_by_one(model, tokenizer):
    prompts = [tokenizer.encode("The pass key is 12345. " * 3), tokenizer.encode("short prompt")]
    batched = greedy_generate(model, prompts, max_new_tokens=5, pad_id=tokenizer.pad_id)
    alone = [greedy_generate(model, [p], max_new_tokens=5, pad_id=tokenizer.pad_id)[0] for p in prompts]
    assert batched == alone
    manual = list(prompts[1])
    for _ in range(5):  # no-cache reference: argmax of a full forward
        manual.append(int(model(input_ids=torch.tensor([manual])).logits[0, -1].argmax()))
    assert alone[1] == manual[len(prompts[1]):]


def test_chunked_token_losses_equal_full_forward(model, monkeypatch):
    import ctxext_trainer.eval.generate as gen

    monkeypatch.setattr(gen, "LOSS_CHUNK", 7)
    ids = torch.randint(4, 260, (2, 40))
    chunked = token_losses(model, ids)
    logits = model(input_ids=ids).logits[:, :-1]
    full = torch.nn.functional.cross_entropy(logits.transpose(1, 2), ids[:, 1:], reduction="none")
    assert chunked.shape == (2, 39) and torch.allclose(chunked, full, atol=1e-5)


def test_evaluate_model_end_to_end(model, tokenizer, tmp_path):
    registry = CollectorRegistry()
    ev = evaluate_model(model, tokenizer, tasks=["passkey", "needle", "multiKeyNiah", "multiValueNiah",
                                                 "variableTracking", "perplexity"],
                        lengths=[128, 512], depths=[0.0, 0.5, 1.0], samples_per_cell=2, seed=3, original_length=128,
                        output_dir=tmp_path, corpus_texts=CORPUS, registry=registry,
                        labels={"cej": "tiny", "cej_namespace": "ns", "stage": "2"})
    assert set(ev["passkeyAccuracy"]) == {"128", "512"} and set(ev["needleAccuracy"]) == {"512"}
    assert set(ev["variableTrackingAccuracy"]) == {"512"} and set(ev["multiKeyNiahAccuracy"]) == {"512"}
    assert set(ev["multiValueNiahAccuracy"]) == {"512"}
    # RULER-style summary: mean over the tasks measured at each length, effective length at 0.85
    at_512 = [ev[f"{t}Accuracy"]["512"] for t in ("passkey", "needle", "multiKeyNiah", "multiValueNiah",
                                                   "variableTracking")]
    assert ev["retrievalAccuracy"] == {"128": pytest.approx(ev["passkeyAccuracy"]["128"]),
                                       "512": pytest.approx(sum(at_512) / 5)}
    assert ev["effectiveLengthThreshold"] == 0.85 and ev["effectiveLength"] in (0, 128, 512)
    assert set(ev["effectiveLengthByTask"]) == {"passkey", "needle", "multiKeyNiah", "multiValueNiah",
                                                "variableTracking"}
    assert all(0.0 <= v <= 1.0 for k in ev if k.endswith("Accuracy") for v in ev[k].values())
    assert set(ev["grids"]["passkey"]["512"]) == {"0", "0.5", "1"}
    assert set(ev["perplexity"]) == {"128", "512"}
    assert all(math.isfinite(v) and v > 1 for v in ev["perplexity"].values())
    # Random weights over 260 byte ids: perplexity near the vocabulary size.
    assert 100 < ev["perplexity"]["512"] < 600
    assert [(b["from"], b["to"]) for b in ev["positionLoss"]] == [(0, 128), (128, 256), (256, 384), (384, 512)]
    assert any("needle at 128" in n for n in ev["notes"])
    names = sorted(p.rsplit("/", 1)[1] for p in ev["plots"])
    assert names == ["multiKeyNiah_heatmap.png", "multiValueNiah_heatmap.png", "needle_heatmap.png",
                     "passkey_heatmap.png",
                     "perplexity_by_position.png", "variableTracking_heatmap.png"]
    assert all(is_png(p) and str(p).startswith(str(tmp_path / "eval")) for p in ev["plots"])
    acc = registry.get_sample_value("ctxext_eval_accuracy", {"task": "passkey", "length": "512", "depth": "0.5",
                                                             "cej": "tiny", "cej_namespace": "ns", "stage": "2"})
    assert acc == ev["grids"]["passkey"]["512"]["0.5"]
    ppl = registry.get_sample_value("ctxext_eval_perplexity", {"length": "128", "cej": "tiny", "cej_namespace": "ns",
                                                               "stage": "2"})
    assert ppl == ev["perplexity"]["128"]
    # Deterministic: the same call gives the same numbers.
    again = evaluate_model(model, tokenizer, tasks=["passkey", "perplexity"], lengths=[128, 512],
                           depths=[0.0, 0.5, 1.0], samples_per_cell=2, seed=3, original_length=128, output_dir=None,
                           corpus_texts=CORPUS)
    assert again["grids"]["passkey"] == ev["grids"]["passkey"] and again["perplexity"] == ev["perplexity"]
    assert again["plots"] == []


def test_evaluate_stage_reads_the_stage_config(model, tokenizer, tmp_path):
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    for i, text in enumerate(CORPUS[:6]):
        (corpus / f"doc{i}.txt").write_text(text * 4)
    config = StageConfig(
        job="tiny", namespace="team-a", job_name="tiny-s2-a1", stage=2, total_stages=2, model_path="unused",
        output_dir=str(tmp_path / "stage-2"), seq_len=256, rope_theta=20000.0, original_context_length=128, steps=1,
        learning_rate=1e-3, eval_lengths=[128, 256], data={"source": f"file://{corpus}", "validationFraction": 0.3},
        evaluation=EvaluationSpec(tasks=["passkey", "needle", "perplexity"], depths=[0.0, 1.0], samples_per_cell=1))
    registry = CollectorRegistry()
    ev = evaluate_stage(model, tokenizer, config, output_dir=tmp_path / "stage-2", is_rank0=True, registry=registry)
    assert set(ev["passkeyAccuracy"]) == {"128", "256"} and set(ev["needleAccuracy"]) == {"256"}
    assert set(ev["perplexity"]) == {"128", "256"}
    assert ev["positionLoss"][-1] == {"from": 128, "to": 256, "loss": ev["positionLoss"][-1]["loss"]}
    assert all(is_png(p) for p in ev["plots"]) and len(ev["plots"]) == 3
    assert registry.get_sample_value("ctxext_eval_perplexity", {"length": "256", "cej": "tiny",
                                                                "cej_namespace": "team-a", "stage": "2"}) is not None
