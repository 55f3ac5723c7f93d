"""A cluster's pods wired by the real CNI plugins: ADD for every pod when it is built,
CHECK for `status`, DEL before `down` removes it; and what the plugins returned,
kept in the cluster's state, made the plan's truth.

Each pod gets two networks, as containerd gives a Kubernetes pod: the loopback
plugin for lo, then flannel's step (dataplane/cluster/cni/flannel.py) for eth0. Nodes are
wired in parallel, a node's pods one after the other (in pod order, so host-local
hands out the addresses the plan derives). Every ADD's configuration and result
is cached per network, container and interface, as libcni caches them, for CHECK's
prevResult and for later commands.
"""

from __future__ import annotations

import base64
import json
import threading
from collections.abc import Callable
from dataclasses import replace
from ipaddress import IPv4Address, IPv4Interface
from pathlib import Path
from typing import Any, TypeVar

from dataplane.cluster import netns
from dataplane.cluster.cni import flannel, plugins
from dataplane.cluster.nodefiles import CNI_NETWORK
from dataplane.cluster.plan import CNI_BRIDGE, POD_IFNAME, NodePlan, Plan, PodPlan
from dataplane.records import Drift

T = TypeVar("T")
LOOPBACK_NETWORK = "cni-loopback"  # containerd's name for the loopback network
LOOPBACK = {"cniVersion": plugins.CNI_VERSION, "name": LOOPBACK_NETWORK, "type": "loopback"}
NODES = "nodes"
RESULTS = "var/lib/cni/results"  # libcni's cache folder on a real node
PLUGINS = ["loopback", "bridge", "host-local"]  # what a build runs (a real flannel delegates)


def dirs(root: Path, node: NodePlan) -> flannel.NodeDirs:
    return flannel.NodeDirs(root / NODES / node.name)


def _call(node: NodePlan, pod: PodPlan, ifname: str) -> plugins.Call:
    return plugins.Call(node_netns=node.netns, pod=pod.ref, container_id=pod.container_id,
                        sandbox=netns.path(pod.netns), ifname=ifname)


def cache_file(d: flannel.NodeDirs, network: str, pod: PodPlan, ifname: str) -> Path:
    return d.root / RESULTS / f"{network}-{pod.container_id}-{ifname}"


def _save(path: Path, network: str, call: plugins.Call, config: dict[str, Any],
          result: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({
        "kind": "cniCacheV1", "containerId": call.container_id, "ifName": call.ifname,
        "networkName": network, "result": result,
        "config": base64.b64encode(json.dumps(config).encode()).decode()}))


def _cached(path: Path) -> tuple[dict[str, Any], dict[str, Any]] | None:
    """(config, result) of a cached ADD; None when there is none or it is unreadable."""
    try:
        entry = json.loads(path.read_text())
        return json.loads(base64.b64decode(entry["config"])), entry["result"]
    except (OSError, ValueError, KeyError, TypeError):
        return None


def add(plan: Plan, root: Path) -> None:
    """ADD every pod; the first plugin error is raised once every node has stopped."""
    def wire(node: NodePlan) -> None:
        for pod in node.pods:
            _add(plan, node, pod, root)

    for failure in _per_node(plan, wire).values():
        if isinstance(failure, BaseException):
            raise failure


def _add(plan: Plan, node: NodePlan, pod: PodPlan, root: Path) -> None:
    d, cfg = dirs(root, node), plan.spec.cni
    lo = _call(node, pod, "lo")
    result = plugins.invoke("loopback", "ADD", LOOPBACK, lo, plugins.search_path(cfg))
    _save(cache_file(d, LOOPBACK_NETWORK, pod, "lo"), LOOPBACK_NETWORK, lo, LOOPBACK, result)
    eth0 = _call(node, pod, POD_IFNAME)
    config, result = flannel.add(eth0, d, cfg)
    try:
        _wired(pod, result)
    except (KeyError, IndexError, TypeError, ValueError) as err:
        raise plugins.PluginError(f"{config['type']} ADD {pod.ref}: its result lacks what a pod "
                                  f"needs ({type(err).__name__}: {err}): {json.dumps(result)}") \
            from None
    _save(cache_file(d, CNI_NETWORK, pod, POD_IFNAME), CNI_NETWORK, eth0, config, result)


def check(plan: Plan, root: Path) -> list[Drift]:
    """CHECK every pod's two networks; each complaint is a drift item at its pod."""
    def check_node(node: NodePlan) -> list[Drift]:
        return [item for pod in node.pods for item in _check(plan, node, pod, root)]

    found = _per_node(plan, check_node)
    for outcome in found.values():
        if isinstance(outcome, BaseException):
            raise outcome
    return [item for node in plan.nodes for item in found[node.name]]


