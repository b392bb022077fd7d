"""The curriculum planner on the reference schedules and its error paths."""

import json

import pytest

from ctxext.errors import SpecError
from ctxext.manifest import job_from_object
from ctxext.planner import plan_curriculum, stage_lengths
from tests.unit.helpers import example, minimal, with_path


def plan_of(obj):
    return plan_curriculum(job_from_object(obj).spec)


def test_gradient_llama3_schedule():
    plan = plan_of(example("llama3-8b-1m.yaml"))
    assert [s.seq_len for s in plan.stages] == [65536, 262144, 524288, 1048576]
    assert abs(plan.stages[-1].rope_theta - 3580165449) <= 1
    assert all(a.rope_theta < b.rope_theta for a, b in zip(plan.stages, plan.stages[1:], strict=False))
    first = plan.stages[0]
    assert (first.world_size, first.data_parallel, first.sequence_parallel) == (8, 1, 8)
    assert first.tokens_per_step == 65536 * 1 * 32 * 1
    assert all(s.estimated_memory_gib and s.estimated_memory_gib < 48 for s in plan.stages)


def test_generated_stages_grow_by_factor_and_end_at_target():
    plan = plan_of(minimal(targetContextLength=1048576))
    assert [s.seq_len for s in plan.stages] == [32768, 131072, 524288, 1048576]
    assert [s.index for s in plan.stages] == [1, 2, 3, 4]
    assert stage_lengths(8192, 100000, 4) == [32768, 100000]


def test_stage_fields_fall_back_to_stage_defaults():
    obj = minimal(curriculum={"stageDefaults": {"steps": 7, "learningRate": 1e-4, "nodes": 2},
                              "stages": [{"seqLen": 32768, "steps": 3}, {"seqLen": 65536}]})
    plan = plan_of(obj)
    assert [s.steps for s in plan.stages] == [3, 7]
    assert [s.nodes for s in plan.stages] == [2, 2]
    assert plan.stages[1].learning_rate == 1e-4


def test_ntk_rule_uses_alpha_override():
    obj = minimal(curriculum={"thetaRule": "ntk", "stages": [{"seqLen": 65536, "ntkAlpha": 29}]})
    stage = plan_of(obj).stages[0]
    assert round(stage.rope_theta) == 15296098 and stage.ntk_alpha == 29


def test_fixed_rule_takes_stage_thetas():
    obj = minimal(curriculum={"thetaRule": "fixed", "stages": [{"seqLen": 32768, "ropeTheta": 2e6},
                                                              {"seqLen": 65536, "ropeTheta": 8e6}]})
    assert [s.rope_theta for s in plan_of(obj).stages] == [2e6, 8e6]


def test_memory_overflow_is_an_error_quoting_numbers():
    obj = with_path(example("llama3-8b-1m.yaml"), "spec.resources.gpuMemoryGiB", 24)
    with pytest.raises(SpecError) as err:
        plan_of(obj)
    assert err.value.field == "spec.resources.gpuMemoryGiB"
    assert "GiB per GPU but gpuMemoryGiB is 24" in str(err.value)


def test_tight_memory_is_a_warning():
    every_layer = with_path(example("llama3-8b-1m.yaml"), "spec.parallelism.checkpointLayerFraction", 1.0)
    biggest = max(s.estimated_memory_gib for s in plan_of(every_layer).stages)
    obj = with_path(every_layer, "spec.resources.gpuMemoryGiB", round(biggest / 0.95, 1))
    assert any("tight" in w for w in plan_of(obj).warnings)


