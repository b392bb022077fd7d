"""The Grafana dashboard: generated (no drift), covers every metric the issue lists, filters by the
namespace/job/stage variables on the cej labels, parses as PromQL (promtool), and lays out cleanly."""

from __future__ import annotations

import importlib.util
import itertools
import re
import shutil
import subprocess
from pathlib import Path

import yaml

from tests.chart import dashboard as dash
from tests.chart.rendering import ROOT

TRAINER = {"ctxext_train_loss", "ctxext_train_perplexity", "ctxext_grad_norm", "ctxext_grad_nonfinite_total",
           "ctxext_loss_spikes_total", "ctxext_tokens_per_second", "ctxext_train_tokens_total", "ctxext_train_step",
           "ctxext_stage_info",
           "ctxext_step_seconds", "ctxext_memory_bytes"}
EVALUATION = {"ctxext_eval_accuracy", "ctxext_eval_perplexity"}
OPERATOR = {"ctxext_jobs", "ctxext_stage_transitions_total", "ctxext_reconcile_duration_seconds",
            "ctxext_stage_duration_seconds", "ctxext_pytorchjobs_created_total", "ctxext_trainjobs_created_total"}


def test_committed_dashboard_is_what_the_generator_writes():
    spec = importlib.util.spec_from_file_location("gen_dashboard", ROOT / "scripts" / "gen_dashboard.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert dash.DASHBOARD.read_text() == module.render(), "run: .venv/bin/python scripts/gen_dashboard.py"


def test_every_listed_metric_has_a_panel():
    used = set().union(*(dash.metric_names(e) for _, e in dash.expressions(dash.load())))
    missing = (TRAINER | EVALUATION | OPERATOR) - used
    assert not missing


def test_variables_select_namespace_job_and_stage_on_the_cej_labels():
    variables = dash.variable_queries(dash.load())
    assert list(variables) == ["namespace", "job", "stage", "task"]
    assert dash.parse_label_values(variables["namespace"])[1] == "cej_namespace"
    assert dash.parse_label_values(variables["job"]) == ('ctxext_stage_info{cej_namespace=~"$namespace"}', "cej")
    assert dash.parse_label_values(variables["stage"])[1] == "stage"


def test_job_panels_filter_by_the_variables_and_never_use_prometheus_target_labels():
    for title, expr in dash.expressions(dash.load()):
        names = dash.metric_names(expr)
        if names & (TRAINER | EVALUATION | {"ctxext_train_total_steps"}) or not names & OPERATOR:
            for selector in ('cej_namespace=~"$namespace"', 'cej=~"$job"', 'stage=~"$stage"'):
                assert selector in expr, (title, expr)
        # Prometheus owns `job` and `namespace`; exported ones would be renamed exported_job, ...
        assert "exported_" not in expr and not re.search(r"(?<![a-z_])(job|namespace)\b\s*(=|!=|,|\))", expr), expr


def test_layout_ids_and_datasources():
    board = dash.load()
    panels = list(dash.panels(board))
    assert len({p["id"] for p in panels}) == len(panels)
    cells: set[tuple[int, int]] = set()
    for p in panels:
        pos = p["gridPos"]
        assert pos["x"] + pos["w"] <= 24, p["title"]
        area = set(itertools.product(range(pos["x"], pos["x"] + pos["w"]), range(pos["y"], pos["y"] + pos["h"])))
        assert not cells & area, f"{p['title']} overlaps another panel"
        cells |= area
        if p["type"] != "row":
            assert p["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, p["title"]
            assert p["targets"] and p["description"], p["title"]
    assert board["uid"] == "ctxext-training" and board["templating"]["list"][0]["type"] == "datasource"


def test_every_expression_parses_as_promql(tmp_path: Path):
    """promtool (from the prometheus package) parses each expression as a recording rule, offline."""
    promtool = shutil.which("promtool")
    assert promtool, "promtool not found: apt-get install prometheus (scripts/setup.sh does)"
    board = dash.load()
    exprs = [dash.substitute(e) for _, e in dash.expressions(board)]
    exprs += [dash.substitute(dash.parse_label_values(q)[0]) for q in dash.variable_queries(board).values()]
    rules = {"groups": [{"name": "dashboard", "rules": [
        {"record": f"ctxext:dashboard_expr_{i}", "expr": e} for i, e in enumerate(exprs)]}]}
    (tmp_path / "rules.yaml").write_text(yaml.safe_dump(rules))
    done = subprocess.run([promtool, "check", "rules", str(tmp_path / "rules.yaml")],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr


def _groupings(expr: str) -> list[set[str]]:
    """The label sets of every ``by (...)`` / ``on (...)`` in an expression."""
    return [{label.strip() for label in m.split(",")} for m in re.findall(r"\b(?:by|on)\s*\(([^)]*)\)", expr)]


def test_per_job_panels_keep_namespaces_apart():
    """Two teams' jobs of the same name never merge: whatever groups by job also groups by namespace, and every
    legend that names a job names its namespace (#24 item 7)."""
    for panel in dash.panels(dash.load()):
        for t in panel.get("targets", []):
            for labels in _groupings(t["expr"]):
                if "cej" in labels:
                    assert "cej_namespace" in labels, (panel["title"], t["expr"])
            if "{{cej}}" in t["legendFormat"]:
                assert "{{cej_namespace}}/{{cej}}" in t["legendFormat"], (panel["title"], t["legendFormat"])


def test_stage_i_of_n_and_eta_panels():
    board = {p["title"]: p for p in dash.panels(dash.load())}
    [of_n] = board["Stage i of N"]["targets"]
    assert "stage {{stage}} of {{total_stages}}" in of_n["legendFormat"]
    assert "group_left (total_stages)" in of_n["expr"] and "ctxext_stage_info" in of_n["expr"]
    [eta] = board["ETA of the running stage"]["targets"]
    assert board["ETA of the running stage"]["fieldConfig"]["defaults"]["unit"] == "s"
    assert dash.metric_names(eta["expr"]) == {"ctxext_train_total_steps", "ctxext_train_step", "ctxext_step_seconds"}
    assert "stage {{stage}} of {{total_stages}}" in board["Stage timeline"]["targets"][0]["legendFormat"]
