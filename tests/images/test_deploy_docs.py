"""README "Deploy on a cluster": each command, as far as it runs without a cluster.

The commands are read from the README's block, so the documentation cannot drift from what is tested:
the build script runs with the block's arguments plus ``--dry-run``; the chart is rendered with the
block's ``--set`` values and must run the pushed operator image; the block's ``sed`` runs as written and
its output is created in the test API server (strict validation) with the pushed trainer image.
"""

from __future__ import annotations

import itertools
import json
import re
import shlex
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client, config

from tests.chart.rendering import CHART, NAMESPACE, kinds, render

ROOT = Path(__file__).resolve().parents[2]


def commands() -> list[str]:
    section = (ROOT / "README.md").read_text().split("\n## Deploy on a cluster\n", 1)[1].split("\n## ", 1)[0]
    match = re.search(r"```sh\n(.*?)```", section, re.S)
    assert match, "no sh block in the README's 'Deploy on a cluster'"
    return [line for line in match[1].splitlines() if line.strip()]


def command(program: str) -> str:
    (line,) = [c for c in commands() if c.split()[0] in (program, f"scripts/{program}")]
    return line


def references() -> dict[str, str]:
    done = subprocess.run([*shlex.split(command("build-images.sh")), "--dry-run"], cwd=ROOT,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return dict(line.split("=", 1) for line in done.stdout.splitlines()[-2:])


def helm_values(line: str) -> dict[str, Any]:
    """The ``--set a.b=v`` values of a helm command line (lists ``{x,y}``, booleans)."""
    values: dict[str, Any] = {}
    words = shlex.split(line)
    for flag, setting in itertools.pairwise(words):
        if flag != "--set":
            continue
        key, raw = setting.split("=", 1)
        value: Any = raw
        if raw.startswith("{") and raw.endswith("}"):
            value = raw[1:-1].split(",")
        elif raw in ("true", "false"):
            value = raw == "true"
        node = values
        *parents, leaf = key.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    return values


def test_build_script_prints_the_references_the_other_commands_use():
    refs = references()
    assert refs == {"operator": "registry.example.com/ctxext/operator:0.1.0",
                    "trainer": "registry.example.com/ctxext/trainer:0.1.0"}
    assert "0.1.0" in (CHART / "Chart.yaml").read_text()  # the tag is the chart's appVersion


def test_helm_install_runs_the_pushed_operator_image():
    line = command("helm")
    words = shlex.split(line)
    assert words[:4] == ["helm", "install", "ctxext", "charts/ctxext"]
    assert words[words.index("-n") + 1] == NAMESPACE
    objects = render(helm_values(line))
    (deployment,) = kinds(objects, "Deployment")
    (box,) = deployment["spec"]["template"]["spec"]["containers"]
    assert box["image"] == references()["operator"]
    assert any(r["metadata"]["namespace"] == "team-a" for r in kinds(objects, "Role"))
    assert kinds(objects, "ConfigMap"), "dashboard.enabled=true ships the dashboard ConfigMap"


def test_dashboard_file_to_import_is_a_grafana_dashboard():
    path = ROOT / "charts" / "ctxext" / "dashboards" / "ctxext.json"
    assert f"`{path.relative_to(ROOT)}`" in (ROOT / "README.md").read_text()
    dashboard = json.loads(path.read_text())
    assert dashboard["title"] and dashboard["panels"]


@pytest.mark.apiserver
def test_edited_example_is_admitted_with_the_pushed_trainer_image(k8s_api):
    line = command("sed")
    edit, _, apply = line.partition(" | ")
    assert shlex.split(apply)[:4] == ["kubectl", "apply", "-n", "team-a"]
    text = subprocess.run(["bash", "-c", edit], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    obj = yaml.safe_load(text)
    config.load_kube_config(config_file=k8s_api)
    custom = client.CustomObjectsApi()
    created = custom.create_namespaced_custom_object("ctxext.dev", "v1alpha1", "team-a", "contextextensionjobs",
                                                     obj, field_validation="Strict")
    try:
        assert created["spec"]["resources"]["image"] == references()["trainer"]
    finally:
        custom.delete_namespaced_custom_object("ctxext.dev", "v1alpha1", "team-a", "contextextensionjobs",
                                               created["metadata"]["name"])