def test_selective_checkpointing_recomputes_the_fewest_layers_that_fit():
    stages = plan_of(example("llama3-8b-1m.yaml")).stages  # 48 GiB GPUs, 32 layers
    every = plan_of(with_path(example("llama3-8b-1m.yaml"), "spec.parallelism.checkpointLayerFraction", 1.0)).stages
    for s, e in zip(stages[:3], every, strict=False):
        assert s.checkpointed_layers is not None and 0 < s.checkpointed_layers < 32
        assert e.estimated_memory_gib < s.estimated_memory_gib <= 0.9 * 48
    # The 1M stage needs every layer checkpointed once the ring's buffers are counted (ctxext.memory).
    assert stages[3].checkpointed_layers == 32 and stages[3].estimated_memory_gib <= 0.9 * 48
    roomy = plan_of(with_path(example("llama3-8b-1m.yaml"), "spec.resources.gpuMemoryGiB", 4000)).stages
    assert {s.checkpointed_layers for s in roomy} == {0}
    half = with_path(example("llama3-8b-1m.yaml"), "spec.parallelism.checkpointLayerFraction", 0.5)
    assert {s.checkpointed_layers for s in plan_of(with_path(half, "spec.resources.gpuMemoryGiB", 4000)).stages} == {16}
    with pytest.raises(SpecError, match=r"needs about 62\.9 GiB per GPU but gpuMemoryGiB is 48"):
        plan_of(half)  # an explicit fraction is kept, and then the 64K stage does not fit


def test_cpu_stages_checkpoint_every_layer():
    assert {s.checkpointed_layers for s in plan_of(example("tiny-cpu.yaml")).stages} == {None}


def test_no_checkpointing_at_1m_does_not_fit():
    obj = with_path(example("llama3-8b-1m.yaml"), "spec.parallelism.activationCheckpointing", False)
    with pytest.raises(SpecError, match="activation checkpointing"):
        plan_of(obj)


def test_sequence_parallel_must_divide_world_size():
    obj = minimal(resources={"gpusPerNode": 4}, parallelism={"sequenceParallel": 8})
    with pytest.raises(SpecError, match="must divide that") as err:
        plan_of(obj)
    assert err.value.field == "spec.parallelism.sequenceParallel"


def test_too_many_generated_stages():
    obj = minimal(targetContextLength=1 << 26, curriculum={"growthFactor": 2})
    obj["spec"]["model"]["originalContextLength"] = 128
    with pytest.raises(SpecError, match="more than 16"):
        plan_of(obj)


def test_missing_base_theta_for_remote_model():
    obj = with_path(minimal(), "spec.model", {"source": "s3://bucket/llama/", "originalContextLength": 8192})
    with pytest.raises(SpecError) as err:
        plan_of(obj)
    assert err.value.field == "spec.model.ropeTheta"


def test_model_facts_read_from_local_config(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({
        "rope_parameters": {"rope_type": "default", "rope_theta": 10000.0}, "max_position_embeddings": 1024,
        "hidden_size": 256, "num_attention_heads": 4, "num_hidden_layers": 2, "intermediate_size": 512,
        "vocab_size": 1000}))
    obj = {"apiVersion": "ctxext.dev/v1alpha1", "kind": "ContextExtensionJob", "metadata": {"name": "x"},
           "spec": {"model": {"source": f"file://{tmp_path}"}, "targetContextLength": 4096,
                    "curriculum": {"thetaRule": "ntk", "growthFactor": 2},
                    "resources": {"gpusPerNode": 1, "gpuMemoryGiB": 16}}}
    plan = plan_of(obj)
    assert (plan.original_context_length, plan.base_rope_theta, plan.head_dim) == (1024, 10000.0, 64)
    assert [s.seq_len for s in plan.stages] == [2048, 4096]
    assert plan.stages[0].estimated_memory_gib is not None


def test_a_local_model_with_an_unscalable_rope_type_is_refused_before_launch(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({
        "rope_theta": 10000.0, "rope_scaling": {"type": "dynamic", "factor": 2.0}, "max_position_embeddings": 1024,
        "hidden_size": 256, "num_attention_heads": 4, "num_hidden_layers": 2, "intermediate_size": 512,
        "vocab_size": 1000}))
    obj = with_path(minimal(), "spec.model.source", f"file://{tmp_path}")
    with pytest.raises(SpecError) as err:
        plan_of(obj)
    assert err.value.field == "spec.model.source"
    assert "RoPE type 'dynamic' cannot be theta-scaled" in str(err.value) and "config.json" in str(err.value)


def test_unreadable_local_config_names_the_source(tmp_path):
    (tmp_path / "config.json").write_text("{not json")
    obj = with_path(minimal(), "spec.model.source", f"file://{tmp_path}")
    with pytest.raises(SpecError) as err:
        plan_of(obj)
    assert err.value.field == "spec.model.source" and "cannot read" in str(err.value)


