"""Pods wired by the real CNI plugins (Debian's containernetworking-plugins), and the user's
own node configuration: specs on data, then real clusters."""

from __future__ import annotations

import json
import subprocess
from ipaddress import IPv4Interface
from pathlib import Path

import pytest

from dataplane.cluster import lifecycle, nodefiles, spec
from dataplane.cluster.cni import flannel, wiring
from dataplane.cluster.plan import make_plan
from dataplane.errors import UsageError

from .conftest import (BIG, DEFAULT, ROOT, TOPOLOGIES, dp, ip_json, leftovers, one_line_error,
                       sh, unique_name)

CNI = TOPOLOGIES / "flannel-vxlan-cni.toml"
EXAMPLE = ROOT / "examples" / "docker-forward.toml"
DEFAULT_TEXT = DEFAULT.read_text()


def parse(extra: str, source: str = "t.toml") -> spec.Spec:
    return spec.parse(DEFAULT_TEXT + extra, source=source)


def error(extra: str) -> str:
    with pytest.raises(UsageError) as caught:
        parse(extra)
    return str(caught.value)


# pure: the topology's [cni] and [[configure]] tables, flannel's delegate configuration

def test_builtin_wiring_stays_the_default():
    assert spec.load(DEFAULT).cni == spec.Cni("builtin", None)
    assert spec.load(CNI).cni.mode == "plugins"


def test_cni_path_is_relative_to_the_topology_file(tmp_path):
    s = parse('[cni]\nmode = "plugins"\npath = "bin"\n', source=str(tmp_path / "t.toml"))
    assert s.cni.path == tmp_path / "bin"
    assert spec.parse(DEFAULT_TEXT, cni_mode="plugins").cni.mode == "plugins"


@pytest.mark.parametrize("extra, says", [
    ('[cni]\nmode = "calico"\n', "t.toml: cni.mode: 'calico' is not a wiring mode; use "
                                 "'builtin' or 'plugins'"),
    ('[cni]\npath = "bin"\n', 't.toml: cni.path: is set, but cni.mode is "builtin", which runs '
                              'no plugin; set mode = "plugins" under [cni], or remove path'),
    ('[cni]\nbridge = "br9"\n', "t.toml: cni.bridge: unknown key; remove it (known: mode, path)"),
    ("[configure]\nnodes = 1\n", "t.toml: configure: must be an array of tables; write each one "
                                 "as [[configure]]"),
    ('[[configure]]\nnodes = ["node-7"]\n', "t.toml: configure[0].nodes[0]: no node named "
                                          "'node-7'; use one of node-0, node-1, or leave nodes "
                                          "out for every node"),
    ('[[configure]]\nsysctls = { "kernel.panic" = "1" }\n', "configure[0].sysctls.kernel.panic: "
                                                           "'kernel.panic' is not a network"),
    ('[[configure]]\ncommands = ["ip link"]\n', "configure[0].commands[0]: 'ip link' is not an "
                                                "argv list (no shell runs it)"),
    ('[[configure]]\nscript = "x.sh"\n', "configure[0].script: unknown key; remove it (known: "
                                         "nodes, sysctls, nftables, commands)"),
])
def test_bad_cni_and_configure_tables_name_the_key_and_fix(extra, says):
    assert says in error(extra)


def test_configure_items_in_order(tmp_path):
    s = parse('[[configure]]\nnftables = "fw.nft"\n'
              '[[configure]]\nnodes = ["node-1"]\nsysctls = { "net.ipv4.ip_forward" = 1 }\n'
              'commands = [["ip", "link"], ["true"]]\n', source=str(tmp_path / "t.toml"))
    first, second = s.configure
    assert first.nodes is None and first.nftables == tmp_path / "fw.nft"
    assert second == spec.Configure("configure[1]", ("node-1",), (("net.ipv4.ip_forward", "1"),),
                                    None, (("ip", "link"), ("true",)))


def test_the_delegate_is_what_flannels_plugin_renders(tmp_path):
    plan = make_plan(spec.load(CNI))
    dirs = flannel.NodeDirs(tmp_path / "node-1")
    dirs.subnet_file.parent.mkdir(parents=True)
    dirs.subnet_file.write_text(nodefiles.subnet_env(plan, plan.nodes[1]))
    conf = flannel.delegate(flannel.netconf(dirs), flannel.subnet_env(dirs.subnet_file))
    assert conf == {
        "cniVersion": "1.0.0", "name": "cbr0", "type": "bridge", "bridge": "cni0",
        "isGateway": True, "isDefaultGateway": True, "hairpinMode": True,
        "ipMasq": False,  # FLANNEL_IPMASQ=true: flanneld masquerades, the bridge must not
        "mtu": 1450,
        "ipam": {"type": "host-local", "dataDir": str(tmp_path / "node-1/var/lib/cni/networks"),
                 "ranges": [[{"subnet": "10.244.1.0/24"}]], "routes": [{"dst": "10.244.0.0/16"}]}}


