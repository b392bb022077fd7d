"""Container images: base images pinned by digest, non-root, and an operator image without torch whose
code imports without it (checked here in a subprocess where torch and the trainer extras are unimportable)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import yaml

from tests.chart.rendering import CHART, ROOT

OPERATOR_DOCKERFILE = ROOT / "Dockerfile"
TRAINER_DOCKERFILE = ROOT / "trainer_image" / "Dockerfile"
#: The [trainer] extra of pyproject.toml: none of it is in the operator image.
TRAINER_ONLY = ["torch", "deepspeed", "transformers", "safetensors", "accelerate", "numpy", "matplotlib", "pyarrow"]
#: What the operator image runs: the CLI, the planner and the controller with every module in it.
OPERATOR_MODULES = ["ctxext", "ctxext.cli.main", "ctxext.planner", "ctxext.config", "ctxext.controller"]


def _instructions(dockerfile: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    text = re.sub(r"\\\n", " ", dockerfile.read_text())
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


def _base_images(dockerfile: Path) -> list[str]:
    """Every FROM image with ARG defaults substituted (stage names excluded)."""
    args: dict[str, str] = {}
    stages: set[str] = set()
    images = []
    for word, rest in _instructions(dockerfile):
        if word == "ARG" and "=" in rest:
            name, value = rest.split("=", 1)
            args[name.strip()] = value.strip().strip('"')
        elif word == "FROM":
            parts = [p for p in rest.split() if not p.startswith("--")]
            image = re.sub(r"\$\{?(\w+)\}?", lambda m: args.get(m[1], m[0]), parts[0])
            if len(parts) >= 3 and parts[1].upper() == "AS":
                stages.add(parts[2])
            if image not in stages:
                images.append(image)
    return images


@pytest.mark.parametrize("dockerfile", [OPERATOR_DOCKERFILE, TRAINER_DOCKERFILE], ids=["operator", "trainer"])
def test_base_images_are_pinned_by_digest(dockerfile: Path):
    images = _base_images(dockerfile)
    assert images
    for image in images:
        assert re.fullmatch(r"[\w./:-]+:[\w.-]+@sha256:[0-9a-f]{64}", image), f"{dockerfile.name}: {image} not pinned"


@pytest.mark.parametrize("dockerfile", [OPERATOR_DOCKERFILE, TRAINER_DOCKERFILE], ids=["operator", "trainer"])
def test_images_run_as_a_numeric_non_root_user(dockerfile: Path):
    users = [rest for word, rest in _instructions(dockerfile) if word == "USER"]
    assert users, f"{dockerfile} has no USER"
    uid = users[-1].split(":")[0]
    assert uid.isdigit() and int(uid) != 0, f"{dockerfile}: USER {users[-1]} (numeric, so runAsNonRoot can check it)"


def test_operator_image_is_slim_has_no_torch_and_matches_the_chart():
    instructions = _instructions(OPERATOR_DOCKERFILE)
    assert all("slim" in image for image in _base_images(OPERATOR_DOCKERFILE))
    installs = " ".join(rest for word, rest in instructions if word == "RUN" and "pip install" in rest)
    assert "pip install" in installs and "torch" not in installs.replace("find_spec", "")
    assert not re.search(r"pip install [\"']?\.\[", installs), "the operator image installs no extras"
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    users = [rest for word, rest in instructions if word == "USER"]
    assert users[-1] == "10001:10001"  # the chart's runAsUser / runAsGroup (templates/_helpers.tpl)
    assert "runAsUser: 10001" in (CHART / "templates" / "_helpers.tpl").read_text()
    exposed = {int(p) for word, rest in instructions if word == "EXPOSE" for p in rest.split()}
    assert exposed == {values["metrics"]["port"], values["health"]["port"]}
    assert ("ENTRYPOINT", '["ctxext"]') in instructions and ("CMD", '["operator"]') in instructions


BLOCKER = textwrap.dedent('''
    """Test-only: make the trainer's dependencies unimportable, as in the operator image."""
    import importlib.abc
    import sys

    BLOCKED = set(%r)


    class BlockTrainerDependencies(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name.partition(".")[0] in BLOCKED:
                raise ModuleNotFoundError(f"No module named {name!r} (blocked by the test)", name=name)
            return None


    sys.meta_path.insert(0, BlockTrainerDependencies())
''')

CHECK = textwrap.dedent('''
    import importlib, pkgutil, sys
    try:
        import torch  # noqa: F401
    except ModuleNotFoundError:
        pass
    else:
        sys.exit("the blocker did not block torch")
    names = %r
    for name in names:
        module = importlib.import_module(name)
        if name == "ctxext.controller":
            for info in pkgutil.walk_packages(module.__path__, "ctxext.controller."):
                importlib.import_module(info.name)
    loaded = sorted(m for m in sys.modules if m.partition(".")[0] in %r)
    assert not loaded, loaded
    print(len([m for m in sys.modules if m.startswith("ctxext")]), "ctxext modules imported")
''')


def test_operator_and_planner_import_without_torch(tmp_path: Path):
    (tmp_path / "sitecustomize.py").write_text(BLOCKER % (TRAINER_ONLY,))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run([sys.executable, "-c", CHECK % (OPERATOR_MODULES, TRAINER_ONLY)], env=env,
                          capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "ctxext modules imported" in done.stdout


def _env(dockerfile: Path) -> dict[str, str]:
    """ENV values (``ENV A=1 B=2`` and ``ENV A 1``), the last one winning."""
    env: dict[str, str] = {}
    for word, rest in _instructions(dockerfile):
        if word == "ENV":
            if "=" in rest.split()[0]:
                env.update(m.groups() for m in re.finditer(r'(\w+)=("[^"]*"|\S+)', rest))
            else:
                name, _, value = rest.partition(" ")
                env[name] = value.strip()
    return {k: v.strip('"') for k, v in env.items()}


def test_trainer_pods_run_as_the_trainer_image_user_with_a_home_it_owns():
    """The operator's trainer pods (runAsUser/runAsGroup/fsGroup) and trainer_image/Dockerfile agree, and the
    image gives that user a HOME of its own (caches of triton, torch and HF write there)."""
    from ctxext.controller.builder import RUN_AS_USER
    from tests.unit.test_pytorchjob_builder import build, gpu_job

    instructions = _instructions(TRAINER_DOCKERFILE)
    user = [rest for word, rest in instructions if word == "USER"][-1]
    uid, _, gid = user.partition(":")
    assert (int(uid), int(gid or uid)) == (RUN_AS_USER, RUN_AS_USER), f"trainer image USER {user}"
    pod_sc = build(gpu_job())["spec"]["pytorchReplicaSpecs"]["Master"]["template"]["spec"]["securityContext"]
    assert (pod_sc["runAsUser"], pod_sc["runAsGroup"], pod_sc["fsGroup"]) == (int(uid), int(gid or uid),
                                                                               int(gid or uid))
    home = _env(TRAINER_DOCKERFILE).get("HOME")
    assert home and home.startswith("/") and not home.startswith("/tmp"), f"HOME={home}"
    runs = " ".join(rest for word, rest in instructions if word == "RUN")
    created_for_user = re.search(rf"useradd\b[^&;]*--uid {uid}\b[^&;]*--home-dir {re.escape(home)}\b", runs) or \
        re.search(rf"useradd\b[^&;]*--home-dir {re.escape(home)}\b[^&;]*--uid {uid}\b", runs) or \
        re.search(rf"chown\b[^&;]*\b{uid}(:{gid or uid})?\s[^&;]*{re.escape(home)}\b", runs)
    assert created_for_user, f"{home} is not created for uid {uid} in {TRAINER_DOCKERFILE}"
    assert "--create-home" in runs or re.search(rf"mkdir\b[^&;]*{re.escape(home)}", runs)
