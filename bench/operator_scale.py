"""Operator at scale: N ContextExtensionJobs through ``ctxext operator`` vs a minimal kopf operator.

Setup: the test API server (tests/conftest.py's start-up), the operator as a subprocess, and a fake
executor in this process that plays the Kubeflow training-operator: it watches PyTorchJobs and
only writes their status conditions (Created → Running → Succeeded). No trainer runs; the
operator waits for no stage result (``CTXEXT_RESULT_GRACE_SECONDS=0``) and keeps its default
resync and status-refresh intervals (``--resync-seconds``, ``--status-refresh-seconds``).

The workload, for each operator in its own namespace, one after the other on the same server:

* phase 1: create N CEJs (a 2-stage curriculum each) back to back; the executor marks each first
  PyTorchJob Created, then Running, as soon as it appears. Ends when every CEJ's status records
  stage 1 attempt 1 as running (ctxext) or kopf has handled every CEJ (minimal).
* phase 2: mark every stage-1 PyTorchJob Succeeded back to back; the executor takes each stage-2
  PyTorchJob through Created → Running → Succeeded. Ends when every CEJ is Succeeded (ctxext);
  the minimal operator has no stage 2 (it watches no PyTorchJobs), so its phase 2 only measures
  it idling while the conditions change.

Figures: apply → first PyTorchJob latency (create call issued → PyTorchJob seen on this
process's watch), stage-advance latency (Succeeded patch issued → stage-2 PyTorchJob seen), the
operator's CPU seconds (/proc/<pid>/stat) per phase, per CEJ and per reconcile
(``ctxext_reconcile_duration_seconds_count`` from its /metrics), and its RSS (/proc/<pid>/status).

    .venv/bin/python bench/operator_scale.py              # N = 200
    .venv/bin/python bench/operator_scale.py --count 1000
"""

from __future__ import annotations

import argparse
import os
import queue
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, cast

import _harness as h
from kubernetes import client, config, watch

from ctxext.api.base import GROUP, PLURAL, VERSION
from ctxext.config import OperatorConfig
from tests.integration.operator_harness import Cluster, OperatorProcess, free_port
from tests.unit.helpers import minimal

PTJ = ("kubeflow.org", "v1", "pytorchjobs")
MINIMAL = Path(__file__).resolve().with_name("minimal_kopf_operator.py")
KOPF = str(Path(sys.executable).with_name("kopf"))
MIB = 1024 * 1024


def manifest(name: str) -> dict[str, Any]:
    """A small valid CEJ with a 2-stage curriculum (16K → 64K); the same one the lifecycle tests use."""
    obj = minimal(curriculum={"stages": [{"seqLen": 16384}, {"seqLen": 65536}],
                              "stageDefaults": {"learningRate": 1e-4}})
    obj["metadata"]["name"] = name
    return obj


class KopfProcess:
    """``kopf run --standalone -A bench/minimal_kopf_operator.py`` with a liveness endpoint."""

    def __init__(self, kubeconfig: str, log: Path):
        self.port = free_port()
        self.log_path = log
        self.env = {**os.environ, "KUBECONFIG": kubeconfig, "OMP_NUM_THREADS": "1"}
        self.proc: Any = None

    def start(self) -> KopfProcess:
        import subprocess

        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                [KOPF, "run", "--standalone", "-A", "--liveness", f"http://127.0.0.1:{self.port}/healthz",
                 str(MINIMAL)], env=self.env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        h.wait_http(f"http://127.0.0.1:{self.port}/healthz", alive=lambda: self.proc.poll() is None)
        return self

    def stop(self) -> None:
        import signal
        import subprocess

        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()