# live clusters

needs_root = pytest.mark.needs_root


def node_links(c: lifecycle.Cluster, node) -> dict[str, dict]:
    return {link["ifname"]: link for link in ip_json(node.netns, "-d", "link")}


def assert_wired_as_planned(c: lifecycle.Cluster) -> None:
    """host-local's records are the plan's; every pod is as its ADD result says."""
    for node in c.plan.nodes:
        d = wiring.dirs(c.record.dir, node)
        records = d.ipam_data / "cbr0"
        found = {p.name: p.read_bytes() for p in records.iterdir() if p.name != "lock"}
        assert found == {Path(k).name: v.encode()
                         for k, v in nodefiles.host_local_records(node).items()}
        links = node_links(c, node)
        assert links["cni0"]["address"] == node.cni0_mac
        for pod in node.pods:
            result = json.loads(wiring.cache_file(d, "cbr0", pod, "eth0").read_text())["result"]
            assert IPv4Interface(result["ips"][0]["address"]) == \
                IPv4Interface(f"{pod.ip}/{pod.prefixlen}")
            assert links[pod.host_veth]["master"] == "cni0"
            eth0 = ip_json(pod.netns, "link", "show", "eth0")[0]
            assert eth0["address"] == pod.mac and eth0["mtu"] == pod.mtu
            assert {i["name"] for i in result["interfaces"]} == {"cni0", pod.host_veth, "eth0"}


@needs_root
@pytest.mark.needs_probes
def test_2x2_plugin_wired_verifies_with_no_drift(dataplane_clusters):
    c = dataplane_clusters(CNI)
    assert_wired_as_planned(c)
    done = dp("verify", "--running", c.name)
    assert done.returncode == 0, failures(done)
    assert "84 flows: 84 passed, 0 failed" in done.stdout
    status = dp("status", c.name, "--json")
    assert status.returncode == 0, status.stdout
    shown = json.loads(status.stdout)
    assert shown["drift"] == []
    assert shown["nodes"][0]["pods"][0]["host_veth"] == c.plan.nodes[0].pods[0].host_veth


@needs_root
@pytest.mark.needs_probes
def test_4x8_plugin_wired_verifies_with_no_drift(dataplane_clusters):
    c = dataplane_clusters(BIG, cni_mode="plugins")
    assert c.record.cni_mode == "plugins" and lifecycle.attach(c.name).plan == c.plan
    assert_wired_as_planned(c)
    done = dp("verify", "--running", c.name)  # every pair, every protocol, the MTU probes
    assert done.returncode == 0, failures(done)
    assert "6944 flows: 6944 passed" in done.stdout
    assert dp("status", c.name).returncode == 0


@needs_root
def test_check_passes_then_fails_when_a_host_veth_leaves_cni0(dataplane_clusters):
    c = dataplane_clusters(CNI)
    assert wiring.check(c.plan, c.record.dir) == []
    pod = c.plan.pod("node-0/pod-1")
    sh(c.plan.node("node-0").netns, "ip", "link", "set", pod.host_veth, "nomaster")
    complaints = wiring.check(c.plan, c.record.dir)
    assert [(d.at, d.device, d.what) for d in complaints] == [("node-0/pod-1", "eth0", "CNI CHECK")]
    assert complaints[0].found.startswith("bridge CHECK node-0/pod-1: {")
    assert "CNI veth created for bridge cni0 was not found" in complaints[0].found
    status = dp("status", c.name)
    assert status.returncode == 1 and "node-0/pod-1 eth0: CNI CHECK: expected passes" in status.stdout


@needs_root
def test_del_leaves_no_allocation_veth_or_namespace(dataplane_clusters):
    c = dataplane_clusters(CNI)
    assert wiring.delete(c.plan, c.record.dir) == []
    for node in c.plan.nodes:
        d = wiring.dirs(c.record.dir, node)
        assert {p.name for p in (d.ipam_data / "cbr0").iterdir()} <= {"lock", "last_reserved_ip.0"}
        assert not any(d.flannel_data.iterdir())  # flannel's saved delegate configurations
        assert set(node_links(c, node)) == {"lo", "eth0", "cni0", "flannel.1"}  # the bridge stays
        for pod in node.pods:
            assert [link["ifname"] for link in ip_json(pod.netns, "link")] == ["lo"]
    assert wiring.delete(c.plan, c.record.dir) == []  # DEL again: nothing left to remove
    lifecycle.down(c.name)
    assert leftovers(c.name) == []


def failures(done: subprocess.CompletedProcess) -> str:
    """A verify's failing flows and its summary, for an assertion's message."""
    lines = done.stdout.splitlines()
    return "\n".join([line for line in lines if not line.startswith("PASS")][-40:]) + done.stderr


