"""Structural JSON schemas of the prometheus-operator kinds the chart renders.

ServiceMonitor and PodMonitor (monitoring.coreos.com/v1) are CRDs, so kubernetes-validate ships no
schema for them. These schemas list the fields of prometheus-operator's v1 API (Endpoint,
PodMetricsEndpoint, RelabelConfig, NamespaceSelector; names and duration pattern as in its CRDs)
with ``additionalProperties: false``, so a misspelled field or a wrong type fails like it would
against the installed CRD. Only the parts the chart can render are spelled out in full.
"""

from __future__ import annotations

from typing import Any

DURATION = {"type": "string",
            "pattern": r"^(0|(([0-9]+)y)?(([0-9]+)w)?(([0-9]+)d)?(([0-9]+)h)?(([0-9]+)m)?(([0-9]+)s)?(([0-9]+)ms)?)$"}
STRING_MAP = {"type": "object", "additionalProperties": {"type": "string"}}
LABEL_SELECTOR = {
    "type": "object", "additionalProperties": False,
    "properties": {
        "matchLabels": STRING_MAP,
        "matchExpressions": {"type": "array", "items": {
            "type": "object", "additionalProperties": False, "required": ["key", "operator"],
            "properties": {"key": {"type": "string"},
                           "operator": {"enum": ["In", "NotIn", "Exists", "DoesNotExist"]},
                           "values": {"type": "array", "items": {"type": "string"}}}}},
    },
}
NAMESPACE_SELECTOR = {"type": "object", "additionalProperties": False,
                      "properties": {"any": {"type": "boolean"},
                                     "matchNames": {"type": "array", "items": {"type": "string"}}}}
RELABEL = {
    "type": "object", "additionalProperties": False,
    "properties": {
        "sourceLabels": {"type": "array", "items": {"type": "string", "pattern": r"^[a-zA-Z_][a-zA-Z0-9_]*$"}},
        "separator": {"type": "string"},
        "targetLabel": {"type": "string"},
        "regex": {"type": "string"},
        "modulus": {"type": "integer"},
        "replacement": {"type": "string"},
        "action": {"enum": ["replace", "Replace", "keep", "Keep", "drop", "Drop", "hashmod", "HashMod",
                            "labelmap", "LabelMap", "labeldrop", "LabelDrop", "labelkeep", "LabelKeep",
                            "lowercase", "Lowercase", "uppercase", "Uppercase", "keepequal", "KeepEqual",
                            "dropequal", "DropEqual"]},
    },
}
_ENDPOINT_COMMON: dict[str, Any] = {
    "path": {"type": "string"},
    "scheme": {"enum": ["http", "https", "HTTP", "HTTPS"]},
    "params": {"type": "object"},
    "interval": DURATION,
    "scrapeTimeout": DURATION,
    "tlsConfig": {"type": "object"},
    "bearerTokenSecret": {"type": "object"},
    "authorization": {"type": "object"},
    "basicAuth": {"type": "object"},
    "oauth2": {"type": "object"},
    "honorLabels": {"type": "boolean"},
    "honorTimestamps": {"type": "boolean"},
    "trackTimestampsStaleness": {"type": "boolean"},
    "metricRelabelings": {"type": "array", "items": RELABEL},
    "relabelings": {"type": "array", "items": RELABEL},
    "proxyUrl": {"type": "string"},
    "followRedirects": {"type": "boolean"},
    "enableHttp2": {"type": "boolean"},
    "filterRunning": {"type": "boolean"},
}
ENDPOINT = {"type": "object", "additionalProperties": False,
            "properties": {**_ENDPOINT_COMMON, "port": {"type": "string"},
                           "targetPort": {"type": ["string", "integer"]}, "bearerTokenFile": {"type": "string"}}}
