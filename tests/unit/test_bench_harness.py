"""The pure parts of the benchmark plumbing (bench/): statistics, /proc and Prometheus parsing, FLOPs.

Nothing here times anything; the benchmarks themselves are run by hand (bench/README.md).
"""

from __future__ import annotations

import doctest
import math
from pathlib import Path

import pytest

from tests.unit.helpers import load_bench

harness = load_bench("_harness")


def test_percentile_interpolates_like_numpy():
    values = [3.0, 1.0, 2.0, 4.0, 10.0]
    assert harness.percentile(values, 0) == 1.0
    assert harness.percentile(values, 100) == 10.0
    assert harness.percentile(values, 50) == 3.0
    assert harness.percentile(values, 90) == pytest.approx(4 + 0.6 * 6)  # numpy.percentile(values, 90) = 7.6
    assert harness.percentile([2.0], 99) == 2.0
    assert math.isnan(harness.percentile([], 50))
    with pytest.raises(ValueError):
        harness.percentile(values, 101)


def test_summarize_and_ratio():
    s = harness.summarize([1.0, 2.0, 3.0])
    assert s["n"] == 3 and s["p50"] == 2.0 and s["max"] == 3.0 and s["mean"] == 2.0
    assert harness.summarize([])["n"] == 0
    assert harness.ratio(3.0, 2.0) == 1.5
    assert harness.ratio(1.0, 0.0) is None and harness.ratio(None, 1.0) is None
    assert harness.ratio(math.nan, 1.0) is None


def test_proc_stat_tolerates_parentheses_and_spaces_in_the_command_name():
    line = "7 (a) b) (c) R 1 7 7 0 -1 0 0 0 0 0 1234 56 0 0 20 0 1 0 99 0 0"
    assert harness.parse_proc_stat(line) == (1234, 56)


def test_proc_stat_of_this_process_is_readable():
    ticks = harness.parse_proc_stat(Path("/proc/self/stat").read_text())
    assert all(t >= 0 for t in ticks)
    mem = harness.parse_proc_status(Path("/proc/self/status").read_text())
    assert mem["VmHWM"] >= mem["VmRSS"] > 0


def test_parse_metrics_keeps_histogram_count_and_labels():
    text = (
        "# TYPE ctxext_reconcile_duration_seconds histogram\n"
        'ctxext_reconcile_duration_seconds_bucket{le="0.1"} 4.0\n'
        'ctxext_reconcile_duration_seconds_bucket{le="+Inf"} 5.0\n'
        "ctxext_reconcile_duration_seconds_count 5.0\n"
        "ctxext_reconcile_duration_seconds_sum 0.75\n"
        "# TYPE ctxext_jobs gauge\n"
        'ctxext_jobs{phase="Running"} 2.0\n'
    )
    m = harness.parse_metrics(text)
    assert m["ctxext_reconcile_duration_seconds_count"] == 5.0
    assert m["ctxext_reconcile_duration_seconds_sum"] == 0.75
    assert m['ctxext_jobs{phase="Running"}'] == 2.0


def test_json_output_has_no_nan():
    assert harness._clean({"a": math.nan, "b": [1.0, math.inf], "c": {"d": 2}}) == {"a": None, "b": [1.0, None],
                                                                                     "c": {"d": 2}}


def test_gpu_flops_and_peaks():
    gpu = load_bench("gpu_throughput")
    total, matmul = gpu.param_counts(gpu.ONE_B_SHAPE)
    assert total == 1_235_814_400  # Llama-3.2-1B shape, tied embeddings
    assert matmul == total  # tied: the embedding is counted once, as the LM head matmul
    untied = {**gpu.ONE_B_SHAPE, "tie_word_embeddings": False}
    assert gpu.param_counts(untied) == (total + 128256 * 2048, matmul)
    # attention term grows linearly per token: doubling T adds 6·L·h·T
    f16, f32 = gpu.flops_per_token(gpu.ONE_B_SHAPE, 16384), gpu.flops_per_token(gpu.ONE_B_SHAPE, 32768)
    assert f32 - f16 == pytest.approx(6 * 16 * 2048 * 16384)
    assert gpu.peak_tflops("NVIDIA H100 PCIe") == 756.0
    assert gpu.peak_tflops("NVIDIA H100 80GB HBM3") == 989.0


