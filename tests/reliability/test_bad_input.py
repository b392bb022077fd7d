"""Issue 8.5 — ≥ 500 invalid manifests: rejected at admission or marked InvalidSpec, never a crash.

Hand-written cases (wrong types, missing fields, non-increasing stages, absurd lengths, theta
overflow, huge strings, unicode names, a 64-character name, YAML bombs) plus seeded hypothesis
mutations of valid manifests that the offline validator refuses. Each one

* goes through ``ctxext validate`` and ``ctxext plan`` (in-process CLI): exit 2, a message, no traceback;
* is sent to the real API server with a running operator: rejected at admission (4xx naming the
  field), or accepted and then given condition InvalidSpec (phase Failed) naming the field — and no
  PyTorchJob is ever created for it.

The operator must stay alive and not loop hot: its CPU time over an idle window with every accepted
invalid job still present stays small, and it still answers /healthz.
"""

from __future__ import annotations

import copy
import json
import re
import time
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from kubernetes import client
from typer.testing import CliRunner

from ctxext.api.base import GROUP, PLURAL, VERSION
from ctxext.cli.main import app
from ctxext.errors import SpecError
from ctxext.manifest import job_from_object
from ctxext.planner import plan_curriculum
from tests.integration.operator_harness import wait_for
from tests.reliability._harness import Rig, cpu_seconds
from tests.unit.helpers import DELETE, example, minimal, with_path
from tests.unit.test_manifest_fuzz import mutated

pytestmark = [pytest.mark.apiserver, pytest.mark.slow]
NS = "rel-badinput"
GENERATED = 380
FIELD = re.compile(r"(spec|metadata|kind|apiVersion)\b")
runner = CliRunner()


def _stages(*lengths: int, **extra: Any) -> dict[str, Any]:
    return {"stages": [{"seqLen": n, **extra} for n in lengths]}


