"""The liveness probe reflects contact with the API server (#24 item 10): /healthz answers 200 while the
operator reaches the API server, fails once it has not for CTXEXT_HEALTH_STALE_SECONDS (so the kubelet
restarts it), and recovers by itself when the API server is back. The operator reaches the session's API
server through a TCP forwarder that the test can point at a dead port (what an unreachable API server or a
broken route looks like to the pod)."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from tests.integration.operator_harness import OperatorProcess, free_port, wait_for
from tests.reliability.test_apiserver_restart import Forwarder, _server_port

pytestmark = [pytest.mark.apiserver, pytest.mark.slow]  # ~75 s: staleness + kopf's 10 s probe cache
STALE = 20  # more than kopf's 10 s cache of probe answers plus one check interval


def _health(op: OperatorProcess) -> dict | None:
    body = op.get("/healthz", op.health_port)  # None on a refused connection or an HTTP error (500)
    return json.loads(body) if body is not None else None


def test_healthz_fails_without_the_api_server_and_recovers(k8s_api, tmp_path):
    real = Path(k8s_api)
    forwarder = Forwarder(_server_port(real))
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(real.read_text().replace(f"127.0.0.1:{_server_port(real)}", f"127.0.0.1:{forwarder.port}"))
    op = OperatorProcess(str(kubeconfig), tmp_path / "operator.log", CTXEXT_HEALTH_STALE_SECONDS=str(STALE))
    try:
        op.start()
        healthy = wait_for(lambda: (_health(op) or {}).get("apiContact"), what="the apiContact probe", proc=op)
        assert healthy["apiContactSecondsAgo"] <= STALE
        # No jobs, no watch events for longer than the staleness: the probe's own requests keep it green.
        time.sleep(STALE + 5)
        assert _health(op) is not None, op.tail()

        forwarder.backend = free_port()  # nothing listens there: every new connection is refused
        forwarder.cut()
        wait_for(lambda: _health(op) is None, what="/healthz to fail without the API server", timeout=120, proc=op)
        assert op.alive()  # the probe fails; restarting is the kubelet's decision, not the operator's
        assert "no API request succeeded for" in op.tail(400)
        assert "Error handling request" not in op.tail(400)  # one line per failed probe, no tracebacks

        forwarder.backend = _server_port(real)
        back = wait_for(lambda: (_health(op) or {}).get("apiContact"), what="/healthz to recover", timeout=120,
                        proc=op)
        assert "lastError" not in back
    finally:
        op.stop()
        forwarder.close()