class FakeExecutor:
    """Watches PyTorchJobs in one namespace, records when each appears, and writes its conditions."""

    def __init__(self, api: client.CustomObjectsApi, namespace: str):
        self.api, self.ns = api, namespace
        self.cluster = Cluster(api, namespace)
        self.seen: dict[str, float] = {}
        self.running_s1: set[str] = set()
        self.succeeded_s2: set[str] = set()
        self.errors: list[str] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._work: queue.Queue[str] = queue.Queue()
        self._pool = ThreadPoolExecutor(max_workers=4, thread_name_prefix="executor")
        self._thread = threading.Thread(target=self._watch, daemon=True)

    def start(self) -> FakeExecutor:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._pool.shutdown(wait=True, cancel_futures=True)

    def _watch(self) -> None:
        rv = self._list_version()
        while not self._stop.is_set():
            w = watch.Watch()
            try:
                for event in w.stream(self.api.list_namespaced_custom_object, *PTJ[:2], self.ns, PTJ[2],
                                      resource_version=rv, timeout_seconds=5, allow_watch_bookmarks=True):
                    obj = event["object"]
                    if event["type"] == "ERROR":  # e.g. 410 Gone: start again from a fresh list
                        rv = self._list_version()
                        break
                    rv = obj["metadata"]["resourceVersion"]
                    if event["type"] == "BOOKMARK":
                        continue
                    name = obj["metadata"]["name"]
                    if event["type"] == "ADDED":
                        self._added(name)
                    if self._stop.is_set():
                        break
            except Exception as exc:  # a broken watch is restarted from the last resourceVersion
                if not self._stop.is_set():
                    self.errors.append(f"watch: {exc}")
                    time.sleep(0.5)
            finally:
                w.stop()

    def _list_version(self) -> str:
        """List the PyTorchJobs; ones not seen yet (missed while a watch was down) count as seen now."""
        found = cast(dict[str, Any], self.api.list_namespaced_custom_object(*PTJ[:2], self.ns, PTJ[2]))
        for item in found["items"]:
            self._added(item["metadata"]["name"])
        return str(found["metadata"]["resourceVersion"])

    def _added(self, name: str) -> None:
        if name not in self.seen:
            self.seen[name] = time.monotonic()
            self._pool.submit(self._flip, name)

    def _flip(self, name: str) -> None:
        try:
            self.cluster.set_conditions(name, "Created")
            self.cluster.set_conditions(name, "Created", "Running")
            if "-s1-" in name:
                with self._lock:
                    self.running_s1.add(name)
            else:
                self.cluster.set_conditions(name, "Created", "Running", "Succeeded")
                with self._lock:
                    self.succeeded_s2.add(name)
        except Exception as exc:
            self.errors.append(f"{name}: {exc}")


