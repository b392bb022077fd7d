"""Plumbing shared by the benchmarks: the test API server, process counters, metrics scraping, output.

Each benchmark prints a table for people and, as its last line, one JSON object for tools
(``... | tail -n 1 | jq .``).
The API server is the one the tests use (``tests/k8s/start-apiserver.sh``); its start-up and
CRD installation come from ``tests/conftest.py`` so the benchmarks and the tests cannot drift.
"""

from __future__ import annotations

import json
import math
import os
import platform
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # scripts run as `python bench/x.py`; tests/ and ctxext live at the root
    sys.path.insert(0, str(ROOT))

CLOCK_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


# -- statistics (pure) ------------------------------------------------------------------------------
def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile (0 ≤ q ≤ 100) with linear interpolation between closest ranks (numpy's default).

    >>> percentile([1, 2, 3, 4], 50)
    2.5
    >>> percentile([5.0], 99)
    5.0
    >>> round(percentile(list(range(1, 101)), 99), 2)
    99.01
    """
    if not values:
        return math.nan
    if not 0 <= q <= 100:
        raise ValueError(f"percentile q must be in [0, 100], got {q}")
    ordered = sorted(values)
    pos = (len(ordered) - 1) * q / 100
    lo = math.floor(pos)
    hi = min(lo + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)


def summarize(values: Sequence[float]) -> dict[str, float]:
    """n, p50, p99, max and mean of ``values`` (NaN for an empty list, n = 0)."""
    return {"n": len(values), "p50": percentile(values, 50), "p99": percentile(values, 99),
            "max": max(values) if values else math.nan,
            "mean": sum(values) / len(values) if values else math.nan}


def ratio(a: float | None, b: float | None) -> float | None:
    """a / b, or None when either is missing or b is 0."""
    if a is None or b is None or b == 0 or math.isnan(a) or math.isnan(b):
        return None
    return a / b


# -- /proc ------------------------------------------------------------------------------------------
def parse_proc_stat(text: str) -> tuple[int, int]:
    """(utime, stime) in clock ticks from the text of ``/proc/<pid>/stat``.

    The command name (field 2) is in parentheses and may contain spaces or ')', so fields are
    counted after the *last* ')': utime and stime are fields 14 and 15 of the line.

    >>> parse_proc_stat("42 (my (odd) cmd) S 1 42 42 0 -1 4194560 100 0 0 0 250 31 0 0 20 0 9 0 5 0 0")
    (250, 31)
    """
    rest = text[text.rindex(")") + 2:].split()
    # rest[0] is field 3 (state); field k is rest[k - 3]
    return int(rest[11]), int(rest[12])


def parse_proc_status(text: str) -> dict[str, int]:
    """The ``kB`` fields of ``/proc/<pid>/status`` (VmRSS, VmHWM, ...) in bytes.

    >>> parse_proc_status("Name:\\tpython\\nVmHWM:\\t  2048 kB\\nVmRSS:\\t  1024 kB\\nThreads:\\t3\\n")
    {'VmHWM': 2097152, 'VmRSS': 1048576}
    """
    out: dict[str, int] = {}
    for line in text.splitlines():
        key, _, value = line.partition(":")
        parts = value.split()
        if len(parts) == 2 and parts[1] == "kB":
            out[key] = int(parts[0]) * 1024
    return out


class ProcStats:
    """CPU seconds and memory of a running process, read from /proc."""

    def __init__(self, pid: int):
        self.pid = pid

    def cpu_seconds(self) -> float:
        utime, stime = parse_proc_stat(Path(f"/proc/{self.pid}/stat").read_text())
        return (utime + stime) / CLOCK_TICKS

    def memory(self) -> dict[str, int]:
        return parse_proc_status(Path(f"/proc/{self.pid}/status").read_text())


# -- Prometheus ---------------------------------------------------------------------------------------
def parse_metrics(text: str) -> dict[str, float]:
    """Prometheus text exposition → {``name{label="v",...}``: value} (labels sorted; none → bare name).

    >>> parse_metrics('# HELP x_total X.\\n# TYPE x_total counter\\nx_total 3.0\\ny{b="2",a="1"} 0.5\\n')
    {'x_total': 3.0, 'y{a="1",b="2"}': 0.5}
    """
    from prometheus_client.parser import text_string_to_metric_families

    out: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels = ",".join(f'{k}="{v}"' for k, v in sorted(sample.labels.items()))
            out[f"{sample.name}{{{labels}}}" if labels else sample.name] = float(sample.value)
    return out


def scrape(url: str, timeout: float = 5.0) -> dict[str, float]:
    """GET a /metrics endpoint and parse it (see :func:`parse_metrics`)."""
    with urllib.request.urlopen(url, timeout=timeout) as response:
        return parse_metrics(response.read().decode())


# -- the test API server ------------------------------------------------------------------------------
@contextmanager
def api_server(run_dir: Path, namespaces: Sequence[str] = ()) -> Iterator[str]:
    """Start the test API server in ``run_dir``, install the PyTorchJob CRD and ours; yield the kubeconfig path.

    Same start-up and CRD installation as the test session fixture (``tests/conftest.py``); the
    server is stopped on exit, also after an error.
    """
    from kubernetes import config

    from tests.conftest import START, _install_crds

    run_dir.mkdir(parents=True, exist_ok=True)
    kubeconfig = run_dir / "kubeconfig"
    env = {**os.environ, "ENVTEST_NAMESPACES": " ".join(namespaces)}
    try:
        subprocess.run([str(START), "start", str(run_dir)], env=env, check=True, stdout=subprocess.DEVNULL,
                       timeout=1800)
        os.environ["KUBECONFIG"] = str(kubeconfig)
        config.kube_config.KUBE_CONFIG_DEFAULT_LOCATION = str(kubeconfig)  # read once at import time
        with config.new_client_from_config(config_file=str(kubeconfig)) as api:
            _install_crds(api)
        yield str(kubeconfig)
    finally:
        subprocess.run([str(START), "stop", str(run_dir)], check=False, stdout=subprocess.DEVNULL,
                       stderr=subprocess.DEVNULL)


def wait_http(url: str, timeout: float = 60.0, alive: Any = None) -> None:
    """Poll ``url`` until it answers 200; ``alive()`` False (the process died) fails at once."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        if alive is not None and not alive():
            raise RuntimeError(f"process exited before {url} answered")
        time.sleep(0.2)
    raise TimeoutError(f"{url} did not answer within {timeout:.0f}s")


# -- output -------------------------------------------------------------------------------------------
def machine() -> dict[str, Any]:
    """What the figures were measured on."""
    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    load = os.getloadavg() if hasattr(os, "getloadavg") else (math.nan,) * 3
    return {"cpu": cpu, "cores": os.cpu_count(), "loadavg_1m": round(load[0], 2),
            "python": platform.python_version(), "utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}


def fmt(value: Any, digits: int = 3) -> str:
    """A table cell: floats to ``digits`` significant figures, None/NaN as ``-``."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}g}" if abs(value) < 10 ** digits else f"{value:,.0f}"
    return str(value)


def print_table(headers: Sequence[str], rows: Sequence[Sequence[Any]], title: str | None = None) -> None:
    """A plain aligned table on stdout."""
    cells = [[fmt(c) for c in row] for row in rows]
    widths = [max(len(h), *(len(r[i]) for r in cells)) if cells else len(h) for i, h in enumerate(headers)]
    if title:
        print(f"\n{title}")
    print("  ".join(h.rjust(w) for h, w in zip(headers, widths, strict=True)))
    for row in cells:
        print("  ".join(c.rjust(w) for c, w in zip(row, widths, strict=True)))


def _clean(obj: Any) -> Any:
    if isinstance(obj, float) and (math.isnan(obj) or math.isinf(obj)):
        return None
    if isinstance(obj, dict):
        return {k: _clean(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_clean(v) for v in obj]
    return obj


def json_line(bench: str, payload: dict[str, Any]) -> str:
    """The one machine-readable line, a JSON object ``{"bench": ..., "machine": {...}, ...}`` (NaN → null)."""
    return json.dumps(_clean({"bench": bench, "machine": machine(), **payload}), sort_keys=True)


def _write_line(path: str | Path, line: str) -> None:
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(line + "\n")
    tmp.replace(path)  # atomic: a reader never sees half a line


def write_json(path: str | Path, bench: str, payload: dict[str, Any]) -> None:
    """:func:`json_line` into the file ``path`` (replaced atomically)."""
    _write_line(path, json_line(bench, payload))


def emit_json(bench: str, payload: dict[str, Any], path: str | Path | None = None) -> None:
    """Print :func:`json_line` on stdout (the last line of every benchmark); also write it to ``path`` if given."""
    line = json_line(bench, payload)
    if path is not None:
        _write_line(path, line)
    print(line, flush=True)



def refuse_without_cuda(bench: str, smoke_cpu: bool, json_out: str | Path | None) -> int | None:
    """For the GPU checks: exit code 2 (with one plain line and the JSON error) when CUDA is wanted
    but torch sees no GPU; None when the check can run (on CUDA, or on CPU with ``--smoke-cpu``)."""
    import torch

    if smoke_cpu or torch.cuda.is_available():
        return None
    message = f"needs a CUDA GPU and torch {torch.__version__} sees none; --smoke-cpu rehearses it on CPU"
    print(f"{bench}: {message}", file=sys.stderr)
    emit_json(bench, {"error": message}, path=json_out)
    return 2

# -- fits (pure) ----------------------------------------------------------------------------------------
def fit_power_law(xs: Sequence[float], ys: Sequence[float]) -> tuple[float, float]:
    """(a, b) of y ≈ a·x^b by least squares on log y = log a + b·log x (≥ 2 distinct x, all values > 0).

    >>> a, b = fit_power_law([1024, 4096, 16384], [3.0 * x**1.5 for x in (1024, 4096, 16384)])
    >>> round(a, 6), round(b, 6)
    (3.0, 1.5)
    """
    if len(xs) != len(ys):
        raise ValueError(f"fit_power_law: {len(xs)} x values but {len(ys)} y values")
    if any(v <= 0 for v in (*xs, *ys)):
        raise ValueError("fit_power_law: every x and y must be > 0")
    lx, ly = [math.log(x) for x in xs], [math.log(y) for y in ys]
    if len(set(lx)) < 2:
        raise ValueError("fit_power_law: needs at least 2 distinct x values")
    mx, my = sum(lx) / len(lx), sum(ly) / len(ly)
    b = sum((u - mx) * (v - my) for u, v in zip(lx, ly, strict=True)) / sum((u - mx) ** 2 for u in lx)
    return math.exp(my - b * mx), b
