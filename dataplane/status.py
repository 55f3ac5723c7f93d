"""What `dataplane status` shows: the plan of a running cluster, whether it is alive,
and how its kernel state drifted from the plan."""

from __future__ import annotations

import os
from typing import Any

from dataplane import audit, netns
from dataplane.cluster import Cluster
from dataplane.drift import Drift


def as_dict(cluster: Cluster) -> dict[str, Any]:
    plan, record = cluster.plan, cluster.record
    present = sum(netns.exists(ns) for ns in record.namespaces)
    return {
        "name": plan.name,
        "phase": record.phase,
        "source": record.source,
        "state_dir": str(record.dir),
        "namespaces": {"expected": len(record.namespaces), "present": present},
        "nodes": [{
            "name": node.name, "netns": node.netns, "underlay_ip": str(node.underlay_ip),
            "pod_cidr": str(node.pod_cidr), "vtep_mac": node.vtep_mac,
            "vtep": plan.spec.vtep_name,
            "pods": [{"name": pod.name, "netns": pod.netns, "ip": str(pod.ip), "mac": pod.mac,
                      "host_veth": pod.host_veth} for pod in node.pods],
        } for node in plan.nodes],
        "underlay": {"netns": plan.underlay_netns, "subnet": str(plan.spec.underlay_subnet),
                     "mtu": plan.spec.underlay_mtu},
        "backend": {"type": "vxlan", "vni": plan.spec.vni, "port": plan.spec.port,
                    "mtu": plan.spec.vtep_mtu},
        # reading namespaces needs root: None when it could not be looked at
        "drift": [d.as_dict() for d in audit.audit(plan)] if os.geteuid() == 0 else None,
    }


def as_text(status: dict[str, Any]) -> str:
    ns = status["namespaces"]
    health = "ok" if ns["present"] == ns["expected"] else "DEGRADED"
    b = status["backend"]
    lines = [f"cluster {status['name']}: {status['phase']}, {ns['present']}/{ns['expected']} "
             f"namespaces present ({health}); vxlan vni {b['vni']} port {b['port']} "
             f"mtu {b['mtu']}; underlay {status['underlay']['subnet']} "
             f"in {status['underlay']['netns']}; state {status['state_dir']}"]
    row = "{:<22} {:<16} {:<19} {:<13} {}"
    lines.append(row.format("NODE/POD", "IP", "MAC", "HOST VETH", "NETNS"))
    for node in status["nodes"]:
        lines.append(row.format(node["name"], node["underlay_ip"], node["vtep_mac"],
                                node["vtep"], node["netns"]) + f"  podCIDR {node['pod_cidr']}")
        for pod in node["pods"]:
            lines.append(row.format(f"  {node['name']}/{pod['name']}", pod["ip"], pod["mac"],
                                    pod["host_veth"], pod["netns"]))
    return "\n".join(lines + _drift_lines(status["drift"]))


def _drift_lines(drift: list[dict[str, Any]] | None) -> list[str]:
    if drift is None:
        return ["drift: not audited (reading the namespaces needs root)"]
    if not drift:
        return ["drift: none (the kernel holds what the plan defines)"]
    return [f"drift: {len(drift)} differences from the plan"] + [f"  {Drift(**d)}" for d in drift]
