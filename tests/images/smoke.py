"""Smoke tests of the built images, run by ``scripts/ci-images.sh`` (root, buildah, no docker daemon).

``trainer``: the operator image prints (``ctxext render``) the PyTorchJob of stage 1 of a shortened
``examples/tiny-cpu.yaml``; the trainer image then runs that container's own command with its own
environment plus the variables Kubeflow injects (``local_launch.replica_processes``: MASTER_*,
WORLD_SIZE, RANK, PET_*), as the pod's runAsUser with ``/ckpt`` mounted: torchrun starts 2 gloo processes and
the stage must write ``result.json`` with status Succeeded.

``operator``: the test API server runs on this machine; ``ctxext operator`` runs in the operator image
(uid 10001) and ``ctxext local-executor`` (the training-operator stand-in) in the trainer image (uid
10001), so every stage's torchrun starts from the trainer image's Python. ``examples/tiny-cpu.yaml``
(its metrics port moved to a free one; ``--steps N`` shortens every stage and drops the gates) must
reach Succeeded.

Containers share the host network (buildah's chroot isolation). Usage::

    python -m tests.images.smoke trainer|operator --operator-image REF --trainer-image REF --workdir DIR
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "tiny-cpu.yaml"
UID = "10001"
NS = "ctxext-smoke"
BUILDAH = ["buildah", "--storage-driver", os.environ.get("STORAGE_DRIVER", "vfs")]


def log(msg: str) -> None:
    print(f"[smoke {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def container(image: str) -> Iterator[str]:
    """A working container of ``image`` (removed afterwards: with vfs it is a full copy)."""
    name = subprocess.run([*BUILDAH, "from", "--pull-never", image], check=True, capture_output=True,
                          text=True).stdout.strip()
    try:
        yield name
    finally:
        subprocess.run([*BUILDAH, "rm", name], check=False, capture_output=True)


def run_args(ctr: str, *, env: dict[str, str] | None = None, volumes: list[str] | None = None,
             user: str = f"{UID}:{UID}") -> list[str]:
    """``buildah run`` as ``user`` (default 10001:10001, the chart's operator pod) with env and bind mounts."""
    args = [*BUILDAH, "run", "--isolation", "chroot", "--user", user]
    for key, value in (env or {}).items():
        args += ["--env", f"{key}={value}"]
    for volume in volumes or []:
        args += ["-v", volume]
    return [*args, ctr, "--"]


def owned_dir(path: Path, uid: int = int(UID), gid: int = int(UID)) -> Path:
    """A directory the containers' user (default 10001) may write."""
    path.mkdir(parents=True, exist_ok=True)
    os.chown(path, uid, gid)
    return path


def image_user(image: str) -> str:
    """The image's USER (``uid:gid``)."""
    return subprocess.run([*BUILDAH, "inspect", "--type", "image", "--format", "{{.OCIv1.Config.User}}", image],
                          check=True, capture_output=True, text=True).stdout.strip()


def manifest(trainer_image: str, steps: int | None, stages: int | None = None) -> dict[str, Any]:
    obj = yaml.safe_load(EXAMPLE.read_text())
    obj["metadata"] = {"name": "tiny-cpu", "namespace": NS}
    spec = obj["spec"]
    spec["resources"]["image"] = trainer_image
    spec["metrics"] = {"port": free_port()}  # not the default 9400: other jobs on this machine may use it
    if steps is not None:
        stage_list = spec["curriculum"]["stages"][: stages or None]
        spec["curriculum"]["stages"] = [{**s, "steps": steps} for s in stage_list]
        spec["targetContextLength"] = stage_list[-1]["seqLen"]
        spec["curriculum"]["stageDefaults"]["warmupSteps"] = 1
        spec["evaluation"].update(lengths=[128], depths=[0.5], samplesPerCell=2, gates=[])
    return obj


#: No API server in the trainer smoke test: report the stage result to it only briefly (result.json counts).
NO_API = {"CTXEXT_RESULT_RETRY_SECONDS": "1"}


def smoke_trainer(op_image: str, tr_image: str, work: Path) -> None:
    from ctxext.controller.local_launch import replica_processes

    inp = work / "in"
    inp.mkdir(parents=True, exist_ok=True)
    (inp / "manifest.yaml").write_text(yaml.safe_dump(manifest(tr_image, steps=4, stages=1)))
    os.chmod(inp, 0o755)
    os.chmod(inp / "manifest.yaml", 0o644)
    with container(op_image) as op:
        out = subprocess.run([*run_args(op, volumes=[f"{inp}:/in:ro"]), "ctxext", "render", "/in/manifest.yaml"],
                             check=True, capture_output=True, text=True)
    job = yaml.safe_load(out.stdout)
    (work / "pytorchjob.yaml").write_text(out.stdout)
    pod = job["spec"]["pytorchReplicaSpecs"]["Master"]["template"]["spec"]
    box = pod["containers"][0]
    mounts = [m["mountPath"] for m in box["volumeMounts"] if m["mountPath"] != "/dev/shm"]
    assert mounts == ["/ckpt"], mounts
    # Run as the kubelet would: the pod's runAsUser/runAsGroup, the volume writable by its fsGroup.
    security = pod["securityContext"]
    uid, gid = int(security["runAsUser"]), int(security.get("runAsGroup", security["runAsUser"]))
    if f"{uid}:{gid}" != image_user(tr_image):
        raise SystemExit(f"trainer pods run as {uid}:{gid} but the trainer image's user is "
                         f"{image_user(tr_image)}: the pod could not write the image's HOME")
    # root=/ : mount path P stays P inside the container (the volumes are mounted there).
    (master,) = replica_processes(job, Path("/"), free_port())
    ckpt = owned_dir(work / "ckpt", uid, int(security.get("fsGroup", gid)))
    argv = [*box.get("command", []), *box.get("args", [])]
    log(f"trainer image: {' '.join(argv)} (nprocPerNode {job['spec']['nprocPerNode']})")
    with container(tr_image) as tr:
        start = time.monotonic()
        args = run_args(tr, env={**master.env, **NO_API}, volumes=[f"{ckpt}:/ckpt"], user=f"{uid}:{gid}")
        proc = subprocess.run([*args, *argv], capture_output=True, text=True)
    (work / "trainer.log").write_text(proc.stdout + proc.stderr)
    if proc.returncode != 0:
        raise SystemExit(f"the trainer image exited {proc.returncode}:\n{(proc.stdout + proc.stderr)[-3000:]}")
    stage_config = json.loads(master.env["CTXEXT_STAGE_CONFIG"])
    result_path = ckpt / Path(stage_config["outputDir"]).relative_to("/ckpt") / "result.json"
    result = json.loads(result_path.read_text())
    assert result["status"] == "Succeeded" and result["stepsDone"] == 4, result
    log(f"trainer image: stage 1 Succeeded in {time.monotonic() - start:.0f} s, {result_path}")


class Background:
    """``buildah run`` in its own process group, output to a log file."""

    def __init__(self, args: list[str], log_path: Path):
        self.log_path = log_path
        with open(log_path, "ab") as f:
            self.proc = subprocess.Popen(args, stdout=f, stderr=subprocess.STDOUT, start_new_session=True)

    def tail(self, n: int = 40) -> str:
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()


def smoke_operator(op_image: str, tr_image: str, work: Path, steps: int | None, timeout: float) -> None:
    from kubernetes import client, config

    from tests.conftest import START, install_crds

    api_dir = work / "api"
    kube = work / "kube"
    subprocess.run([str(START), "start", str(api_dir)], check=True, stdout=subprocess.DEVNULL, timeout=1800)
    procs: list[Background] = []
    try:
        with config.new_client_from_config(config_file=str(api_dir / "kubeconfig")) as api:
            install_crds(api)
        kube.mkdir(parents=True, exist_ok=True)
        shutil.copy(api_dir / "kubeconfig", kube / "kubeconfig")
        os.chmod(kube, 0o755)
        os.chmod(kube / "kubeconfig", 0o644)  # readable by uid 10001 in the containers (a throw-away server)
        env = {"KUBECONFIG": "/kube/kubeconfig", "OMP_NUM_THREADS": "1"}
        exec_root = owned_dir(work / "root")
        with container(op_image) as op, container(tr_image) as tr:
            op_env = {**env, "CTXEXT_POST_EVENTS": "0", "CTXEXT_METRICS_PORT": str(free_port()),
                      "CTXEXT_HEALTH_PORT": str(free_port())}
            procs.append(Background([*run_args(op, env=op_env, volumes=[f"{kube}:/kube:ro"]), "ctxext", "operator"],
                                    work / "operator.log"))
            procs.append(Background([*run_args(tr, env=env, volumes=[f"{kube}:/kube:ro", f"{exec_root}:/exec"]),
                                     "ctxext", "local-executor", "--root", "/exec", "-n", NS],
                                    work / "executor.log"))
            config.load_kube_config(config_file=str(api_dir / "kubeconfig"))
            custom = client.CustomObjectsApi()
            body = manifest(tr_image, steps)
            custom.create_namespaced_custom_object("ctxext.dev", "v1alpha1", NS, "contextextensionjobs", body,
                                                   field_validation="Strict")
            start, last = time.monotonic(), ""
            while True:
                status = custom.get_namespaced_custom_object("ctxext.dev", "v1alpha1", NS, "contextextensionjobs",
                                                             "tiny-cpu").get("status") or {}
                line = f"phase {status.get('phase')} stage {status.get('stage')}"
                if line != last:
                    log(f"operator image: {line} ({time.monotonic() - start:.0f} s)")
                    last = line
                if status.get("phase") in ("Succeeded", "Failed"):
                    break
                dead = [p for p in procs if p.proc.poll() is not None]
                if dead or time.monotonic() - start > timeout:
                    why = f"{dead[0].log_path.name} exited" if dead else f"not finished after {timeout:.0f} s"
                    raise SystemExit(f"operator smoke test: {why}\n" + "\n".join(p.tail() for p in procs))
                time.sleep(5)
            (work / "status.json").write_text(json.dumps(status, indent=1))
            if status["phase"] != "Succeeded":
                raise SystemExit("operator smoke test: Failed\n" + json.dumps(status.get("conditions"), indent=1)
                                 + "\n" + "\n".join(p.tail() for p in procs))
            log(f"operator image: tiny-cpu Succeeded in {time.monotonic() - start:.0f} s "
                f"({len(status.get('stages', []))} stages)")
            for p in procs:
                p.stop()
    finally:
        for p in procs:
            p.stop()
        subprocess.run([str(START), "stop", str(api_dir)], check=False, stdout=subprocess.DEVNULL)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("which", choices=["trainer", "operator"])
    parser.add_argument("--operator-image", required=True)
    parser.add_argument("--trainer-image", required=True)
    parser.add_argument("--workdir", type=Path, required=True)
    parser.add_argument("--steps", type=int, default=None, help="operator: shorten every stage to N steps")
    parser.add_argument("--timeout", type=float, default=2400.0, help="operator: seconds to reach Succeeded")
    args = parser.parse_args()
    work = args.workdir.resolve() / args.which
    if work.exists():
        shutil.rmtree(work)
    work.mkdir(parents=True)
    os.chmod(work, 0o755)
    if args.which == "trainer":
        smoke_trainer(args.operator_image, args.trainer_image, work)
    else:
        smoke_operator(args.operator_image, args.trainer_image, work, args.steps, args.timeout)


if __name__ == "__main__":
    main()
