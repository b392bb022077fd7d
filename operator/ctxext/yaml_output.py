"""YAML that every reader takes the same way: PyYAML (YAML 1.1) and kubectl (sigs.k8s.io/yaml, YAML 1.2-ish).

PyYAML quotes a string only when *its* YAML 1.1 resolver would read it as something else. Some
strings are plain strings to YAML 1.1 but numbers or booleans to kubectl: ``2e-05`` (1.1 floats
need a dot), ``1e5``, ``0o17``, ``0b101``, ``1_000`` (Go's number parsing), ``y`` / ``n``. Printed
unquoted, ``ctxext.dev/learning-rate: 2e-05`` made kubectl refuse the whole PyTorchJob ("cannot
unmarshal number into ... annotations of type string"). :func:`dump_yaml` quotes those too:

>>> print(dump_yaml({"lr": "2e-05", "flag": "n", "size": "16Gi", "theta": 2e-05}), end="")
lr: '2e-05'
flag: 'n'
size: 16Gi
theta: 2.0e-05
"""

from __future__ import annotations

import re
from typing import Any

import yaml

#: Plain scalars that YAML 1.2 (core schema) or go-yaml would read as a number, boolean or null.
AMBIGUOUS = re.compile(r"""^(?:
    [-+]?(?:\.[0-9_]+|[0-9][0-9_]*(?:\.[0-9_]*)?)(?:[eE][-+]?[0-9_]+)?   # decimal integers and floats
  | [-+]?0[bBoOxX][0-9a-fA-F_]+                                          # binary, octal, hex
  | [-+]?\.(?:inf|Inf|INF) | \.(?:nan|NaN|NAN)
  | y|Y|yes|Yes|YES|n|N|no|No|NO|on|On|ON|off|Off|OFF
  | true|True|TRUE|false|False|FALSE|null|Null|NULL|~
)$""", re.VERBOSE)


class _Dumper(yaml.SafeDumper):
    pass


def _str(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    if AMBIGUOUS.match(value):
        return dumper.represent_scalar("tag:yaml.org,2002:str", value, style="'")
    return dumper.represent_str(value)


_Dumper.add_representer(str, _str)


def dump_yaml(data: Any, *, width: int = 120) -> str:
    """``yaml.safe_dump`` (keys in order) with every ambiguous string quoted."""
    return yaml.dump(data, Dumper=_Dumper, sort_keys=False, width=width, allow_unicode=True)
