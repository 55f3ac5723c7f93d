"""The flannel CNI plugin's step, for one pod on one node.

flannel's plugin reads the node's subnet.env, renders the configuration of the
plugin it delegates to (bridge + host-local), saves it per container for DEL and
runs the delegate. This module does the same with the node's files in the
cluster's state directory. When the user's plugin folder ([cni] path) holds a
real `flannel` binary, that binary is run instead, its subnetFile and dataDir
(and host-local's dataDir) pointed into the same node folder.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from ipaddress import IPv4Interface
from pathlib import Path
from typing import Any

from dataplane.cluster.cni import plugins
from dataplane.cluster.nodefiles import CNI_NETWORK, HOST_LOCAL_DIR, SUBNET_ENV
from dataplane.cluster.plan import CNI_BRIDGE
from dataplane.cluster.spec import Cni
from dataplane.errors import UsageError

PLUGIN = "flannel"
FLANNEL_DATA_DIR = "var/lib/cni/flannel"  # where flannel's plugin saves each delegate config
# kube-flannel's cni-conf.json delegate options, the bridge named as the audit names it.
DELEGATE = {"bridge": CNI_BRIDGE, "hairpinMode": True, "isDefaultGateway": True}
SUBNET_KEYS = ("FLANNEL_NETWORK", "FLANNEL_SUBNET", "FLANNEL_MTU", "FLANNEL_IPMASQ")


@dataclass(frozen=True)
class NodeDirs:
    """A node's folder in the state directory, laid out as on a real node."""

    root: Path

    @property
    def subnet_file(self) -> Path:
        return self.root / SUBNET_ENV

    @property
    def flannel_data(self) -> Path:
        return self.root / FLANNEL_DATA_DIR

    @property
    def ipam_data(self) -> Path:
        """host-local's dataDir: it keeps one folder per network below it."""
        return (self.root / HOST_LOCAL_DIR).parent


def netconf(dirs: NodeDirs) -> dict[str, Any]:
    """The node's flannel network configuration (its 10-flannel.conflist's plugin)."""
    return {"cniVersion": plugins.CNI_VERSION, "name": CNI_NETWORK, "type": PLUGIN,
            "delegate": dict(DELEGATE), "subnetFile": str(dirs.subnet_file),
            "dataDir": str(dirs.flannel_data),
            # flannel-io/cni-plugin hands its netconf's ipam on to host-local
            "ipam": {"type": "host-local", "dataDir": str(dirs.ipam_data)}}


def subnet_env(path: Path) -> dict[str, str]:
    """KEY=VALUE lines of a subnet.env; UsageError naming a missing key."""
    values = dict(line.split("=", 1) for line in path.read_text().splitlines() if "=" in line)
    missing = [key for key in SUBNET_KEYS if key not in values]
    if missing:
        raise UsageError(f"{path} is missing {', '.join(missing)}; it is written by "
                         "`dataplane up`: take the cluster down and up again")
    return values


def delegate(conf: dict[str, Any], env: dict[str, str]) -> dict[str, Any]:
    """The delegate's configuration, as flannel's plugin renders it from subnet.env."""
    d = dict(conf["delegate"], name=conf["name"], cniVersion=conf["cniVersion"])
    d.setdefault("type", "bridge")
    # flannel's rule: the delegate masquerades only when flanneld does not
    d.setdefault("ipMasq", env["FLANNEL_IPMASQ"] != "true")
    d.setdefault("mtu", int(env["FLANNEL_MTU"]))
    if d["type"] == "bridge":
        d.setdefault("isGateway", True)
    d["ipam"] = dict(conf["ipam"], ranges=[[{"subnet": str(
        IPv4Interface(env["FLANNEL_SUBNET"]).network)}]],
        routes=[{"dst": env["FLANNEL_NETWORK"]}])
    return d


def _real(cfg: Cni) -> bool:
    """A flannel binary of the user's own is run instead of this module's step."""
    return cfg.path is not None and plugins.find(PLUGIN, [cfg.path]) is not None


def add(call: plugins.Call, dirs: NodeDirs, cfg: Cni) -> tuple[dict[str, Any], dict[str, Any]]:
    """ADD: (the configuration given to the plugin run, its result)."""
    path, conf = plugins.search_path(cfg), netconf(dirs)
    if _real(cfg):
        return conf, plugins.invoke(PLUGIN, "ADD", conf, call, path)
    d = delegate(conf, subnet_env(dirs.subnet_file))
    saved = dirs.flannel_data / call.container_id
    saved.parent.mkdir(parents=True, exist_ok=True)
    saved.write_text(json.dumps(d))  # what DEL and CHECK delegate with
    return d, plugins.invoke(d["type"], "ADD", d, call, path)


def check(call: plugins.Call, dirs: NodeDirs, cfg: Cni, prev: dict[str, Any]) -> None:
    """CHECK against ADD's result, by the plugin that made it."""
    path = plugins.search_path(cfg)
    if _real(cfg):
        plugins.invoke(PLUGIN, "CHECK", dict(netconf(dirs), prevResult=prev), call, path)
        return
    d = _saved(dirs, call)
    plugins.invoke(d["type"], "CHECK", dict(d, prevResult=_with_gateways(prev)), call, path)


def delete(call: plugins.Call, dirs: NodeDirs, cfg: Cni) -> None:
    """DEL; nothing to do when there is no saved configuration (already deleted)."""
    path = plugins.search_path(cfg)
    if _real(cfg):
        plugins.invoke(PLUGIN, "DEL", netconf(dirs), call, path)
        return
    saved = dirs.flannel_data / call.container_id
    if not saved.exists():
        return
    d = json.loads(saved.read_text())
    plugins.invoke(d["type"], "DEL", d, call, path)
    saved.unlink()


def _saved(dirs: NodeDirs, call: plugins.Call) -> dict[str, Any]:
    saved = dirs.flannel_data / call.container_id
    try:
        return json.loads(saved.read_text())
    except (OSError, ValueError) as err:
        raise plugins.PluginError(f"{PLUGIN} CHECK {call.pod}: its saved delegate configuration "
                                  f"{saved} is unreadable ({err})") from None


def _with_gateways(result: dict[str, Any]) -> dict[str, Any]:
    """ADD's result with each gateway-less route given the gateway the plugin installed it
    with. Plugins before v1.3.0 look such a route up with no gateway and never find it
    (containernetworking/plugins#886), so CHECK would fail on every healthy pod; later
    ones accept either form."""
    gateway = next((ip["gateway"] for ip in result.get("ips", []) if ip.get("gateway")), None)
    routes = [dict(r) if "gw" in r or gateway is None else dict(r, gw=gateway)
              for r in result.get("routes", [])]
    return dict(result, routes=routes)