def hand_written() -> list[tuple[str, dict[str, Any]]]:
    """(label, manifest) pairs, each invalid for a known reason."""
    m = minimal()
    cases: list[tuple[str, dict[str, Any]]] = []

    def add(label: str, obj: dict[str, Any]) -> None:
        if not label.startswith("name ") and "metadata" not in label and isinstance(obj.get("metadata"), dict):
            obj["metadata"]["name"] = f"hw-{len(cases)}"  # one object per case
        cases.append((label, obj))

    # wrong types
    for path, value in [("spec.targetContextLength", "65536"), ("spec.targetContextLength", 65536.5),
                        ("spec.targetContextLength", True), ("spec.targetContextLength", [65536]),
                        ("spec.targetContextLength", {"value": 1}), ("spec.model.ropeTheta", "5e5"),
                        ("spec.model.ropeTheta", [1]), ("spec.model.headDim", "128"), ("spec.model", "llama"),
                        ("spec.model.source", 42), ("spec.curriculum", []), ("spec.curriculum", "linear"),
                        ("spec.suspend", "yes"), ("spec.suspend", 1), ("spec", 7), ("spec", None),
                        ("spec", "a string"), ("spec.resources.gpusPerNode", "8"), ("spec.resources", [8]),
                        ("spec.parallelism.zeroStage", "3"), ("spec.parallelism.zeroStage", 2.5),
                        ("spec.env", {"A": "b"}), ("spec.env", [{"name": "A", "value": 1}]),
                        ("spec.evaluation.lengths", "all"), ("spec.failurePolicy.maxRetries", -1),
                        ("spec.failurePolicy.learningRateBackoff", 1.5), ("spec.checkpoint.intervalSteps", 0),
                        ("metadata.name", 12345), ("metadata", "name"), ("apiVersion", "ctxext.dev/v9"),
                        ("kind", "Deployment")]:
        add(f"type {path}={value!r:.20}", with_path(m, path, value))
    for field in ("learningRate", "steps", "batchSize", "nodes", "gradientAccumulation", "warmupSteps"):
        for value in ("fast", -1, 0, [1], 1e400):
            if field == "warmupSteps" and value == 0:
                continue
            add(f"stageDefaults.{field}={value!r}", minimal(curriculum={"stageDefaults": {field: value}}))
    # missing fields
    for path in ("spec.model", "spec.model.source", "spec.targetContextLength", "spec", "kind", "apiVersion"):
        add(f"missing {path}", with_path(m, path, DELETE))
    # non-increasing stages, bad stage lists
    add("equal stages", minimal(curriculum=_stages(32768, 32768, 65536)))
    add("decreasing stages", minimal(curriculum=_stages(32768, 16384, 65536)))
    add("last stage is not the target", minimal(curriculum=_stages(16384, 32768)))
    add("stage past the target", minimal(curriculum=_stages(32768, 131072)))
    add("first stage below original", minimal(curriculum=_stages(4096, 65536)))
    add("stages not a list of objects", minimal(curriculum={"stages": [65536]}))
    add("empty stage", minimal(curriculum={"stages": [{}]}))
    add("fixed rule without thetas", minimal(curriculum={"thetaRule": "fixed"}))
    add("unknown rule", minimal(curriculum={"thetaRule": "golden-ratio"}))
    add("growth factor 1", minimal(curriculum={"growthFactor": 1}))
    add("1000 stages", minimal(curriculum=_stages(*range(8193, 9193))))
    # absurd lengths
    for n in (0, -65536, 1, 8192, 2**40, 2**53 + 1, 2**62, 2**63, 10**30):
        add(f"targetContextLength {n}", with_path(m, "spec.targetContextLength", n))
    add("original 0", with_path(m, "spec.model.originalContextLength", 0))
    add("original above target", with_path(m, "spec.model.originalContextLength", 131072))
    # theta overflow and friends
    for value in (0, -1.0, 1e300, 1e308, float("inf"), float("-inf"), float("nan"), 2**1100):
        add(f"ropeTheta {value!r:.12}", with_path(m, "spec.model.ropeTheta", value))
    add("ntk alpha 1e300", minimal(curriculum={"thetaRule": "ntk", "stages": [{"seqLen": 65536, "ntkAlpha": 1e300}]}))
    add("fixed theta 1e305", minimal(curriculum={"thetaRule": "fixed",
                                                 "stages": [{"seqLen": 65536, "ropeTheta": 1e305}]}))
    add("ntk headDim 2", with_path(minimal(curriculum={"thetaRule": "ntk"}), "spec.model.headDim", 2))
    add("headDim 3", with_path(m, "spec.model.headDim", 3))
    add("headDim 0", with_path(m, "spec.model.headDim", 0))
    # huge strings
    add("1 MB model source", with_path(m, "spec.model.source", "pvc://models/" + "a" * 1_000_000))
    add("100 kB image", with_path(m, "spec.resources.image", "registry.example.com/" + "x" * 100_000))
    add("500 kB env value", minimal(env=[{"name": "NCCL_DEBUG", "value": "v" * 500_000}]))
    add("10 kB env name", minimal(env=[{"name": "A" * 10_000, "value": "1"}]))
    add("1 MB unknown field", with_path(m, "spec.notes", "n" * 1_000_000))
    add("deep nesting", with_path(m, "spec.model.source", json.loads("[" * 200 + "]" * 200)))
    # unicode and over-long names
    for name in ("тест", "名前-job", "jöb", "a\u202eb", "job-\U0001f600", "Job", "-job", "job-", "job_1", "job.1",
                 "", " ", "a" * 64, "a" * 253, "a" * 254, "ａｂｃ"):
        add(f"name {name[:12]!r} ({len(name)})", with_path(m, "metadata.name", name))
    add("unicode env name", minimal(env=[{"name": "ÜBER", "value": "1"}]))
    add("unicode queue", minimal(scheduling={"queueName": "队列"}))
    add("unicode source", with_path(m, "spec.model.source", "pvc://modèles/llama"))
    # well-formed, but the planner refuses them (the API server cannot know): InvalidSpec from the operator
    big = example("llama3-8b-1m.yaml")
    for gib in (1, 8, 16):
        add(f"stage needs more than gpuMemoryGiB {gib}", with_path(big, "spec.resources.gpuMemoryGiB", gib))
    add("no activation checkpointing at 64K", with_path(big, "spec.parallelism.activationCheckpointing", False))
    add("ZeRO 0 for 8B", with_path(big, "spec.parallelism.zeroStage", 0))
    add("SP 8 over 7 heads", with_path(big, "spec.model.architecture.numAttentionHeads", 7))
    add("SP 32 on one node", with_path(big, "spec.curriculum.stages.3.nodes", 1))
    add("SP 8 on one GPU", with_path(big, "spec.resources.gpusPerNode", 1))
    return cases


