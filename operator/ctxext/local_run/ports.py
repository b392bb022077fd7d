"""Ports `ctxext run` serves metrics on, checked before anything starts.

The run serves ``/metrics`` on ``--metrics-port`` (127.0.0.1) and each trainer rank on
``--metrics-port + 1 + rank`` (0.0.0.0). A port something else already listens on would otherwise
surface as ``OSError: [Errno 98] Address already in use`` minutes into the run (or kill a trainer
rank); :func:`check_ports_free` names the port and the option instead.
"""

from __future__ import annotations

import errno
import socket

from ctxext.errors import SpecError


def metrics_ports(metrics_port: int, nproc: int) -> list[int]:
    """The run's port, then one per trainer rank; none when metrics are off.

    >>> metrics_ports(9400, 2), metrics_ports(0, 2)
    ([9400, 9401, 9402], [])
    """
    return [metrics_port + i for i in range(nproc + 1)] if metrics_port else []


def port_in_use(port: int) -> bool:
    """True when binding ``port`` on every address fails because something listens there (the same
    SO_REUSEADDR binding prometheus_client's server uses, so a TIME_WAIT socket does not count)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("0.0.0.0", port))
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                return True
            raise
    return False


def check_ports_free(metrics_port: int, nproc: int) -> None:
    """Raise one plain error naming the first busy port and ``--metrics-port``."""
    ports = metrics_ports(metrics_port, nproc)
    if any(p > 65535 for p in ports):
        raise SpecError([("--metrics-port", f"{metrics_port} leaves no room for the {nproc} trainer ports above "
                          f"it (port+1+rank must be at most 65535); choose a lower port, or 0 to disable metrics")])
    for port in ports:
        if port_in_use(port):
            role = "the run's metrics" if port == metrics_port else f"trainer rank {port - metrics_port - 1}'s metrics"
            raise SpecError([("--metrics-port", f"port {port} is already in use (needed for {role}; the run uses "
                              f"ports {ports[0]}-{ports[-1]}); choose another with --metrics-port, "
                              f"or --metrics-port 0 to disable metrics")])