POD_METRICS_ENDPOINT = {"type": "object", "additionalProperties": False,
                        "properties": {**_ENDPOINT_COMMON, "port": {"type": "string"},
                                       "portNumber": {"type": "integer", "minimum": 1, "maximum": 65535},
                                       "targetPort": {"type": ["string", "integer"]}}}
METADATA = {"type": "object", "required": ["name", "namespace"],
            "properties": {"name": {"type": "string", "pattern": r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$",
                                    "maxLength": 253},
                           "namespace": {"type": "string"}, "labels": STRING_MAP, "annotations": STRING_MAP}}
_LIMITS = {"sampleLimit": {"type": "integer"}, "targetLimit": {"type": "integer"},
           "labelLimit": {"type": "integer"}, "labelNameLengthLimit": {"type": "integer"},
           "labelValueLengthLimit": {"type": "integer"}, "keepDroppedTargets": {"type": "integer"},
           "attachMetadata": {"type": "object"}, "scrapeProtocols": {"type": "array"}}

SCHEMAS: dict[str, dict[str, Any]] = {
    "ServiceMonitor": {
        "type": "object", "additionalProperties": False, "required": ["apiVersion", "kind", "metadata", "spec"],
        "properties": {
            "apiVersion": {"const": "monitoring.coreos.com/v1"}, "kind": {"const": "ServiceMonitor"},
            "metadata": METADATA,
            "spec": {"type": "object", "additionalProperties": False, "required": ["selector", "endpoints"],
                     "properties": {"jobLabel": {"type": "string"},
                                    "targetLabels": {"type": "array", "items": {"type": "string"}},
                                    "podTargetLabels": {"type": "array", "items": {"type": "string"}},
                                    "endpoints": {"type": "array", "minItems": 1, "items": ENDPOINT},
                                    "selector": LABEL_SELECTOR, "namespaceSelector": NAMESPACE_SELECTOR,
                                    **_LIMITS}},
        },
    },
    "PodMonitor": {
        "type": "object", "additionalProperties": False, "required": ["apiVersion", "kind", "metadata", "spec"],
        "properties": {
            "apiVersion": {"const": "monitoring.coreos.com/v1"}, "kind": {"const": "PodMonitor"},
            "metadata": METADATA,
            "spec": {"type": "object", "additionalProperties": False,
                     "required": ["selector", "podMetricsEndpoints"],
                     "properties": {"jobLabel": {"type": "string"},
                                    "podTargetLabels": {"type": "array", "items": {"type": "string"}},
                                    "podMetricsEndpoints": {"type": "array", "minItems": 1,
                                                            "items": POD_METRICS_ENDPOINT},
                                    "selector": LABEL_SELECTOR, "namespaceSelector": NAMESPACE_SELECTOR,
                                    **_LIMITS}},
        },
    },
    "PrometheusRule": {
        "type": "object", "additionalProperties": False, "required": ["apiVersion", "kind", "metadata", "spec"],
        "properties": {
            "apiVersion": {"const": "monitoring.coreos.com/v1"}, "kind": {"const": "PrometheusRule"},
            "metadata": METADATA,
            "spec": {"type": "object", "additionalProperties": False, "properties": {"groups": {
                "type": "array", "items": {
                    "type": "object", "additionalProperties": False, "required": ["name", "rules"],
                    "properties": {
                        "name": {"type": "string", "minLength": 1}, "interval": DURATION,
                        "query_offset": DURATION, "limit": {"type": "integer"},
                        "partial_response_strategy": {"type": "string"},
                        "labels": STRING_MAP,
                        "rules": {"type": "array", "items": {
                            "type": "object", "additionalProperties": False, "required": ["expr"],
                            "properties": {"alert": {"type": "string"}, "record": {"type": "string"},
                                           "expr": {"type": ["string", "integer"]}, "for": DURATION,
                                           "keep_firing_for": DURATION, "labels": STRING_MAP,
                                           "annotations": STRING_MAP}}}}}}}},
        },
    },
}
