"""The chart's Grafana dashboard: its PromQL expressions, with Grafana's variables substituted."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from typing import Any

from tests.chart.rendering import CHART

DASHBOARD = CHART / "dashboards" / "ctxext.json"
#: What Grafana substitutes when every variable is "All" (allValue ".*") and for its interval macros.
SUBSTITUTIONS = {"$__rate_interval": "1m", "$__range": "1h", "$namespace": ".*", "$job": ".*", "$stage": ".*",
                 "$task": ".*"}


def load() -> dict[str, Any]:
    return json.loads(DASHBOARD.read_text())


def panels(dashboard: dict[str, Any]) -> Iterator[dict[str, Any]]:
    for panel in dashboard["panels"]:
        yield panel
        yield from panel.get("panels", [])


def expressions(dashboard: dict[str, Any]) -> list[tuple[str, str]]:
    """(panel title, raw PromQL) of every query target."""
    return [(p["title"], t["expr"]) for p in panels(dashboard) for t in p.get("targets", [])]


def substitute(expr: str, **overrides: str) -> str:
    """The expression as Grafana sends it to Prometheus."""
    values = {**SUBSTITUTIONS, **{f"${k}": v for k, v in overrides.items()}}
    for name in sorted(values, key=len, reverse=True):  # $__rate_interval before shorter names
        expr = expr.replace(name, values[name])
    assert "$" not in expr, expr
    return expr


def metric_names(expr: str) -> set[str]:
    names = set(re.findall(r"\bctxext_[a-z_]+", expr))
    return {re.sub(r"_(bucket|sum|count)$", "", n) for n in names}


def variable_queries(dashboard: dict[str, Any]) -> dict[str, str]:
    """Template variable name → its label_values(...) query."""
    return {v["name"]: v["definition"] for v in dashboard["templating"]["list"] if v["type"] == "query"}


def parse_label_values(query: str) -> tuple[str, str]:
    """label_values(<selector>, <label>) → (selector, label)."""
    match = re.fullmatch(r"label_values\((.+),\s*([a-z_]+)\)", query)
    assert match, query
    return match[1], match[2]
