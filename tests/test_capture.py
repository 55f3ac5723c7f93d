"""pcapng output, read back by tshark, and the capture filter."""

import subprocess

import pytest

from dataplane.bpf import capture
from dataplane.errors import UsageError
from dataplane.records import Frame, Hop

from .conftest import dp, dp_start, sh


def hop(at="node-0", device="eth0", **frame):
    f = Frame(eth_src="", eth_dst="", ethertype=0x800, **frame)
    return Hop(ts=1, skb=1, netns=1, at=at, ifindex=2, device=device, func="f", dir="tx",
               length=98, frame=f)


def test_filter_terms():
    outer = hop(src="172.30.0.1", dst="172.30.0.2", proto="udp", sport=1, dport=8472, vni=1,
                inner=Frame(eth_src="", eth_dst="", ethertype=0x800, src="10.244.0.2",
                            dst="10.244.1.3", proto="icmp"))
    assert capture.parse_filter("icmp")(outer)  # the inner packet counts
    assert capture.parse_filter("host 10.244.1.3 and vni 1 and port 8472")(outer)
    assert capture.parse_filter("at node-0 and dev eth0")(outer)
    assert not capture.parse_filter("tcp")(outer)
    assert not capture.parse_filter("host 10.244.9.9")(outer)
    assert capture.parse_filter(None)(outer) and capture.parse_filter(" ")(outer)


@pytest.mark.parametrize("bad", ["frobnicate", "port x", "host", "vni 1 2"])
def test_bad_filter(bad):
    with pytest.raises(UsageError, match="--filter"):
        capture.parse_filter(bad)


def tshark(path, *fields):
    out = sh(None, "tshark", "-r", str(path), "-d", "udp.port==8472,vxlan", "-T", "fields",
             *[arg for f in fields for arg in ("-e", f)])
    return [line.split("\t") for line in out.splitlines()]


@pytest.mark.needs_root
@pytest.mark.needs_probes
def test_verify_pcap_has_one_interface_per_hop(dataplane_cluster, tmp_path):
    out = tmp_path / "verify.pcapng"
    done = dp("verify", "--running", dataplane_cluster.name, "--pairs", "cross-node", "--pcap",
              str(out))
    assert done.returncode == 0, done.stderr
    rows = tshark(out, "frame.interface_name", "ip.src", "ip.dst", "vxlan.vni")
    names = {row[0] for row in rows}
    assert {"node-0/flannel.1", "node-0/eth0", "underlay/node-0", "node-1/pod-1/eth0"} <= names
    encap = [row for row in rows if row[0] == "node-0/eth0" and row[3]]
    assert encap, rows[:20]
    subnet_of = {"172.30.0.1": "10.244.0.", "172.30.0.2": "10.244.1."}  # node -> its podCIDR
    for _, srcs, dsts, vni in encap:  # outer address, then inner, either way round
        (outer_src, inner_src), (outer_dst, inner_dst) = srcs.split(","), dsts.split(",")
        assert {outer_src, outer_dst} == set(subnet_of) and vni == "1"
        assert inner_src.startswith(subnet_of[outer_src])
        assert inner_dst.startswith(subnet_of[outer_dst])


@pytest.mark.needs_root
@pytest.mark.needs_probes
def test_capture_command(dataplane_cluster, tmp_path):
    out = tmp_path / "capture.pcapng"
    proc = dp_start("capture", "--running", dataplane_cluster.name, "--duration", "3",
                    "--filter", "icmp", "-o", str(out), stdout=subprocess.PIPE,
                    stderr=subprocess.PIPE, text=True)
    assert "recording" in proc.stderr.readline()  # the probes are attached
    pod = dataplane_cluster.plan.pod("node-1/pod-1")
    sh(dataplane_cluster.plan.pod("node-0/pod-0").netns, "ping", "-c2", "-i", "0.2", str(pod.ip))
    stdout, stderr = proc.communicate(timeout=30)
    assert proc.returncode == 0, stderr
    rows = tshark(out, "frame.interface_name", "icmp.type")
    assert ["node-1/pod-1/eth0", "8"] in rows and ["node-1/pod-1/eth0", "0"] in rows