def test_tiny_cpu_example_plans_two_stages_on_cpu():
    plan = plan_of(example("tiny-cpu.yaml"))
    assert [s.seq_len for s in plan.stages] == [512, 1024]
    assert plan.stages[-1].seq_len >= 4 * plan.original_context_length
    assert [round(s.rope_theta) for s in plan.stages] == [43873, 91896]  # ntk
    assert all(s.gpus_per_node == 0 and s.world_size == 2 for s in plan.stages)


def test_kv_heads_must_divide_attention_heads():
    obj = with_path(example("llama3-8b-1m.yaml"), "spec.model.architecture.numKeyValueHeads", 3)
    with pytest.raises(SpecError) as err:
        plan_of(obj)
    assert err.value.field == "spec.model.architecture.numKeyValueHeads"


def test_nulls_are_dropped_like_the_api_server():
    obj = with_path(minimal(curriculum={"stageDefaults": {"batchSize": None}}), "spec.model.headDim", None)
    plan = plan_of(obj)
    assert plan.stages[0].batch_size == 1


def _with_heads(heads: int, kv: int, sp: int, ring: int | None = None) -> dict:
    obj = example("llama3-8b-1m.yaml")
    arch = obj["spec"]["model"]["architecture"]
    arch.update(numAttentionHeads=heads, numKeyValueHeads=kv, hiddenSize=heads * 128)
    obj["spec"]["parallelism"]["sequenceParallel"] = sp
    if ring is not None:
        obj["spec"]["parallelism"]["ringDegree"] = ring
    for stage in obj["spec"]["curriculum"].get("stages") or []:
        stage.pop("sequenceParallel", None)
        stage["nodes"] = 12
    obj["spec"]["resources"]["gpuMemoryGiB"] = 1000
    return obj


@pytest.mark.parametrize(("heads", "kv", "sp", "ulysses", "ring"), [
    (32, 8, 8, 8, 1), (32, 8, 16, 8, 2), (32, 8, 32, 8, 4), (24, 6, 4, 2, 2), (48, 12, 8, 4, 2),
    (32, 8, 4, 4, 1), (32, 4, 32, 4, 8), (4, 1, 8, 1, 8)])
def test_automatic_split_keeps_ulysses_within_the_kv_heads_and_rings_the_rest(heads, kv, sp, ulysses, ring):
    stage = plan_of(_with_heads(heads, kv, sp)).stages[0]
    assert (stage.sequence_parallel, stage.ulysses_degree, stage.ring_degree) == (sp, ulysses, ring)
    assert stage.sequence_parallel_layout.startswith(f"SP {sp} = ")
    assert ("ring" in stage.sequence_parallel_layout) == (ring > 1)


def test_plan_says_the_layout_in_words():
    stages = plan_of(example("llama3-8b-1m.yaml")).stages
    assert [s.sequence_parallel_layout for s in stages[:2]] == [
        "SP 8 = Ulysses 8 (1 KV head per rank)", "SP 16 = Ulysses 8 (1 KV head per rank) x ring 2 (zigzag)"]


@pytest.mark.parametrize(("heads", "kv", "sp", "why"), [
    (24, 6, 4, "Ulysses 4 and the 6 key/value heads must divide one another"),
    (24, 8, 16, "Ulysses 16 must divide the 24 attention heads"),
    (32, 8, 64, "Ulysses 64 must divide the 32 attention heads")])
def test_ulysses_only_is_refused_where_it_cannot_split_the_heads(heads, kv, sp, why):
    with pytest.raises(SpecError) as err:
        plan_of(_with_heads(heads, kv, sp, ring=1))
    assert err.value.field == "spec.parallelism.ringDegree"
    message = str(err.value)
    assert f"sequence-parallel degree {sp} with ringDegree 1 runs Ulysses {sp}, but {why}" in message
    assert "leave ringDegree unset for the automatic split" in message


def test_ulysses_beyond_the_kv_heads_replicates_them_with_a_warning():
    plan = plan_of(_with_heads(32, 8, 16, ring=1))
    assert (plan.stages[0].ulysses_degree, plan.stages[0].ring_degree) == (16, 1)
    assert any("replicated on 2 ranks" in w and "K/V all-to-all traffic grows 2x" in w for w in plan.warnings)


