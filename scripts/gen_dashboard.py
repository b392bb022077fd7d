#!/usr/bin/env python3
"""Generate the Grafana dashboard of the Helm chart: charts/ctxext/dashboards/ctxext.json.

    .venv/bin/python scripts/gen_dashboard.py          # rewrite the JSON
    .venv/bin/python scripts/gen_dashboard.py --check  # exit 1 if the committed JSON differs

Panels per ContextExtensionJob (namespace and name: variables ``namespace`` and ``job`` select on the
``cej_namespace`` and ``cej`` labels, and every per-job panel groups by both) and stage: "stage i of N"
with the stage's progress, the running stage's ETA, training
loss, perplexity, grad norm (global and per layer), non-finite gradients, loss spikes, tokens/s, step time,
memory, clip and update ratios, learning rate, progress; the
evaluation grid (accuracy by context length × needle depth) and perplexity by length; the stage
timeline; and the operator (jobs by phase, reconcile latency, stage transitions, PyTorchJobs
created, stage durations). tests/chart/test_prometheus.py runs every expression below against a
real Prometheus that scrapes the real operator and trainer, and requires a series from each.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

OUT = Path(__file__).resolve().parents[1] / "charts" / "ctxext" / "dashboards" / "ctxext.json"
DS = {"type": "prometheus", "uid": "${datasource}"}
# Trainer and evaluation series of the selected namespaces, jobs and stages.
SEL = 'cej_namespace=~"$namespace", cej=~"$job", stage=~"$stage"'
# Two teams may both have a job called "llama-64k": every per-job panel keeps the namespace apart.
BY = "cej_namespace, cej, stage"
LEGEND = "{{cej_namespace}}/{{cej}} · stage {{stage}}"


class Layout:
    """Places panels left to right in rows of 24 grid units and numbers them."""

    def __init__(self) -> None:
        self.panels: list[dict[str, Any]] = []
        self.x = 0
        self.y = 0
        self.row_height = 0

    def row(self, title: str) -> None:
        self._newline()
        self.panels.append({"type": "row", "title": title, "collapsed": False, "panels": [],
                            "id": len(self.panels) + 1, "gridPos": {"h": 1, "w": 24, "x": 0, "y": self.y}})
        self.y += 1

    def add(self, panel: dict[str, Any], w: int = 8, h: int = 8) -> None:
        if self.x + w > 24:
            self._newline()
        panel["id"] = len(self.panels) + 1
        panel["gridPos"] = {"h": h, "w": w, "x": self.x, "y": self.y}
        self.panels.append(panel)
        self.x += w
        self.row_height = max(self.row_height, h)

    def _newline(self) -> None:
        self.y += self.row_height
        self.x = 0
        self.row_height = 0


def target(expr: str, legend: str = LEGEND, *, ref: str = "A", instant: bool = False,
           fmt: str = "time_series") -> dict[str, Any]:
    return {"datasource": DS, "refId": ref, "expr": expr, "legendFormat": legend,
            "range": not instant, "instant": instant, "format": fmt}


def timeseries(title: str, description: str, targets: list[dict[str, Any]], unit: str = "short", *,
               log: bool = False, bars: bool = False, min_zero: bool = False) -> dict[str, Any]:
    custom: dict[str, Any] = {"drawStyle": "bars" if bars else "line", "lineWidth": 1, "fillOpacity": 10,
                              "showPoints": "never", "spanNulls": False}
    if log:
        custom["scaleDistribution"] = {"type": "log", "log": 10}
    defaults: dict[str, Any] = {"unit": unit, "custom": custom}
    if min_zero:
        defaults["min"] = 0
    return {"type": "timeseries", "title": title, "description": description, "datasource": DS,
            "targets": targets, "fieldConfig": {"defaults": defaults, "overrides": []},
            "options": {"legend": {"displayMode": "list", "placement": "bottom", "showLegend": True},
                        "tooltip": {"mode": "multi", "sort": "desc"}}}


def bargauge(title: str, description: str, expr: str, legend: str, unit: str, *,
             minmax: tuple[float, float] | None = None) -> dict[str, Any]:
    defaults: dict[str, Any] = {"unit": unit, "color": {"mode": "continuous-GrYlRd" if unit == "short"
                                                        else "continuous-RdYlGr"}}
    if minmax:
        defaults["min"], defaults["max"] = minmax
    return {"type": "bargauge", "title": title, "description": description, "datasource": DS,
            "targets": [target(expr, legend, instant=True)],
            "fieldConfig": {"defaults": defaults, "overrides": []},
            "options": {"orientation": "horizontal", "displayMode": "gradient", "showUnfilled": True,
                        "reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False}}}


def dashboard() -> dict[str, Any]:
    lay = Layout()

    # --- Operator --------------------------------------------------------------------------------
    lay.row("Operator")
    lay.add({"type": "bargauge", "title": "Jobs by phase", "datasource": DS,
             "description": "ContextExtensionJobs the operator knows, by status.phase (ctxext_jobs).",
             "targets": [target("sum by (phase) (ctxext_jobs)", "{{phase}}", instant=True)],
             "fieldConfig": {"defaults": {"unit": "short", "min": 0, "decimals": 0}, "overrides": []},
             "options": {"orientation": "horizontal", "displayMode": "basic", "showUnfilled": True,
                         "reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False}}},
            w=6)
    lay.add(timeseries(
        "Reconcile latency", "Quantiles of one reconciliation's duration (ctxext_reconcile_duration_seconds).",
        [target(f"histogram_quantile({q}, sum by (le) (rate(ctxext_reconcile_duration_seconds_bucket"
                f"[$__rate_interval])))", f"p{round(q * 100)}", ref=chr(65 + i))
         for i, q in enumerate((0.5, 0.95, 0.99))], "s"), w=6)
    lay.add(timeseries(
        "Stage transitions", "Stage phase transitions per interval, by from → to (ctxext_stage_transitions_total).",
        [target("sum by (from, to) (increase(ctxext_stage_transitions_total[$__rate_interval]))",
                "{{from}} → {{to}}")], "short", bars=True, min_zero=True), w=6)
    lay.add(timeseries(
        "Training jobs created", "PyTorchJobs and TrainJobs the operator created (one per stage attempt), "
        "per interval.",
        [target("sum(increase(ctxext_pytorchjobs_created_total[$__rate_interval]))", "PyTorchJobs"),
         target("sum(increase(ctxext_trainjobs_created_total[$__rate_interval]))", "TrainJobs", ref="B")],
        "short", bars=True, min_zero=True), w=6)
    lay.add({"type": "stat", "title": "Stage duration", "datasource": DS,
             "description": "Wall time of the stages that succeeded in the selected time range, first attempt "
                            "start to success (ctxext_stage_duration_seconds): median, p95 and how many.",
             "targets": [
                 target("histogram_quantile(0.5, sum by (le) (increase(ctxext_stage_duration_seconds_bucket"
                        "[$__range])))", "median", ref="A", instant=True),
                 target("histogram_quantile(0.95, sum by (le) (increase(ctxext_stage_duration_seconds_bucket"
                        "[$__range])))", "p95", ref="B", instant=True),
                 target("sum(increase(ctxext_stage_duration_seconds_count[$__range]))", "stages", ref="C",
                        instant=True)],
             "fieldConfig": {"defaults": {"unit": "s"},
                             "overrides": [{"matcher": {"id": "byName", "options": "stages"},
                                            "properties": [{"id": "unit", "value": "short"},
                                                           {"id": "decimals", "value": 0}]}]},
             "options": {"reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False},
                         "colorMode": "none", "graphMode": "none", "textMode": "value_and_name"}},
            w=24, h=4)

    # --- Stage timeline --------------------------------------------------------------------------
    lay.row("Stages")
    lay.add({"type": "state-timeline", "title": "Stage timeline", "datasource": DS,
             "description": "Which curriculum stage of each job ran when, with its sequence length and RoPE "
                            "theta (ctxext_stage_info; a bar while the stage's trainer is scraped).",
             "targets": [target(f"max by ({BY}, total_stages, seq_len, rope_theta) (ctxext_stage_info{{{SEL}}})",
                                LEGEND + " of {{total_stages}} · {{seq_len}} tokens · θ {{rope_theta}}")],
             "fieldConfig": {"defaults": {"color": {"mode": "palette-classic"},
                                          "mappings": [{"type": "value",
                                                        "options": {"1": {"text": "running"}}}],
                                          "custom": {"fillOpacity": 80, "lineWidth": 0}},
                             "overrides": []},
             "options": {"showValue": "never", "mergeValues": True, "rowHeight": 0.8,
                         "legend": {"showLegend": False, "displayMode": "list", "placement": "bottom"}}},
            w=16, h=8)
    lay.add(timeseries("Stage progress", "Optimizer steps done / planned (ctxext_train_step, "
                       "ctxext_train_total_steps).",
                       [target(f"max by ({BY}) (ctxext_train_step{{{SEL}}}) / max by ({BY}) "
                               f"(ctxext_train_total_steps{{{SEL}}})")], "percentunit", min_zero=True),
            w=8, h=8)
    # "stage i of N": the step fraction, carrying total_stages from ctxext_stage_info (value 1) into the legend.
    lay.add(bargauge("Stage i of N",
                     "Each job's latest stage as \"stage i of N\" (ctxext_stage_info's total_stages) and how far it "
                     "is (steps done / planned).",
                     f"max by ({BY}) (ctxext_train_step{{{SEL}}}) / max by ({BY}) (ctxext_train_total_steps{{{SEL}}})"
                     f" * on ({BY}) group_left (total_stages) max by ({BY}, total_stages) "
                     f"(ctxext_stage_info{{{SEL}}})",
                     LEGEND + " of {{total_stages}}", "percentunit", minmax=(0, 1)), w=12, h=6)
    lay.add(bargauge("ETA of the running stage",
                     "Time until the running stage's last optimizer step: steps left × mean step time over the "
                     "last 10 minutes (ctxext_train_total_steps, ctxext_train_step, ctxext_step_seconds); "
                     "evaluation and checkpoint writes come on top. Later stages are longer (see Stage i of N).",
                     f"(max by ({BY}) (ctxext_train_total_steps{{{SEL}}}) - max by ({BY}) (ctxext_train_step{{{SEL}}}))"
                     f" * max by ({BY}) (avg_over_time(ctxext_step_seconds{{{SEL}}}[10m]))",
                     LEGEND, "s"), w=12, h=6)

    # --- Training --------------------------------------------------------------------------------
    lay.row("Training")
    lay.add(timeseries("Loss", "Training loss, averaged over data- and sequence-parallel ranks.",
                       [target(f"max by ({BY}) (ctxext_train_loss{{{SEL}}})")], "short"))
    lay.add(timeseries("Perplexity", "exp(loss) of the training batches.",
                       [target(f"max by ({BY}) (ctxext_train_perplexity{{{SEL}}})")], "short", log=True))
    lay.add(timeseries("Gradient norm", "Global gradient norm before clipping.",
                       [target(f"max by ({BY}) (ctxext_grad_norm{{{SEL}}})")], "short", log=True))
    lay.add(timeseries(
        "Non-finite gradients", "Gradients with NaN/Inf per interval (the guard stops the stage on them).",
        [target(f"max by ({BY}) (increase(ctxext_grad_nonfinite_total{{{SEL}}}[$__rate_interval]))")],
        "short", bars=True, min_zero=True))
    lay.add(timeseries(
        "Loss spikes", "Loss spikes (k·σ above the moving window) per interval.",
        [target(f"max by ({BY}) (increase(ctxext_loss_spikes_total{{{SEL}}}[$__rate_interval]))")],
        "short", bars=True, min_zero=True))
    lay.add(timeseries("Tokens per second", "Training throughput of the whole job, all ranks: averaged over the "
                       "interval (rate of ctxext_train_tokens_total) and of the last step (ctxext_tokens_per_second).",
                       [target(f"sum by ({BY}) (rate(ctxext_train_tokens_total{{{SEL}}}[$__rate_interval]))",
                               LEGEND, ref="A"),
                        target(f"max by ({BY}) (ctxext_tokens_per_second{{{SEL}}})", LEGEND + " · last step",
                               ref="B")], "short", min_zero=True))
    lay.add(timeseries("Step time", "Wall time of the last optimizer step (rank 0; the all-reduce makes it "
                       "wait for the slowest rank).",
                       [target(f"max by ({BY}) (ctxext_step_seconds{{{SEL}}})")], "s", min_zero=True))
    lay.add(timeseries("Memory per rank", "Peak resident memory (max_rss) and CUDA memory of each rank.",
                       [target(f"max by ({BY}, rank, kind) (ctxext_memory_bytes{{{SEL}}})",
                               LEGEND + " · rank {{rank}} · {{kind}}")], "bytes", min_zero=True))
    lay.add(timeseries("Per-layer gradient norm", "Largest and smallest per-layer gradient norm.",
                       [target(f"max by ({BY}, which) (ctxext_grad_norm_layer{{{SEL}}})",
                               LEGEND + " · {{which}}")], "short", log=True))
    lay.add(timeseries("Clip ratio and update/weight ratio",
                       "Factor gradient clipping scaled gradients by (1 = none), and ||update|| / ||weights||.",
                       [target(f"max by ({BY}) (ctxext_grad_clip_ratio{{{SEL}}})",
                               "clip · " + LEGEND, ref="A"),
                        target(f"max by ({BY}) (ctxext_update_to_weight_ratio{{{SEL}}})",
                               "update/weight · " + LEGEND, ref="B")], "short", log=True))
    lay.add(timeseries("Learning rate", "Learning rate of the last step (warm-up and schedule).",
                       [target(f"max by ({BY}) (ctxext_learning_rate{{{SEL}}})")], "short", min_zero=True),
            w=16)

    # --- Evaluation ------------------------------------------------------------------------------
    lay.row("Evaluation")
    lay.add({"type": "table", "title": "Retrieval accuracy: depth × length", "datasource": DS,
             "description": "Needle / passkey accuracy at each context length (columns) and insertion depth "
                            "(rows), averaged over the selected jobs, stages and tasks (latest in the time range: "
                            "a stage's evaluation is exported once, at its end).",
             "targets": [target(f'avg by (length, depth) (last_over_time(ctxext_eval_accuracy{{{SEL}, '
                                f'task=~"$task"}}[$__range]))', "", instant=True, fmt="table")],
             "transformations": [{"id": "groupingToMatrix",
                                  "options": {"columnField": "length", "rowField": "depth",
                                              "valueField": "Value"}}],
             "fieldConfig": {"defaults": {"unit": "percentunit", "min": 0, "max": 1, "decimals": 2,
                                          "color": {"mode": "continuous-RdYlGr"},
                                          "custom": {"align": "center",
                                                     "cellOptions": {"type": "color-background"}}},
                             "overrides": [{"matcher": {"id": "byName", "options": "depth\\length"},
                                            "properties": [{"id": "custom.cellOptions",
                                                            "value": {"type": "auto"}},
                                                           {"id": "unit", "value": "short"}]}]},
             "options": {"showHeader": True, "cellHeight": "sm"}}, w=12, h=9)
    lay.add(bargauge("Retrieval accuracy by length",
                     "Accuracy at each evaluated context length, per job and stage (latest in the time range).",
                     f'avg by ({BY}, length) (last_over_time(ctxext_eval_accuracy{{{SEL}, task=~"$task"}}'
                     f"[$__range]))", LEGEND + " · {{length}} tokens", "percentunit",
                     minmax=(0, 1)), w=12, h=9)
    lay.add(bargauge("Evaluation perplexity by length",
                     "Perplexity on held-out text at each context length, per job and stage (latest in the "
                     "time range).",
                     f"max by ({BY}, length) (last_over_time(ctxext_eval_perplexity{{{SEL}}}[$__range]))",
                     LEGEND + " · {{length}} tokens", "short"), w=24)

    def query_var(name: str, label: str, query: str, **extra: Any) -> dict[str, Any]:
        return {"type": "query", "name": name, "label": label, "datasource": DS,
                "query": {"qryType": 1, "query": query, "refId": f"{name}-var"}, "definition": query,
                "refresh": 2, "sort": 1, "multi": True, "includeAll": True, "allValue": ".*",
                "current": {"selected": True, "text": ["All"], "value": ["$__all"]}, **extra}

    return {
        "title": "ctxext: context extension training",
        "uid": "ctxext-training",
        "description": "ContextExtensionJobs: training health per job and stage, evaluations, and the operator.",
        "tags": ["ctxext", "llm", "training"],
        "editable": True,
        "graphTooltip": 1,
        "schemaVersion": 39,
        "version": 1,
        "time": {"from": "now-6h", "to": "now"},
        "refresh": "30s",
        "timezone": "browser",
        "annotations": {"list": []},
        "links": [],
        "templating": {"list": [
            {"type": "datasource", "name": "datasource", "label": "Data source", "query": "prometheus",
             "current": {}, "hide": 0, "refresh": 1, "regex": ""},
            query_var("namespace", "Namespace", "label_values(ctxext_stage_info, cej_namespace)"),
            query_var("job", "Job", 'label_values(ctxext_stage_info{cej_namespace=~"$namespace"}, cej)'),
            query_var("stage", "Stage",
                      'label_values(ctxext_stage_info{cej_namespace=~"$namespace", cej=~"$job"}, stage)'),
            query_var("task", "Eval task",
                      'label_values(ctxext_eval_accuracy{cej_namespace=~"$namespace", cej=~"$job"}, task)'),
        ]},
        "panels": lay.panels,
    }


def render() -> str:
    return json.dumps(dashboard(), indent=2, ensure_ascii=False) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="fail if the committed dashboard differs")
    args = parser.parse_args()
    text = render()
    if args.check:
        if OUT.read_text() != text:
            print(f"{OUT} is stale: run scripts/gen_dashboard.py", file=sys.stderr)
            return 1
        return 0
    OUT.write_text(text)
    print(f"wrote {OUT}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
