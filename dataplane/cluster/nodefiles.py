"""The files a real flannel node would hold, rendered from the Plan.

Pure: returns {relative path: content}. The builder writes them under the
cluster's state directory, one folder per node, at the paths a person would
look for them on a node: flanneld's subnet.env and host-local's records.
"""

from __future__ import annotations

from dataplane.cluster.plan import NodePlan, Plan

NODES_DIR = "nodes"  # in a cluster's state directory: a folder per node
CNI_NETWORK = "cbr0"  # the network name in flannel's stock CNI config
SUBNET_ENV = "run/flannel/subnet.env"
HOST_LOCAL_DIR = f"var/lib/cni/networks/{CNI_NETWORK}"


def subnet_env(plan: Plan, node: NodePlan) -> str:
    # Built-in wiring installs no masquerade rules, so it says so. With the plugins it says
    # true, as kube-flannel runs flanneld (--ip-masq): flannel's CNI plugin then leaves the
    # bridge's ipMasq off, which would otherwise masquerade pod traffic to other nodes'
    # pods. flanneld's own rules only touch traffic leaving the cluster CIDR, which no
    # pod here sends, so none are installed.
    ipmasq = "true" if plan.spec.cni.mode == "plugins" else "false"
    return (f"FLANNEL_NETWORK={plan.spec.cluster_cidr}\n"
            f"FLANNEL_SUBNET={node.gateway}/{node.pod_cidr.prefixlen}\n"
            f"FLANNEL_MTU={plan.spec.vtep_mtu}\n"
            f"FLANNEL_IPMASQ={ipmasq}\n")


def host_local_records(node: NodePlan) -> dict[str, str]:
    """One file per allocated IP holding the container id and ifname, plus last_reserved_ip.0."""
    records = {f"{HOST_LOCAL_DIR}/{pod.ip}": f"{pod.container_id}\r\n{pod.ifname}"
               for pod in node.pods}
    records[f"{HOST_LOCAL_DIR}/last_reserved_ip.0"] = str(node.pods[-1].ip)
    return records


def node_files(plan: Plan) -> dict[str, str]:
    """Every node's files, keyed by nodes/<node>/<path on a real node>. With the CNI
    plugins, host-local writes its own records."""
    files = {}
    for node in plan.nodes:
        base = f"{NODES_DIR}/{node.name}"
        files[f"{base}/{SUBNET_ENV}"] = subnet_env(plan, node)
        if plan.spec.cni.mode == "builtin":
            for path, content in host_local_records(node).items():
                files[f"{base}/{path}"] = content
    return files