def fake_plugins(folder: Path, **scripts: str) -> Path:
    folder.mkdir(exist_ok=True)
    for name, body in scripts.items():
        (folder / name).write_text("#!/bin/sh\n" + body)
        (folder / name).chmod(0o755)
    return folder


def topology_with(tmp_path: Path, extra: str, name: str = "t.toml") -> Path:
    path = tmp_path / name
    path.write_text(CNI.read_text() + extra)
    return path


FAILING_ADD = ("cat >/dev/null\n"
               "echo '{\"cniVersion\": \"1.0.0\", \"code\": 11, \"msg\": \"try again later\"}'\n"
               "exit 1\n")


@needs_root
def test_a_plugin_error_is_shown_verbatim_and_nothing_is_left(tmp_path):
    fake_plugins(tmp_path / "bin", bridge=FAILING_ADD)
    name = unique_name("err")
    done = dp("up", str(topology_with(tmp_path, 'path = "bin"\n')), "--name", name)
    line = one_line_error(done)
    assert line.startswith('dataplane: bridge ADD node-0/pod-0: {"cniVersion": "1.0.0", '
                           '"code": 11, "msg": "try again later"}; cluster ' + name +
                           f" was taken down: fix the plugin or its configuration (CNI_PATH "
                           f"{tmp_path / 'bin'}:/usr/lib/cni)"), line
    assert leftovers(name) == []


@needs_root
def test_down_runs_del_before_removing_namespaces(tmp_path):
    fake_plugins(tmp_path / "bin", bridge=(
        'if [ "$CNI_COMMAND" = DEL ]; then\n  cat >/dev/null\n'
        '  echo \'{"cniVersion": "1.0.0", "code": 7, "msg": "no DEL today"}\'\n  exit 1\nfi\n'
        "exec /usr/lib/cni/bridge\n"))
    name = unique_name("del")
    assert dp("up", str(topology_with(tmp_path, 'path = "bin"\n')), "--name", name).returncode == 0
    line = one_line_error(dp("down", name))
    assert line.startswith(f"dataplane: cluster {name} is down (7 namespaces removed), but CNI DEL "
                           'failed: bridge DEL node-0/pod-1: {"cniVersion": "1.0.0", "code": 7, '
                           '"msg": "no DEL today"} (and 3 more)'), line
    assert leftovers(name) == []


@needs_root
def test_a_real_flannel_plugin_in_the_path_runs_instead(tmp_path):
    bin_dir = fake_plugins(tmp_path / "bin", flannel=(
        'pod=$(basename "$CNI_NETNS")\ncat > "$(dirname "$0")/$pod.json"\n'
        'env | grep ^CNI_ | sort > "$(dirname "$0")/$pod.env"\n'
        "echo '{\"code\": 100, \"msg\": \"recorded\"}'\nexit 1\n"))
    name = unique_name("fl")
    line = one_line_error(dp("up", str(topology_with(tmp_path, 'path = "bin"\n')), "--name", name))
    assert line.startswith('dataplane: flannel ADD node-0/pod-0: {"code": 100, "msg": "recorded"}')
    conf = json.loads((bin_dir / f"dp-{name}.node-0.pod-0.json").read_text())
    node = f"/run/dataplane/{name}/nodes/node-0"
    assert conf == {"cniVersion": "1.0.0", "name": "cbr0", "type": "flannel",
                    "delegate": {"bridge": "cni0", "hairpinMode": True, "isDefaultGateway": True},
                    "subnetFile": f"{node}/run/flannel/subnet.env",
                    "dataDir": f"{node}/var/lib/cni/flannel",
                    "ipam": {"type": "host-local", "dataDir": f"{node}/var/lib/cni/networks"}}
    env = dict(line.split("=", 1)
               for line in (bin_dir / f"dp-{name}.node-0.pod-0.env").read_text().splitlines())
    assert env == {"CNI_COMMAND": "ADD", "CNI_IFNAME": "eth0",
                   "CNI_CONTAINERID": make_plan(spec.load(CNI, name=name)).pods()[0].container_id,
                   "CNI_NETNS": f"/run/netns/dp-{name}.node-0.pod-0",
                   "CNI_PATH": f"{bin_dir}:/usr/lib/cni"}
    assert leftovers(name) == []


@needs_root
def test_missing_plugins_refused_before_anything_is_made(tmp_path, monkeypatch):
    from dataplane.cluster.cni import plugins

    monkeypatch.setattr(plugins, "SYSTEM_PATH", tmp_path / "none")
    name = unique_name("miss")
    with pytest.raises(UsageError, match="CNI plugin loopback is in none of .*; install Debian's "
                                         "containernetworking-plugins"):
        lifecycle.up(CNI, name=name)
    assert leftovers(name) == []