def _check(plan: Plan, node: NodePlan, pod: PodPlan, root: Path) -> list[Drift]:
    d, cfg, drift = dirs(root, node), plan.spec.cni, []
    for network, ifname in ((LOOPBACK_NETWORK, "lo"), (CNI_NETWORK, POD_IFNAME)):
        cached = _cached(cache_file(d, network, pod, ifname))
        if cached is None:
            drift.append(Drift(pod.ref, ifname, f"CNI {network} result", "cached by ADD",
                               "missing"))
            continue
        config, result = cached
        call = _call(node, pod, ifname)
        try:
            if network == LOOPBACK_NETWORK:
                plugins.invoke("loopback", "CHECK", dict(config, prevResult=result), call,
                               plugins.search_path(cfg))
            else:
                flannel.check(call, d, cfg, result)
        except plugins.PluginError as err:
            drift.append(Drift(pod.ref, ifname, "CNI CHECK", "passes", str(err)))
    return drift


def delete(plan: Plan, root: Path) -> list[str]:
    """DEL every pod (eth0, then lo); the plugins' complaints, one line each."""
    def unwire(node: NodePlan) -> list[str]:
        return [problem for pod in reversed(node.pods)
                for problem in _delete(plan, node, pod, root)]

    problems: list[str] = []
    for outcome in _per_node(plan, unwire).values():
        problems += [str(outcome)] if isinstance(outcome, BaseException) else outcome
    return problems


def _delete(plan: Plan, node: NodePlan, pod: PodPlan, root: Path) -> list[str]:
    d, cfg, problems = dirs(root, node), plan.spec.cni, []
    try:
        flannel.delete(_call(node, pod, POD_IFNAME), d, cfg)
        cache_file(d, CNI_NETWORK, pod, POD_IFNAME).unlink(missing_ok=True)
    except plugins.PluginError as err:
        problems.append(str(err))
    try:
        plugins.invoke("loopback", "DEL", LOOPBACK, _call(node, pod, "lo"),
                       plugins.search_path(cfg))
        cache_file(d, LOOPBACK_NETWORK, pod, "lo").unlink(missing_ok=True)
    except plugins.PluginError as err:
        problems.append(str(err))
    return problems


def adopt(plan: Plan, root: Path) -> Plan:
    """The plan with what the plugins returned: each pod's IP, gateway, MAC and host veth,
    each node's cni0 MAC (the last ADD's: the bridge plugin reports it after attaching).
    Pods without a readable result keep what the plan derived."""
    nodes = []
    for node in plan.nodes:
        d, pods, bridge_mac = dirs(root, node), [], node.cni0_mac
        for pod in node.pods:
            cached = _cached(cache_file(d, CNI_NETWORK, pod, POD_IFNAME))
            try:
                pod, bridge_mac = _wired(pod, cached[1]) if cached else (pod, bridge_mac)
            except (KeyError, IndexError, TypeError, ValueError):
                pass  # a damaged cache: the derived values stand, the audit shows the rest
            pods.append(pod)
        nodes.append(replace(node, pods=tuple(pods), cni0_mac=bridge_mac))
    return replace(plan, nodes=tuple(nodes))


def _wired(pod: PodPlan, result: dict[str, Any]) -> tuple[PodPlan, str]:
    """The pod as an ADD result has it, and the bridge's MAC."""
    interfaces = result["interfaces"]
    inside = next(i for i in interfaces if i.get("sandbox") and i["name"] == POD_IFNAME)
    host = next(i for i in interfaces if not i.get("sandbox") and i["name"] != CNI_BRIDGE)
    bridge = next(i for i in interfaces if i["name"] == CNI_BRIDGE)
    address = next(ip for ip in result["ips"] if ":" not in ip["address"])
    ip = IPv4Interface(address["address"])
    gateway = IPv4Address(address["gateway"]) if address.get("gateway") else pod.gateway
    return (replace(pod, ip=ip.ip, prefixlen=ip.network.prefixlen, gateway=gateway,
                    mac=inside["mac"].lower(), host_veth=host["name"]),
            bridge["mac"].lower())


def _per_node(plan: Plan, work: Callable[[NodePlan], T]) -> dict[str, T | BaseException]:
    """work(node) for every node at once, each in a thread; node name -> its outcome
    (what it returned, or what it raised), in node order: the first failure reported is
    the same whichever node's thread failed first."""
    outcomes: dict[str, T | BaseException] = {}

    def run(node: NodePlan) -> None:
        try:
            outcomes[node.name] = work(node)
        except BaseException as err:  # handed to the caller, which decides
            outcomes[node.name] = err

    threads = [threading.Thread(target=run, args=(node,), name=f"cni-{node.name}")
               for node in plan.nodes]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return {node.name: outcomes[node.name] for node in plan.nodes}  # in node order
