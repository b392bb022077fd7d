"""``scripts/build-images.sh`` on bad input: one plain line saying what is missing, never a build.

A machine without docker or buildah is made by running the script with a PATH that holds only the
ordinary tools it needs; no network for pip by pointing ``PIP_INDEX_URL`` at a closed port.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "scripts" / "build-images.sh"
#: What the script runs before it needs a builder (and python3 for the network check).
TOOLS = ["bash", "sed", "head", "dirname", "cat", "grep", "cut", "date", "python3", "id", "ls"]


def bare_path(tmp_path: Path, extra: dict[str, str] | None = None) -> str:
    """A PATH with only TOOLS (symlinks to the real ones) plus ``extra`` scripts: no docker, no buildah."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for tool in TOOLS:
        real = shutil.which(tool)
        assert real, f"{tool} is not installed"
        (bin_dir / tool).symlink_to(real)
    for name, text in (extra or {}).items():
        (bin_dir / name).write_text(text)
        (bin_dir / name).chmod(0o755)
    return str(bin_dir)


def run(args: list[str], path: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["bash", str(SCRIPT), *args], capture_output=True, text=True, timeout=120,
                          env={"PATH": path, "HOME": os.environ.get("HOME", "/tmp"), **env})


def test_without_docker_or_buildah_it_says_so_in_one_line(tmp_path: Path):
    done = run([], bare_path(tmp_path))
    assert done.returncode == 1 and done.stdout == ""
    assert done.stderr.count("\n") == 1, done.stderr
    assert "neither docker" in done.stderr and "apt-get install buildah" in done.stderr


def test_named_builder_missing_says_which(tmp_path: Path):
    done = run(["--builder", "buildah"], bare_path(tmp_path))
    assert done.returncode == 1 and done.stderr.count("\n") == 1
    assert "buildah is not installed" in done.stderr


def test_without_network_for_pip_it_says_so_in_one_line(tmp_path: Path):
    marker = tmp_path / "buildah-was-run"
    # Present, so the script gets past the builder check; it must stop before running it.
    fake = f"#!/bin/sh\ntouch {marker}\nexit 99\n"
    done = run([], bare_path(tmp_path, {"buildah": fake}), PIP_INDEX_URL="http://127.0.0.1:9/simple")
    assert done.returncode == 1 and done.stderr.count("\n") == 1, done.stderr
    assert "pip cannot reach http://127.0.0.1:9/simple" in done.stderr
    assert not marker.exists()


@pytest.mark.parametrize("args, words", [
    (["--only", "web"], "--only takes operator or trainer"),
    (["--tag", "bad tag"], "not a valid image tag"),
    (["--push", "Registry.Example.com/x"], "not a registry path"),
    (["--base-from-debs", "--builder", "docker"], "--base-from-debs needs --builder buildah"),
])
def test_bad_arguments_get_one_line(tmp_path: Path, args: list[str], words: str):
    done = run(args, bare_path(tmp_path, {"docker": "#!/bin/sh\nexit 0\n"}))
    assert done.returncode == 1 and done.stderr.count("\n") == 1, done.stderr
    assert words in done.stderr


def test_dry_run_prints_the_references_and_builds_nothing(tmp_path: Path):
    done = run(["--push", "registry.example.com/team/", "--tag", "1.2.3", "--dry-run"], bare_path(tmp_path))
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[-2:] == ["operator=registry.example.com/team/operator:1.2.3",
                          "trainer=registry.example.com/team/trainer:1.2.3"]
    assert "would push registry.example.com/team/trainer:1.2.3" in lines
    assert "torch from torch==2.13.0" in done.stdout  # the CUDA build from PyPI by default
