"""Which nftables chains can drop traffic, from `nft -j list ruleset`'s JSON. Pure.

A fresh build has no ruleset at all, so every chain that can drop is drift: a
base chain whose policy is drop, and every rule whose verdict drops or rejects
(in a regular chain too: a base chain may jump to it). iptables-nft's rules are
nftables rules, shown here with their xt parts named.
"""

from __future__ import annotations

from typing import Any

DROPPING_TARGETS = ("DROP", "REJECT")


def dropping(ruleset: dict[str, Any]) -> dict[str, str]:
    """what -> how, for every chain that can drop: "policy drop; ip saddr 10.0.0.0/8 drop"."""
    chains: dict[tuple[str, str, str], dict[str, Any]] = {}
    found: dict[tuple[str, str, str], list[str]] = {}
    for entry in ruleset.get("nftables", []):
        if "chain" in entry:
            chain = entry["chain"]
            key = (chain["family"], chain["table"], chain["name"])
            chains[key] = chain
            if chain.get("policy") == "drop":
                found.setdefault(key, []).append("policy drop")
        elif "rule" in entry:
            rule = entry["rule"]
            if any(_drops(e) for e in rule.get("expr", [])):
                key = (rule["family"], rule["table"], rule["chain"])
                found.setdefault(key, []).append(render(rule["expr"]))
    return {_what(key, chains.get(key, {})): "; ".join(how) for key, how in found.items()}


def _what(key: tuple[str, str, str], chain: dict[str, Any]) -> str:
    hook = f" (hook {chain['hook']})" if "hook" in chain else ""
    return f"nftables chain {' '.join(key)}{hook}"


def _drops(expr: dict[str, Any]) -> bool:
    if "drop" in expr or "reject" in expr:
        return True
    xt = expr.get("xt")
    return bool(xt) and xt.get("type") == "target" and xt.get("name") in DROPPING_TARGETS


def render(expr: Any) -> str:
    """An expression as nft(8) writes it, near enough to read."""
    if isinstance(expr, list):
        return " ".join(render(e) for e in expr)
    if not isinstance(expr, dict):
        return str(expr)
    (key, value), = expr.items()  # each JSON expression is an object of one key
    if key == "match":
        op = "" if value["op"] in ("==", "in") else value["op"]
        return " ".join(w for w in (render(value["left"]), op, render(value["right"])) if w)
    if key == "payload":
        return f"{value.get('protocol', 'payload')} {value.get('field', '')}".strip()
    if key in ("meta", "ct"):
        return f"{key} {value['key']}"
    if key == "prefix":
        return f"{render(value['addr'])}/{value['len']}"
    if key == "range":
        return "-".join(render(v) for v in value)
    if key == "set":
        return "{ " + ", ".join(render(v) for v in value) + " }"
    if key in ("jump", "goto"):
        return f"{key} {value['target']}"
    if key == "xt":
        return f"xt {value.get('type', '')} {value.get('name', '')}".strip()
    return key  # a verdict (drop, reject, accept) or a statement (counter, log)
