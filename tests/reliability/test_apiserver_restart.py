"""Issue 8.4 — the API server and etcd restart mid-run; the operator recovers its watches within 60 s.

A dedicated server (its own run dir, not the session's) runs a 2-stage tiny curriculum with the
operator and the local executor. During stage 1, etcd and the API server are stopped; stage 1
finishes while they are down (its trainer cannot report its result), then they are started again on
the same data (``ENVTEST_KEEP_DATA=1``). The test server comes back on new ports, so
clients reach it through a small TCP forwarder on a fixed port — what the ``kubernetes`` Service's
stable address is in a cluster while API server pods restart.

Recovery is measured by what only a working watch can show: a ContextExtensionJob created after the
restart (the resync timer knows nothing of it) must get a status from the operator within 60 s.
Then the curriculum must finish Succeeded with one PyTorchJob per stage and every stage's result in
status (a trainer that finishes while the server is down retries its result until it is back).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import socket
import subprocess
import threading
import time
from pathlib import Path

import pytest
from kubernetes import config

from tests.conftest import START, install_crds
from tests.integration.operator_harness import wait_for
from tests.reliability._harness import Rig, base_model, tiny_manifest

pytestmark = [pytest.mark.apiserver, pytest.mark.slow]
NS = "rel-restart"
RECOVERY_SECONDS = 60


class Forwarder:
    """TCP forwarder 127.0.0.1:<port> → 127.0.0.1:<backend> (TLS passes through untouched)."""

    def __init__(self, backend: int):
        self.backend = backend
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.port = int(self.sock.getsockname()[1])
        self.open: set[socket.socket] = set()
        self.lock = threading.Lock()
        self.connections = 0
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection(("127.0.0.1", self.backend), timeout=5)
                upstream.settimeout(None)
            except OSError:
                conn.close()  # server down: the client sees a refused/closed connection and retries
                continue
            with self.lock:
                self.open |= {conn, upstream}
                self.connections += 1
            for a, b in ((conn, upstream), (upstream, conn)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)
                s.close()
                with self.lock:
                    self.open.discard(s)

    def cut(self) -> None:
        """Close every forwarded connection (as a dying server would)."""
        with self.lock:
            for s in list(self.open):
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)

    def close(self) -> None:
        self.sock.close()
        self.cut()


def _server_port(kubeconfig: Path) -> int:
    match = re.search(r"server:\s*https://127\.0\.0\.1:(\d+)", kubeconfig.read_text())
    assert match, kubeconfig.read_text()[:500]
    return int(match.group(1))


def _start(run_dir: Path, keep: bool) -> None:
    env = {**os.environ, "ENVTEST_KEEP_DATA": "1" if keep else "0"}
    subprocess.run([str(START), "start", str(run_dir)], env=env, check=True, stdout=subprocess.DEVNULL, timeout=300)


def test_operator_recovers_after_apiserver_and_etcd_restart(tmp_path):
    run_dir = tmp_path / "api"
    run_dir.mkdir()
    _start(run_dir, keep=False)
    forwarder = None
    try:
        real = run_dir / "kubeconfig"
        with config.new_client_from_config(config_file=str(real)) as api:
            install_crds(api)
        forwarder = Forwarder(_server_port(real))
        stable = tmp_path / "kubeconfig"
        stable.write_text(real.read_text().replace(f"127.0.0.1:{_server_port(real)}", f"127.0.0.1:{forwarder.port}"))
        name, hold = "survivor", tmp_path / "hold"
        hold.touch()  # the trainer waits after each step while this file exists
        with Rig(str(stable), NS, tmp_path, executor_env={"CTXEXT_HOLD_FILE": str(hold)}) as rig:
            rig.cluster.create(tiny_manifest(name, base_model(tmp_path / "base"), lengths=[192, 256], steps=8,
                                             interval=2))
            wait_for(lambda: len(rig.train_log(name)) >= 1, what="stage 1 training", timeout=300,
                     proc=rig.executor)
            subprocess.run([str(START), "stop", str(run_dir)], check=True, stdout=subprocess.DEVNULL, timeout=120)
            forwarder.cut()
            # While the server is down, stage 1 trains to its end and tries to report its result.
            hold.unlink()
            wait_for(lambda: (rig.stage_dir(name) / "result.json").exists(), what="stage 1 to finish", timeout=300,
                     proc=rig.executor)
            time.sleep(3)
            assert rig.operator is not None and rig.operator.alive() and rig.executor and rig.executor.alive()
            _start(run_dir, keep=True)
            forwarder.backend = _server_port(real)
            restarted = time.monotonic()
            rig.cluster.create(tiny_manifest("newcomer", tmp_path / "base", lengths=[192], suspend=True))
            wait_for(lambda: rig.cluster.status("newcomer").get("phase") == "Suspended",
                     what="the operator to see a job created after the restart", timeout=RECOVERY_SECONDS,
                     proc=rig.operator)
            recovered = time.monotonic() - restarted
            status = rig.wait_finished(name, timeout=400)
            assert rig.operator.alive() and rig.executor.alive()
        assert status["phase"] == "Succeeded", json.dumps(status.get("conditions"), indent=1) + rig.logs()
        assert sorted(rig.cluster.pytorchjobs(name)) == [f"{name}-s1-a1", f"{name}-s2-a1"]
        assert [(s["phase"], s["attempts"]) for s in status["stages"]] == [("Succeeded", 1)] * 2
        # Nothing lost: a trainer that finished while the server was down still delivered its result.
        assert set(status["results"]) == {f"{name}-s1-a1", f"{name}-s2-a1"}
        assert [s["result"]["stepsDone"] for s in status["stages"]] == [8, 8]
        print(f"\napiserver+etcd restart: 1 restart mid-stage survived; the operator saw a new job "
              f"{recovered:.1f} s after the server was back; run Succeeded with jobs "
              f"{sorted(rig.cluster.pytorchjobs(name))}; {forwarder.connections} connections forwarded")
    finally:
        if forwarder is not None:
            forwarder.close()
        subprocess.run([str(START), "stop", str(run_dir)], check=False, stdout=subprocess.DEVNULL, timeout=120)
        if os.environ.get("KUBECONFIG"):  # give later tests the session server back as the default client
            config.load_kube_config(config_file=os.environ["KUBECONFIG"])