@pytest.mark.parametrize("name", ["_harness", "gpu_throughput", "gpu_variants", "gpu_sp_check", "_tiny_runs",
                                  "demo_robustness", "theta_ablation", "gpu_check_eval", "gpu_check_memory",
                                  "gpu_check_grad_accum", "gpu_check_preemption"])
def test_doctests(name):
    result = doctest.testmod(load_bench(name))
    assert result.failed == 0 and result.attempted > 0


def test_evidence_bench_manifests_plan(tmp_path: Path):
    """The manifests the evidence benchmarks generate pass the planner with the stages they claim."""
    import json as _json

    from ctxext.manifest import job_from_object
    from ctxext.planner import plan_curriculum

    ablation, robustness, smollm2 = (load_bench(n) for n in ("theta_ablation", "demo_robustness",
                                                              "smollm2_extension"))
    thetas = {}
    for variant in ("ntk", "scaling-law", "fixed"):
        plan = plan_curriculum(job_from_object(ablation.manifest(variant, 3)).spec)
        assert [s.seq_len for s in plan.stages] == [512, 1024, 2048]
        thetas[variant] = [s.rope_theta for s in plan.stages]
    assert thetas["fixed"] == [10000.0] * 3 and thetas["ntk"][0] == pytest.approx(43873, rel=1e-4)
    assert thetas["scaling-law"][2] > thetas["ntk"][2] > thetas["fixed"][2]
    demo = job_from_object(robustness.manifest(7)).spec
    assert demo.data.seed == 7 and [s.seq_len for s in plan_curriculum(demo).stages] == [512, 1024]
    (tmp_path / "config.json").write_text(_json.dumps({
        "model_type": "llama", "max_position_embeddings": 8192, "rope_parameters": {"rope_type": "default",
        "rope_theta": 100000.0}, "hidden_size": 576, "num_attention_heads": 9, "num_key_value_heads": 3,
        "num_hidden_layers": 30, "intermediate_size": 1536, "vocab_size": 49152}))
    obj = smollm2.manifest(tmp_path, original=2048, target=4096, steps=8, lengths=[2048, 4096], samples=1,
                           nproc=2, seed=1)
    plan = plan_curriculum(job_from_object(obj).spec)
    assert [(s.seq_len, s.steps) for s in plan.stages] == [(4096, 8)]
    assert plan.stages[0].rope_theta > 100000.0


def test_gpu_variants_choose_selective_checkpointing_from_the_card_memory():
    variants = load_bench("gpu_variants")
    gpu = load_bench("gpu_throughput")
    default, full = variants.VARIANTS["default"], variants.VARIANTS["fullckpt"]
    on_h100 = [variants.checkpointed_layers(gpu.ONE_B_SHAPE, n, 80.0, default) for n in (16384, 32768, 65536)]
    assert on_h100 == sorted(on_h100) and on_h100[0] < 16  # longer sequences recompute more layers
    assert variants.checkpointed_layers(gpu.ONE_B_SHAPE, 65536, 141.0, default) <= on_h100[-1]
    assert variants.checkpointed_layers(gpu.ONE_B_SHAPE, 65536, 80.0, full) is None
    assert variants.checkpointed_layers(gpu.ONE_B_SHAPE, 65536, None, default) is None  # CPU smoke: all layers
    assert variants.VARIANTS["zero3"].env == {"CTXEXT_SINGLE_RANK_ZERO_STAGE": "3"}


def test_sp_check_layouts():
    sp = load_bench("gpu_sp_check")
    assert sp.layouts("Ux2,1xn", 4) == [(2, 2), (1, 4)]
    assert sp.layouts("Ux2,1xn", 2) == [(1, 2)]  # both name ring 2 alone on 2 GPUs
    assert sp.layouts("3x2", 4) == []  # not 4 ranks: dropped
