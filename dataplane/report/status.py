"""What `dataplane status` shows: the plan of a running cluster, whether it is alive,
and how its kernel state drifted from the plan."""

from __future__ import annotations

import os
from typing import Any

from dataplane.cluster import lifecycle as clusters, netns, state
from dataplane.cluster.cni import wiring
from dataplane.cluster.lifecycle import Cluster
from dataplane.cluster.plan import Plan, prefix_for
from dataplane.records import Drift
from dataplane.verify import audit


def as_dict(cluster: Cluster | state.Unreadable) -> dict[str, Any]:
    if isinstance(cluster, state.Unreadable):
        return _unreadable(cluster)
    plan, record = cluster.plan, cluster.record
    gone = clusters.missing(record)
    return {
        "name": plan.name,
        "phase": record.phase,
        "attached": record.attached,
        "problems": clusters.health(record),
        "source": record.source,
        "state_dir": str(record.dir),
        "namespaces": {"expected": len(record.namespaces),
                       "present": len(record.namespaces) - len(gone), "missing": gone},
        **describe(plan),
        # reading namespaces needs root: None when it could not be looked at
        "drift": [d.as_dict() for d in _drift(cluster)] if os.geteuid() == 0 else None,
    }


def describe(plan: Plan) -> dict[str, Any]:
    """The plan's nodes, pods, underlay and backend, as status shows them."""
    return {
        "nodes": [{
            "name": node.name, "netns": node.netns, "underlay_ip": str(node.underlay_ip),
            "pod_cidr": str(node.pod_cidr), "vtep_mac": node.vtep_mac,
            "vtep": node.vtep, "bridge": node.bridge,
            "pods": [{"name": pod.name, "netns": pod.netns, "ip": str(pod.ip), "mac": pod.mac,
                      "host_veth": pod.host_veth} for pod in node.pods],
        } for node in plan.nodes],
        "underlay": {"netns": plan.underlay_netns, "bridge": plan.underlay_bridge,
                     "subnet": str(plan.spec.underlay_subnet), "mtu": plan.spec.underlay_mtu},
        "backend": {"type": "vxlan", "vni": plan.spec.vni, "port": plan.spec.port,
                    "mtu": plan.spec.vtep_mtu},
    }


def _drift(cluster: Cluster) -> list[Drift]:
    """The audit's drift, and for a plugin-wired cluster what CNI CHECK complains of."""
    drift = audit.audit(cluster.plan)
    if cluster.plan.spec.cni.mode == "plugins" and not clusters.missing(cluster.record):
        drift += wiring.check(cluster.plan, cluster.record.dir)
    return drift


def _unreadable(record: state.Unreadable) -> dict[str, Any]:
    """What is known of a cluster whose record cannot be read: the namespaces named after it."""
    left = netns.listed(prefix_for(record.name) + ".")
    return {"name": record.name, "phase": "unreadable", "problems": clusters.health(record),
            "state_dir": str(record.dir), "namespaces": {"present": len(left), "names": left}}


def problem_lines(status: dict[str, Any]) -> list[str]:
    return [f"  PROBLEM: {problem}" for problem in status["problems"]]


def as_text(status: dict[str, Any]) -> str:
    ns = status["namespaces"]
    if status["phase"] == "unreadable":
        return "\n".join([f"cluster {status['name']}: STATE UNREADABLE, {ns['present']} "
                          f"namespaces named after it; state {status['state_dir']}"]
                         + problem_lines(status) + [f"  {name}" for name in ns["names"]])
    health = "ok" if not status["problems"] else "DAMAGED"
    phase = status["phase"] + (" (attached)" if status.get("attached") else "")
    lines = [f"cluster {status['name']}: {phase}, {ns['present']}/{ns['expected']} "
             f"namespaces present ({health}); {network_line(status)}; "
             f"state {status['state_dir']}"]
    lines += problem_lines(status)
    return "\n".join(lines + table(status, ns["missing"]) + _drift_lines(status["drift"]))


def network_line(status: dict[str, Any]) -> str:
    b, u = status["backend"], status["underlay"]
    return (f"vxlan vni {b['vni']} port {b['port']} mtu {b['mtu']}; underlay {u['subnet']} "
            f"in {u['netns']}")


def table(status: dict[str, Any], missing: list[str]) -> list[str]:
    """A line per node and per pod (describe()'s), with its namespace, MISSING if gone."""
    row = "{:<22} {:<16} {:<19} {:<13} {}"

    def where(netns_name: str) -> str:
        return netns_name + ("  MISSING" if netns_name in missing else "")

    lines = [row.format("NODE/POD", "IP", "MAC", "HOST VETH", "NETNS")]
    for node in status["nodes"]:
        lines.append(row.format(node["name"], node["underlay_ip"], node["vtep_mac"],
                                node["vtep"], where(node["netns"]))
                     + f"  podCIDR {node['pod_cidr']}")
        for pod in node["pods"]:
            lines.append(row.format(f"  {node['name']}/{pod['name']}", pod["ip"], pod["mac"],
                                    pod["host_veth"], where(pod["netns"])))
    return lines


def _drift_lines(drift: list[dict[str, Any]] | None) -> list[str]:
    if drift is None:
        return ["drift: not audited (reading the namespaces needs root)"]
    if not drift:
        return ["drift: none (the kernel holds what the plan defines)"]
    return [f"drift: {len(drift)} differences from the plan"] + [f"  {Drift(**d)}" for d in drift]
