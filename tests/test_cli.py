"""The `dataplane` command: exit codes, one-line errors, status output."""

import json
import os
import shutil
import subprocess
import sys
import zipfile

import pytest

from dataplane import cli
from dataplane.cluster import netns, state

from .conftest import DEFAULT, ROOT, dp, is_root, one_line_error, unique_name

def test_bad_topology_exit_2_nothing_made(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text("[cluster]\nname = 'badone'\n[backend]\nvni = 0\n")
    line = one_line_error(dp("up", str(bad)))
    assert "backend.vni" in line and "1..16777215" in line
    assert not (state.STATE_ROOT / "badone").exists()
    assert not list(netns.NETNS_RUN.glob("dp-badone.*"))


def test_not_toml(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text("[cluster\n")
    assert "line 1" in one_line_error(dp("up", str(bad)))


def test_missing_file_names_the_shipped_topologies():
    line = one_line_error(dp("up", "nope.toml"))
    assert line.startswith("dataplane: nope.toml: no such topology file;")
    assert "flannel-vxlan, flannel-vxlan-4x8" in line


def test_unreadable_file_is_named(tmp_path):
    line = one_line_error(dp("up", str(tmp_path)))  # a directory
    assert f"{tmp_path}: cannot read topology file (Is a directory)" in line


def test_not_utf8(tmp_path):
    bad = tmp_path / "latin1.toml"
    bad.write_bytes("[cluster]\nname = 'caf\xe9'\n".encode("latin-1"))
    line = one_line_error(dp("up", str(bad)))
    assert f"{bad}: not UTF-8 text (byte 0xe9 at offset 21)" in line and "save" in line


@pytest.mark.parametrize("duration", ["-1", "nan", "inf", "soon"])
def test_capture_duration_must_be_seconds(duration):
    line = one_line_error(dp("capture", "--running", "x", "--duration", duration, "-o", "o"))
    assert f"argument --duration: {duration!r} is not a number of seconds" in line


def test_trace_checks_pods_before_building():
    """The pods are checked against the file's plan before anything is built: even a
    user who may not build gets that error, naming the file's cluster."""
    user = 65534 if is_root() else None
    line = one_line_error(dp("trace", str(DEFAULT), "--from", "node-9/pod-0", "--to",
                             "node-0/pod-0", user=user))
    assert line == "dataplane: no node 'node-9' in cluster flannel-vxlan; known: node-0, node-1"
    line = one_line_error(dp("trace", str(DEFAULT), "--from", "node-0/pod-0", "--to",
                             "node-1/pod-7", user=user))
    assert "no pod 'node-1/pod-7' in cluster flannel-vxlan;" in line


def test_bad_arguments():
    assert "dataplane" in one_line_error(dp("frobnicate"))
    assert "--help" in one_line_error(dp("up"))


def test_unknown_cluster():
    assert "no cluster named" in one_line_error(dp("status", "no-such-cluster"))


def test_not_root_is_told_how():
    line = one_line_error(dp("up", str(DEFAULT), user=65534 if is_root() else None))
    assert "needs root" in line and "sudo" in line


@pytest.mark.needs_root
def test_up_status_down():
    name = unique_name("cli")
    done = dp("up", str(DEFAULT), "--name", name)
    try:
        assert done.returncode == 0, done.stderr
        status = dp("status", name, "--json")
        assert status.returncode == 0, status.stderr
        shown = json.loads(status.stdout)
        assert shown["name"] == name
        assert shown["underlay"]["netns"] == f"dp-{name}.underlay"
        node = shown["nodes"][1]
        assert {"name", "netns", "underlay_ip", "pod_cidr", "vtep_mac", "pods"} <= set(node)
        assert (node["name"], node["underlay_ip"], node["pod_cidr"]) == \
            ("node-1", "172.30.0.2", "10.244.1.0/24")
        pod = node["pods"][0]
        assert {"name", "netns", "ip", "mac", "host_veth"} <= set(pod)
        assert (pod["ip"], pod["mac"], pod["netns"]) == \
            ("10.244.1.2", "0a:58:0a:f4:01:02", f"dp-{name}.node-1.pod-0")
        text = dp("status", name)
        assert "node-1/pod-0" in text.stdout and "10.244.1.2" in text.stdout
        listing = json.loads(dp("status", "--json").stdout)
        assert name in [c["name"] for c in listing["clusters"]]
    finally:
        down = dp("down", name)
    assert down.returncode == 0, down.stderr
    assert "7 namespaces removed" in down.stdout
    assert "no cluster named" in one_line_error(dp("down", name))


@pytest.mark.needs_root
def test_shipped_topology_by_name_from_anywhere(tmp_path):
    name = unique_name("byname")
    done = dp("up", "flannel-vxlan-4x8", "--name", name, cwd=tmp_path)
    try:
        assert done.returncode == 0, done.stderr
        assert "4 nodes, 32 pods" in done.stdout
    finally:
        dp("down", name)


@pytest.mark.needs_root
@pytest.mark.needs_probes
def test_verify_without_argument_outside_the_repository(tmp_path):
    done = dp("verify", "--proto", "icmp", "--no-mtu", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "12 flows: 12 passed" in done.stdout


@pytest.mark.needs_root
def test_missing_pyroute2_is_an_environment_error(tmp_path):
    system = "/usr/bin/python3"  # the venv's base interpreter, without the venv's packages
    if subprocess.run([system, "-c", "import pyroute2"], capture_output=True).returncode == 0:
        pytest.skip(f"{system} has pyroute2 installed system-wide")
    # A copy of the package whose request makers are another version (their file's time):
    # no template of theirs is stored, so building needs pyroute2 to make them
    shutil.copytree(ROOT / "dataplane", tmp_path / "dataplane",
                    ignore=shutil.ignore_patterns("__pycache__"))
    os.utime(tmp_path / "dataplane" / "cluster" / "rtmessages.py", ns=(1, 1))
    name = unique_name("nopr")
    done = subprocess.run([system, "-m", "dataplane", "up", str(DEFAULT), "--name", name],
                          cwd=tmp_path, capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(tmp_path)})
    line = one_line_error(done)
    assert "pyroute2" in line and "make setup" in line
    assert not list(netns.NETNS_RUN.glob(f"dp-{name}.*"))
    assert not (state.STATE_ROOT / name).exists()


def test_wheel_carries_the_probes(tmp_path):
    """A user's `pip install` gets probes/*.c inside the package, as dataplane/probes."""
    done = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps",
                           "--no-build-isolation", "-w", str(tmp_path), str(ROOT)],
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    (wheel,) = tmp_path.glob("dataplane-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert {"dataplane/probes/hops.c", "dataplane/probes/fn_hops.c",
            "dataplane/probes/fdb.c", "dataplane/topologies/flannel-vxlan.toml"} <= set(names)


def test_probe_sources_found_from_anywhere(tmp_path):
    done = subprocess.run([sys.executable, "-c", "from dataplane.bpf import loader; "
                           "print(loader.source('hops.c')[:2])"],
                          cwd=tmp_path, capture_output=True, text=True)
    assert done.returncode == 0 and done.stdout.startswith("//"), done.stderr


def test_every_command_has_its_parser_and_its_function():
    assert set(cli.ADDERS) == set(cli.COMMANDS)
