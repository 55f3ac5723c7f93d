"""A Plan as JSON and back. Pure.

A discovered network has no topology file to make its plan again from: its
record keeps the plan itself (see cluster.adopt).
"""

from __future__ import annotations

import dataclasses
import json
import typing
from ipaddress import IPv4Address, IPv4Network
from typing import Any

from dataplane.cluster.plan import Plan


def dumps(plan: Plan) -> str:
    return json.dumps(dataclasses.asdict(plan), indent=1, default=str)


def loads(text: str) -> Plan:
    """ValueError (or TypeError, KeyError) when text is not a plan."""
    return _make(Plan, json.loads(text))


def _make(kind: Any, value: Any) -> Any:
    """value, read from JSON, as the type kind (a dataclass, a tuple, an address)."""
    if dataclasses.is_dataclass(kind):
        hints = typing.get_type_hints(kind)
        return kind(**{f.name: _make(hints[f.name], value[f.name])
                       for f in dataclasses.fields(kind) if f.init})
    if typing.get_origin(kind) is tuple:  # tuple[X, ...]
        item = typing.get_args(kind)[0]
        return tuple(_make(item, v) for v in value)
    if kind in (IPv4Address, IPv4Network):
        return kind(value)
    return value