def test_ring_degree_must_divide_the_sequence_parallel_degree():
    with pytest.raises(SpecError) as err:
        plan_of(_with_heads(32, 8, 8, ring=3))
    assert err.value.field == "spec.parallelism.ringDegree"
    assert "ringDegree must divide sequenceParallel: 3 does not divide 8" in str(err.value)


def test_zigzag_ring_needs_seq_len_a_multiple_of_twice_the_degree():
    obj = minimal(targetContextLength=8192 + 16 * 8 * 2 + 16, resources={"gpusPerNode": 16},
                  parallelism={"sequenceParallel": 16})
    obj["spec"]["model"]["architecture"] = example("llama3-8b-1m.yaml")["spec"]["model"]["architecture"]
    with pytest.raises(SpecError, match="must be a multiple of 32 \\(2 x SP 16: zigzag ring attention"):
        plan_of(obj)


def test_a_stage_can_set_its_own_ring_degree_and_is_told_by_field_when_it_does_not_fit():
    obj = example("llama3-8b-1m.yaml")
    obj["spec"]["curriculum"]["stages"][1]["ringDegree"] = 4  # SP 16 there: Ulysses 4 x ring 4
    stage = plan_of(obj).stages[1]
    assert (stage.ulysses_degree, stage.ring_degree) == (4, 4)
    obj["spec"]["curriculum"]["stages"][1]["ringDegree"] = 3
    with pytest.raises(SpecError) as err:
        plan_of(obj)
    assert err.value.field == "spec.curriculum.stages[1].ringDegree"
    assert "ringDegree 3 must divide the sequence-parallel degree 16" in str(err.value)


def test_a_single_gpu_stage_is_planned_at_zero_1_with_its_reduce_buckets():
    """DeepSpeed runs the trainer's ZeRO-1 config (bf16, no fp32 grad_accum_dtype) with its ZeRO optimizer,
    not the bf16 optimizer: bf16 gradients and two reduce buckets, no fp32 gradient buffer (test_memory_terms.py)."""
    obj = with_path(example("llama3-8b-1m.yaml"), "spec.resources.gpusPerNode", 1)
    obj["spec"]["parallelism"]["sequenceParallel"] = 1
    for stage in obj["spec"]["curriculum"]["stages"]:
        stage.pop("sequenceParallel", None)
        stage["nodes"] = 1
    obj["spec"]["resources"]["gpuMemoryGiB"] = 4000
    stage = plan_of(obj).stages[0]
    assert stage.zero_stage == 1  # one rank partitions nothing: ZeRO-1 whatever zeroStage says
    params = 8030261248
    breakdown = stage.memory_breakdown_gib
    assert breakdown is not None
    assert breakdown["gradients"] == pytest.approx(2 * params / 2**30, rel=1e-3)  # bf16 only
    assert breakdown["buffers"] == pytest.approx(2 * 5e8 * 2 / 2**30, abs=1e-3)  # overlap_comm's two buckets


def test_fp32_gradient_accumulation_is_counted_on_gpu_at_zero_2_and_3():
    """bf16 at ZeRO 2/3 accumulates gradients in fp32 (ctxext_trainer.engine.FP32_ACCUMULATION_STAGES)."""
    from ctxext.api.spec import ModelArchitecture
    from ctxext.memory import GIB, estimate_memory, parameter_count

    arch = ModelArchitecture(num_layers=32, hidden_size=4096, intermediate_size=14336, num_attention_heads=32,
                             num_key_value_heads=8, vocab_size=128256)
    n, world = parameter_count(arch), 8

    def grads(zero: int, on_gpu: bool) -> float:
        return estimate_memory(arch, seq_len=65536, batch_size=1, world_size=world, sequence_parallel=8,
                               zero_stage=zero, activation_checkpointing=True, on_gpu=on_gpu).gradients * GIB

    assert grads(3, True) == pytest.approx(4 * n / world)  # the fp32 partition replaces the bf16 one
    assert grads(2, True) == pytest.approx(4 * n / world)  # likewise (DeepSpeed's compact fp32 partition)
    assert grads(3, False) == pytest.approx(4 * n / world)  # CPU trains in fp32 already