def yaml_bombs() -> list[tuple[str, str]]:
    """(label, YAML text): alias expansion bombs and friends, sent as YAML."""
    laughs = ['a0: &a0 ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    laughs += [f"a{i}: &a{i} [{','.join([f'*a{i - 1}'] * 9)}]" for i in range(1, 9)]
    header = "apiVersion: ctxext.dev/v1alpha1\nkind: ContextExtensionJob\nmetadata: {name: bomb}\n"
    spec_bomb = header + "spec:\n  model: {source: 'pvc://m/x', ropeTheta: 500000, headDim: 128, " \
        "originalContextLength: 8192}\n  targetContextLength: 65536\n  env: *a8\n"
    return [("billion laughs", "\n".join(laughs) + "\n"),
            ("billion laughs in spec", "\n".join(laughs) + "\n" + spec_bomb),
            ("alias to a mapping", header + "x: &x {a: 1}\nspec: *x\n"),
            ("deep flow nesting", header + "spec: " + "[" * 1000 + "]" * 1000 + "\n")]


def generated(n: int) -> list[tuple[str, dict[str, Any]]]:
    """Seeded hypothesis mutations of valid manifests that the offline validator refuses."""
    out: list[tuple[str, dict[str, Any]]] = []

    @settings(max_examples=3 * n, derandomize=True, database=None, deadline=None,
              suppress_health_check=list(HealthCheck))
    @given(mutated())
    def collect(obj: dict[str, Any]) -> None:
        if len(out) >= n:
            return
        obj = copy.deepcopy(obj)
        if isinstance(obj.get("metadata"), dict):
            obj["metadata"]["name"] = f"fz-{len(out)}"
        # The API server drops null fields before validating ("batchSize: null" means unset), so a
        # mutation to null is only invalid if the manifest is invalid without it too.
        if refused_offline(obj) and refused_offline(prune_nulls(obj)):
            out.append((f"fuzz {len(out)}", obj))

    collect()
    return out


def prune_nulls(node: Any) -> Any:
    """What the API server does to null fields of a custom resource (no field here is nullable)."""
    if isinstance(node, dict):
        return {k: prune_nulls(v) for k, v in node.items() if v is not None}
    if isinstance(node, list):
        return [prune_nulls(v) for v in node]
    return node


def refused_offline(obj: dict[str, Any]) -> bool:
    try:
        plan_curriculum(job_from_object(obj).spec)
    except SpecError:
        return True
    return False


def cli_refuses(text: str, tmp_path: Any) -> None:
    path = tmp_path / "m.yaml"
    path.write_text(text)
    for command in ("validate", "plan"):
        result = runner.invoke(app, [command, str(path)])
        assert result.exit_code == 2, (command, result.output[-500:], text[:300])
        assert "Traceback" not in result.output and result.output.strip(), (command, text[:300])
        assert result.exception is None or isinstance(result.exception, SystemExit), result.exception


def post_yaml(api: client.CustomObjectsApi, text: str) -> int:
    """POST raw YAML (the API server parses it itself); returns the HTTP status."""
    rest = api.api_client.rest_client
    url = f"{api.api_client.configuration.host}/apis/{GROUP}/{VERSION}/namespaces/{NS}/{PLURAL}"
    response = rest.pool_manager.request("POST", url, body=text.encode(), timeout=60,
                                         headers={"Content-Type": "application/yaml"})
    return int(response.status)


def ptj_names(api: client.CustomObjectsApi) -> list[str]:
    listed: Any = api.list_namespaced_custom_object("kubeflow.org", "v1", NS, "pytorchjobs")
    return [j["metadata"]["name"] for j in listed["items"]]


def test_invalid_manifests_are_rejected_or_marked_invalid_and_the_operator_stays_calm(k8s_api, tmp_path):
    cases = hand_written()
    assert all(refused_offline(obj) for _, obj in cases), [lbl for lbl, obj in cases if not refused_offline(obj)]
    cases += generated(GENERATED)
    bombs = yaml_bombs()

    for _, obj in cases:  # offline: validate and plan name the problem, exit 2, no traceback
        try:
            text = yaml.safe_dump(obj, allow_unicode=True)
        except (ValueError, yaml.YAMLError):
            continue
        cli_refuses(text, tmp_path)
    for _, text in bombs:
        cli_refuses(text, tmp_path)

    rejected: dict[str, str] = {}
    accepted: dict[str, str] = {}
    # Watching only NS: the session's API server holds other tests' jobs, which a cluster-wide operator would run
    # (and count in ctxext_pytorchjobs_created_total, which must stay 0 here).
    rig = Rig(k8s_api, NS, tmp_path, operator_env={"CTXEXT_RESYNC_SECONDS": "30", "CTXEXT_NAMESPACES": NS})
    rig.start_operator()  # no executor: nothing here may ever run
    try:
        assert rig.operator is not None and rig.operator.proc is not None
        api = rig.cluster.api
        for label, obj in cases:
            try:
                created: Any = api.create_namespaced_custom_object(GROUP, VERSION, NS, PLURAL, obj,
                                                                   field_validation="Strict")
                accepted[created["metadata"]["name"]] = label
            except client.ApiException as exc:
                assert 400 <= int(exc.status) < 500, (label, exc.status, str(exc.body)[:300])
                raw = str(exc.body or "")
                body = json.loads(raw) if raw.startswith("{") else {}
                message = str(body.get("message", exc.reason))
                assert FIELD.search(message) or exc.status in (400, 413), (label, message[:300])
                rejected[label] = message
            except ValueError as exc:  # the client refuses to serialise it (NaN, 2**1100): never sent
                rejected[label] = f"client: {exc}"
        for label, text in bombs:
            code = post_yaml(api, text)
            assert 400 <= code < 500, (label, code)
            rejected[label] = f"HTTP {code}"

        unmarked = dict(accepted)

        def all_marked() -> bool:
            for name in list(unmarked):
                conds = {c["type"]: c for c in rig.cluster.status(name).get("conditions") or []}
                if conds.get("InvalidSpec", {}).get("status") == "True":
                    del unmarked[name]
            return not unmarked

        try:
            wait_for(all_marked, what="InvalidSpec on every accepted invalid manifest", timeout=240,
                     proc=rig.operator)
        except AssertionError as exc:
            specs = [f"{name}: {json.dumps(rig.cluster.cej(name).get('spec'))[:600]}" for name in list(unmarked)[:5]]
            raise AssertionError(f"not marked InvalidSpec: {unmarked}\n" + "\n".join(specs)) from exc
        assert not ptj_names(api), ptj_names(api)
        for name, label in accepted.items():
            status = rig.cluster.status(name)
            invalid = next(c for c in status["conditions"] if c["type"] == "InvalidSpec")
            assert status["phase"] == "Failed" and FIELD.search(invalid["message"]), (label, invalid)
        pid = rig.operator.proc.pid
        before, t0 = cpu_seconds(pid), time.monotonic()
        time.sleep(10)
        busy = cpu_seconds(pid) - before
        window = time.monotonic() - t0
        assert rig.operator.alive() and rig.operator.get("/healthz", rig.operator.health_port) is not None
        ptj = ptj_names(api)
        created_total = re.search(r"^ctxext_pytorchjobs_created_total (\S+)$", rig.operator.get("/metrics") or "",
                                  re.M)
    finally:
        if rig.operator is not None:
            rig.operator.stop()

    total = len(cases) + len(bombs)
    print(f"\nbad input: {total} invalid manifests tried ({len(cases) - GENERATED + len(bombs)} hand-written, "
          f"{GENERATED} generated); {len(rejected)} rejected at admission, {len(accepted)} accepted and marked "
          f"InvalidSpec; CLI validate+plan refused all {len(cases) + len(bombs)} without a traceback; operator "
          f"CPU {busy:.2f} s in an idle {window:.0f} s window with {len(accepted)} invalid jobs, alive; "
          f"InvalidSpec for: {sorted(accepted.values())}")
    assert total >= 500 and len(rejected) + len(accepted) == total
    assert not ptj and created_total is not None and float(created_total.group(1)) == 0
    assert busy < 0.5 * window, f"operator busy {busy:.1f} s of {window:.1f} s with only invalid jobs"
