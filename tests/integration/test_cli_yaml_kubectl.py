"""What the CLI prints as YAML goes through ``kubectl apply -f -`` against the real API server.

kubectl reads YAML as 1.2 (sigs.k8s.io/yaml): a string PyYAML leaves plain, such as the
learning-rate annotation ``2e-05``, becomes a number there and the whole object is refused.
Server-side dry run: the server validates and admits the object but stores nothing.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

pytestmark = pytest.mark.apiserver
ROOT = Path(__file__).resolve().parents[2]
NS = "team-a"


def _ctxext(*args: str) -> str:
    proc = subprocess.run([sys.executable, "-m", "ctxext.cli.main", *args], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def _kubectl_apply(text: str, kubeconfig: str) -> subprocess.CompletedProcess[str]:
    kubectl = shutil.which("kubectl")
    assert kubectl, "kubectl is needed (scripts/setup.sh installs it)"
    return subprocess.run([kubectl, "--kubeconfig", kubeconfig, "apply", "--dry-run=server", "-o", "yaml",
                           "-f", "-"], input=text, capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("args", [
    ("examples/llama3-8b-1m.yaml", "--stage", "1"),
    ("examples/llama3-8b-1m.yaml", "--stage", "3", "--learning-rate", "1e-5"),
    ("examples/tiny-cpu.yaml", "--stage", "2"),
], ids=["llama-stage1", "llama-retry-lr", "tiny-stage2"])
def test_render_output_is_applied_by_kubectl_with_the_same_values(k8s_api: str, args: tuple[str, ...]) -> None:
    text = _ctxext("render", str(ROOT / args[0]), *args[1:], "-n", NS)
    proc = _kubectl_apply(text, k8s_api)
    assert proc.returncode == 0, proc.stderr
    printed, admitted = yaml.safe_load(text), yaml.safe_load(proc.stdout)
    annotations = admitted["metadata"]["annotations"]
    annotations.pop("kubectl.kubernetes.io/last-applied-configuration")
    assert annotations == printed["metadata"]["annotations"]
    assert admitted["spec"] == printed["spec"]


def test_crd_output_is_applied_by_kubectl(k8s_api: str) -> None:
    proc = _kubectl_apply(_ctxext("crd"), k8s_api)
    assert proc.returncode == 0, proc.stderr
    assert yaml.safe_load(proc.stdout)["spec"]["names"]["kind"] == "ContextExtensionJob"