def root_state() -> dict[str, str]:
    machine_cni = Path("/var/lib/cni")
    return {"links": sh(None, "ip", "-o", "link", "show"),
            "addrs": sh(None, "ip", "-o", "addr", "show"),
            "routes": sh(None, "ip", "route", "show", "table", "all"),
            "nft": sh(None, "nft", "list", "ruleset"),
            "var-lib-cni": " ".join(sorted(map(str, machine_cni.rglob("*"))))
            if machine_cni.exists() else "absent"}


@needs_root
def test_the_plugins_touch_nothing_outside_the_cluster(dataplane_clusters):
    before = root_state()
    c = dataplane_clusters(CNI)
    assert root_state() == before
    lifecycle.down(c.name)
    assert root_state() == before


@needs_root
@pytest.mark.needs_probes
def test_the_pytest_plugin_builds_a_plugin_wired_cluster(pytester):
    pytester.makepyfile(test_user=f'''
import json, subprocess
import pytest
pytestmark = pytest.mark.dataplane_topology({str(CNI)!r})

def test_wired_by_the_plugins(dataplane_cluster, dataplane_verify):
    pod = dataplane_cluster.plan.pod("node-1/pod-1")
    node = dataplane_cluster.plan.node("node-1")
    links = json.loads(subprocess.run(["ip", "-j", "-n", node.netns, "-d", "link", "show",
                                       pod.host_veth], capture_output=True, text=True).stdout)
    assert links[0]["linkinfo"]["info_slave_data"]["hairpin"] is True
    assert dataplane_verify("node-0/pod-0", "node-1/pod-1", proto="tcp").passed
''')
    pytester.runpytest("-p", "no:cacheprovider").assert_outcomes(passed=1)


# the user's own node configuration

@needs_root
@pytest.mark.needs_probes
def test_the_docker_forward_example_verifies_clean(dataplane_clusters):
    c = dataplane_clusters(EXAMPLE)
    for node in c.plan.nodes:
        assert "policy drop" in sh(node.netns, "nft", "list", "chain", "ip", "filter", "FORWARD")
        assert sh(node.netns, "sysctl", "-n", "net.ipv4.conf.all.log_martians").strip() == "1"
    done = dp("verify", "--running", c.name, "--proto", "icmp", "--proto", "tcp", "--no-mtu")
    assert done.returncode == 0, failures(done)
    assert dp("status", c.name).returncode == 0  # a deliberate drop policy is not drift
    node = c.plan.nodes[0]
    sh(node.netns, "nft", "add", "rule", "ip", "filter", "FORWARD", "udp", "dport", "53", "drop")
    status = dp("status", c.name)
    assert status.returncode == 1
    assert ("node-0: nftables chain ip filter FORWARD (hook forward): expected policy drop, "
            "found policy drop; udp dport 53 drop") in status.stdout


@needs_root
@pytest.mark.needs_probes
def test_without_flannels_accept_rules_flows_between_nodes_fail(tmp_path):
    ruleset = (EXAMPLE.parent / "docker-forward.nft").read_text()
    (tmp_path / "docker-forward.nft").write_text(
        "\n".join(line for line in ruleset.splitlines() if not line.strip().endswith("accept")))
    (tmp_path / "t.toml").write_text(EXAMPLE.read_text())
    done = dp("verify", str(tmp_path / "t.toml"), "--pairs", "cross-node", "--proto", "icmp",
              "--no-mtu")
    assert done.returncode == 1
    assert "8 flows: 0 passed, 8 failed" in done.stdout
    assert done.stdout.count("SKB_DROP_REASON_NETFILTER_DROP") == 8


@needs_root
@pytest.mark.parametrize("item, says", [
    ('commands = [["ip", "link", "set", "nope0", "up"]]',
     '{node}: configure[0].commands[0] (ip link set nope0 up): exit status 1: Cannot find device '
     '"nope0"; fix the command'),
    ('sysctls = { "net.ipv4.conf.nope0.forwarding" = "1" }',
     "{node}: configure[0].sysctls.net.ipv4.conf.nope0.forwarding: no such sysctl in the node's "
     "namespace; check the name (sysctl -a lists them)"),
    ('nftables = "bad.nft"', "{node}: configure[0].nftables ("),
])
def test_a_failing_configuration_item_names_node_and_item(tmp_path, item, says):
    (tmp_path / "bad.nft").write_text("table ip filter { chain x { bogus } }\n")
    topology = topology_with(tmp_path, f'\n[[configure]]\nnodes = ["node-1"]\n{item}\n')
    name = unique_name("cfg")
    line = one_line_error(dp("up", str(topology), "--name", name))
    assert line.startswith("dataplane: " + says.format(node="node-1")), line
    assert leftovers(name) == []