def wait_until(pred: Any, timeout: float, what: str, poll: float = 0.5) -> float:
    """Poll ``pred`` until true; returns when it became true (monotonic), raises TimeoutError otherwise."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return time.monotonic()
        time.sleep(poll)
    raise TimeoutError(f"timed out after {timeout:.0f}s waiting for {what}")


def first_stage_running(cej: dict[str, Any]) -> bool:
    """Status records stage 1 attempt 1 as running (the operator has created and recorded it)."""
    stage = (((cej.get("status") or {}).get("stages")) or [{}])[0]
    return stage.get("phase") == "Running" and stage.get("jobName") == f"{cej['metadata']['name']}-s1-a1"


def cejs(api: client.CustomObjectsApi, ns: str) -> list[dict[str, Any]]:
    return list(cast(dict[str, Any], api.list_namespaced_custom_object(GROUP, VERSION, ns, PLURAL))["items"])


def run_workload(kind: str, kubeconfig: str, count: int, workdir: Path, resync: float, refresh: float,
                 timeout: float) -> dict[str, Any]:
    """One operator, one namespace, phases 1 and 2; returns its figures."""
    api = client.CustomObjectsApi()
    ns = f"bench-{kind}"
    cluster = Cluster(api, ns)
    names = [f"cej-{i:04d}" for i in range(count)]
    operator: Any
    if kind == "ctxext":
        operator = OperatorProcess(kubeconfig, workdir / f"{kind}.log", CTXEXT_RESYNC_SECONDS=str(resync),
                                   CTXEXT_STATUS_REFRESH_SECONDS=str(refresh),
                                   CTXEXT_RESULT_GRACE_SECONDS="0", CTXEXT_LOG_FORMAT="plain").start()
        metrics_url: str | None = f"http://127.0.0.1:{operator.metrics_port}/metrics"
        pid = operator.proc.pid
    else:
        operator = KopfProcess(kubeconfig, workdir / f"{kind}.log").start()
        metrics_url, pid = None, operator.proc.pid
    stats = h.ProcStats(pid)
    executor = FakeExecutor(api, ns).start()
    out: dict[str, Any] = {"operator": kind, "namespace": ns, "count": count, "complete": False}
    try:
        time.sleep(1.0)  # let the watch start and the operator settle after start-up
        m0 = h.scrape(metrics_url) if metrics_url else {}
        cpu0, mem0 = stats.cpu_seconds(), stats.memory()
        out["rss_start_mib"] = mem0.get("VmRSS", 0) / MIB

        # phase 1: apply N, first PyTorchJob created, Created/Running
        applied: dict[str, float] = {}
        t0 = time.monotonic()
        for name in names:
            applied[name] = time.monotonic()
            cluster.create(manifest(name))
        out["apply_seconds"] = time.monotonic() - t0
        first = [f"{n}-s1-a1" for n in names]
        wait_until(lambda: len(executor.running_s1) >= count, timeout, "every stage-1 PyTorchJob Running")
        if kind == "ctxext":
            def stage1_seen() -> bool:  # status names the stage-1 PyTorchJob as the running attempt
                return sum(first_stage_running(c) for c in cejs(api, ns)) >= count
            t1 = wait_until(stage1_seen, timeout, "every CEJ recording stage 1 running", poll=1.0)
        else:
            key = "kopf.zalando.org/last-handled-configuration"
            t1 = wait_until(lambda: sum(key in (c["metadata"].get("annotations") or {}) for c in cejs(api, ns))
                            >= count, timeout, "kopf handled every CEJ", poll=1.0)
        cpu1 = stats.cpu_seconds()
        out["phase1_wall_seconds"] = t1 - t0
        out["phase1_cpu_seconds"] = cpu1 - cpu0
        out["apply_to_pytorchjob_seconds"] = h.summarize([executor.seen[j] - applied[n]
                                                          for n, j in zip(names, first, strict=True)])

        # phase 2: stage 1 Succeeded → stage 2 created → Created/Running/Succeeded → CEJ Succeeded
        succeeded: dict[str, float] = {}
        t2 = time.monotonic()
        for name, job in zip(names, first, strict=True):
            succeeded[name] = time.monotonic()
            cluster.set_conditions(job, "Created", "Running", "Succeeded")
        if kind == "ctxext":
            wait_until(lambda: len(executor.succeeded_s2) >= count, timeout, "every stage-2 PyTorchJob Succeeded")
            t3 = wait_until(lambda: sum((c.get("status") or {}).get("phase") == "Succeeded" for c in cejs(api, ns))
                            >= count, timeout, "every CEJ Succeeded", poll=1.0)
            out["stage_advance_seconds"] = h.summarize([executor.seen[f"{n}-s2-a1"] - succeeded[n] for n in names])
        else:
            time.sleep(2.0)  # nothing to wait for: the minimal operator does not watch PyTorchJobs
            t3 = time.monotonic()
        cpu3, mem3 = stats.cpu_seconds(), stats.memory()
        out["phase2_wall_seconds"] = t3 - t2
        out["phase2_cpu_seconds"] = cpu3 - cpu1
        out["total_cpu_seconds"] = cpu3 - cpu0
        out["cpu_ms_per_cej"] = 1000 * (cpu3 - cpu0) / count
        out["rss_end_mib"] = mem3.get("VmRSS", 0) / MIB
        out["rss_peak_mib"] = mem3.get("VmHWM", 0) / MIB
        if metrics_url:
            m3 = h.scrape(metrics_url)
            n_rec = m3.get("ctxext_reconcile_duration_seconds_count", 0) - m0.get(
                "ctxext_reconcile_duration_seconds_count", 0)
            wall = m3.get("ctxext_reconcile_duration_seconds_sum", 0) - m0.get(
                "ctxext_reconcile_duration_seconds_sum", 0)
            out["reconciles"] = n_rec
            out["cpu_ms_per_reconcile"] = 1000 * (cpu3 - cpu0) / n_rec if n_rec else None
            out["reconcile_wall_ms_mean"] = 1000 * wall / n_rec if n_rec else None
            out["pytorchjobs_created"] = m3.get("ctxext_pytorchjobs_created_total", 0) - m0.get(
                "ctxext_pytorchjobs_created_total", 0)
        else:
            out["handler_calls"] = count  # one on.create handler per CEJ
            out["cpu_ms_per_handler_call"] = 1000 * out["phase1_cpu_seconds"] / count
        out["complete"] = True
    except TimeoutError as exc:
        out["error"] = str(exc)
        print(f"[{kind}] {exc}", file=sys.stderr)
    finally:
        executor.stop()
        operator.stop()
        out["executor_errors"] = executor.errors[:5]
        for group, version, plural in ((GROUP, VERSION, PLURAL), PTJ):
            try:
                api.delete_collection_namespaced_custom_object(group, version, ns, plural)
            except client.ApiException as exc:
                print(f"cleanup of {plural} in {ns} failed: {exc.status}", file=sys.stderr)
    return out


def report(results: dict[str, dict[str, Any]], count: int) -> None:
    ours, base = results.get("ctxext", {}), results.get("minimal", {})

    def lat(r: dict[str, Any], key: str, q: str) -> float | None:
        return (r.get(key) or {}).get(q)

    rows: list[list[Any]] = []

    def row(label: str, a: float | None, b: float | None, with_ratio: bool = True) -> None:
        rows.append([label, a, b, h.ratio(a, b) if with_ratio else None])

    row("apply → PyTorchJob p50 (s)", lat(ours, "apply_to_pytorchjob_seconds", "p50"),
        lat(base, "apply_to_pytorchjob_seconds", "p50"))
    row("apply → PyTorchJob p99 (s)", lat(ours, "apply_to_pytorchjob_seconds", "p99"),
        lat(base, "apply_to_pytorchjob_seconds", "p99"))
    row("stage advance p50 (s)", lat(ours, "stage_advance_seconds", "p50"), None, False)
    row("stage advance p99 (s)", lat(ours, "stage_advance_seconds", "p99"), None, False)
    row("phase 1 wall (s)", ours.get("phase1_wall_seconds"), base.get("phase1_wall_seconds"))
    row("phase 1 CPU (s)", ours.get("phase1_cpu_seconds"), base.get("phase1_cpu_seconds"))
    row("phase 1 CPU per CEJ (ms)", _per(ours.get("phase1_cpu_seconds"), count),
        _per(base.get("phase1_cpu_seconds"), count))
    row("phase 2 wall (s)", ours.get("phase2_wall_seconds"), base.get("phase2_wall_seconds"), False)
    row("phase 2 CPU (s)", ours.get("phase2_cpu_seconds"), base.get("phase2_cpu_seconds"), False)
    row("total CPU per CEJ (ms)", ours.get("cpu_ms_per_cej"), base.get("cpu_ms_per_cej"))
    row("reconciles / handler calls", ours.get("reconciles"), base.get("handler_calls"))
    row("CPU per reconcile / handler call (ms)", ours.get("cpu_ms_per_reconcile"),
        base.get("cpu_ms_per_handler_call"))
    row("reconcile wall mean (ms)", ours.get("reconcile_wall_ms_mean"), None, False)
    row("RSS at start (MiB)", ours.get("rss_start_mib"), base.get("rss_start_mib"))
    row("RSS at end (MiB)", ours.get("rss_end_mib"), base.get("rss_end_mib"))
    row("RSS peak (MiB)", ours.get("rss_peak_mib"), base.get("rss_peak_mib"))
    h.print_table(["figure", "ctxext", "minimal kopf", "ratio"], rows,
                  title=f"operator_scale: {count} CEJs (2 stages each), ctxext vs minimal kopf operator")


def ratios(results: dict[str, dict[str, Any]]) -> dict[str, float | None]:
    """ctxext / minimal for the like-for-like figures."""
    ours, base = results.get("ctxext", {}), results.get("minimal", {})
    p50 = [(r.get("apply_to_pytorchjob_seconds") or {}).get("p50") for r in (ours, base)]
    p99 = [(r.get("apply_to_pytorchjob_seconds") or {}).get("p99") for r in (ours, base)]
    return {"apply_to_pytorchjob_p50": h.ratio(*p50), "apply_to_pytorchjob_p99": h.ratio(*p99),
            "phase1_cpu": h.ratio(ours.get("phase1_cpu_seconds"), base.get("phase1_cpu_seconds")),
            "total_cpu_per_cej": h.ratio(ours.get("cpu_ms_per_cej"), base.get("cpu_ms_per_cej")),
            "rss_peak": h.ratio(ours.get("rss_peak_mib"), base.get("rss_peak_mib"))}


def _per(seconds: float | None, count: int) -> float | None:
    return None if seconds is None else 1000 * seconds / count


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--count", type=int, default=200, help="ContextExtensionJobs per operator (default 200)")
    parser.add_argument("--operators", default="ctxext,minimal", help="which to run, comma separated")
    defaults = OperatorConfig()
    parser.add_argument("--resync-seconds", type=float, default=defaults.resync_seconds,
                        help=f"ctxext resync interval (its default: {defaults.resync_seconds:g})")
    parser.add_argument("--status-refresh-seconds", type=float, default=defaults.status_refresh_seconds,
                        help=f"ctxext status refresh window (its default: {defaults.status_refresh_seconds:g})")
    parser.add_argument("--timeout", type=float, default=300.0, help="seconds each phase may take")
    parser.add_argument("--keep", action="store_true", help="keep the work directory (logs, server run dir)")
    args = parser.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    workdir = Path(tempfile.mkdtemp(prefix="ctxext-bench-operator-"))
    results: dict[str, dict[str, Any]] = {}
    started = time.monotonic()
    with h.api_server(workdir / "apiserver") as kubeconfig:
        config.load_kube_config(config_file=kubeconfig)
        for kind in [k.strip() for k in args.operators.split(",") if k.strip()]:
            print(f"[{time.strftime('%H:%M:%S')}] {kind}: {args.count} CEJs ...", file=sys.stderr, flush=True)
            results[kind] = run_workload(kind, kubeconfig, args.count, workdir, args.resync_seconds,
                                         args.status_refresh_seconds, args.timeout)
    report(results, args.count)
    if args.keep:
        print(f"work directory: {workdir}", file=sys.stderr)
    else:
        import shutil

        shutil.rmtree(workdir, ignore_errors=True)
    h.emit_json("operator_scale", {"count": args.count, "resync_seconds": args.resync_seconds,
                                   "status_refresh_seconds": args.status_refresh_seconds,
                                   "wall_seconds": time.monotonic() - started, "results": results,
                                   "ratios": ratios(results)})
    return 0 if all(r.get("complete") for r in results.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
