"""Messages copied from a template are the bytes pyroute2 encodes for the same values."""

import json
import socket
import struct
from functools import partial
from ipaddress import IPv4Address, IPv4Network

import pytest

from dataplane.cluster import msgtemplate, netns, rtmessages, rtnl
from dataplane.cluster.msgtemplate import Mac


def direct(build, values, sequence=1):
    return msgtemplate.encode(build, values, sequence)


def test_templated_messages_are_pyroute2s_bytes():
    cases = [
        (rtmessages.addr, (24,), [(5, IPv4Address("10.244.1.7")),
                                  (300, IPv4Address("10.244.9.255"))]),
        (rtmessages.veth, (), [(5, "veth0001", 1450, 2, "eth0", Mac("0a:58:0a:f4:01:02"), 7, 3),
                               (70000, "vethffff", 9000, 2, "eth0", Mac("ff:ee:dd:cc:bb:aa"), 999,
                                3)]),
        (rtmessages.vxlan, (8472, 0), [(4, "flannel.1", 1450, Mac("0e:fa:ac:1e:00:01"), 1,
                                        IPv4Address("172.30.0.1"), 2),
                                       (4, "flannel.1", 8950, Mac("0e:fa:ac:1e:00:02"), 70000,
                                        IPv4Address("172.30.0.9"), 2)]),
        (rtmessages.bridge, (), [(3, "cni0", 1450, Mac("0e:fa:ac:1e:00:01")),
                                 (2, "br00", 1500, Mac("aa:bb:cc:dd:ee:ff"))]),
        (rtmessages.route, (0, False), [(IPv4Address("10.244.1.1"), 2),
                                   (IPv4Address("10.244.3.1"), 2)]),
        (rtmessages.fdb, (rtnl.RTM_NEWNEIGH, rtnl.NLM_F_REQUEST),
         [(4, Mac("aa:bb:cc:dd:ee:01"), IPv4Address("172.18.0.2")),
          (4, Mac("aa:bb:cc:dd:ee:02"), IPv4Address("172.18.0.3"))]),
    ]
    for make, shape, examples in cases:
        build = partial(make, *shape)
        found = msgtemplate.template(build, examples[0])
        assert found is not None, make.__name__
        for sequence, values in enumerate(examples, 1):
            assert found.fill(values, sequence) == direct(build, values, sequence), make.__name__


def test_a_batch_sends_what_pyroute2_encodes():
    b = rtnl.Batch(sock=None, where="test")
    for k in range(3):
        b.route_add(IPv4Network(f"10.244.{k}.0/24"), IPv4Address(f"10.{k}.0.1"), 4, onlink=True)
    for k, data in enumerate(b._messages):
        values = (IPv4Address(f"10.{k}.0.1"), 4, IPv4Address(f"10.244.{k}.0"))
        assert data == direct(lambda *v: rtmessages.route(24, True, *v), values, k + 1)


def test_a_field_narrower_than_its_value_is_not_templated():
    def narrow(prefixlen):  # ifaddrmsg's prefixlen is one byte: no u32 fits
        return rtmessages.addr(prefixlen, 2, IPv4Address("10.0.0.1"))

    assert msgtemplate.template(narrow, (24,)) is None


def build_batch() -> rtnl.Batch:
    b = rtnl.Batch(sock=None, where="test")
    b.vxlan_add(4, "flannel.1", mtu=1450, address="0e:fa:ac:1e:00:01", vni=1,
                local=IPv4Address("172.30.0.1"), link=2, port=8472, learning=False)
    b.addr_add(4, IPv4Address("10.244.0.0"), 32)
    b.fdb_append(4, "0e:fa:ac:1e:00:02", IPv4Address("172.30.0.2"))
    return b


@pytest.fixture
def store_dir(tmp_path, monkeypatch):
    """An empty store of templates in tmp_path, and none in memory."""
    monkeypatch.setattr(rtnl, "CACHE_DIR", tmp_path)
    monkeypatch.setattr(rtnl, "_TEMPLATES", {})
    rtnl._store.cache_clear()
    yield tmp_path
    rtnl._store.cache_clear()  # the next test's store is its own


def a_later_run(monkeypatch):
    """Nothing in memory: the store is read again."""
    monkeypatch.setattr(rtnl, "_TEMPLATES", {})
    rtnl._store.cache_clear()


def test_stored_templates_build_without_pyroute2(store_dir, monkeypatch):
    made = build_batch()._messages
    (stored,) = store_dir.iterdir()
    assert len(json.loads(stored.read_text())["templates"]) == 3
    a_later_run(monkeypatch)
    monkeypatch.setattr(rtnl, "_makers", lambda: pytest.fail("pyroute2 was needed"))
    assert build_batch()._messages == made


@pytest.mark.parametrize("content", ["{not json", "[]", "null",
                                     '{"crc32": 1, "templates": {"k": ["1000000000", [[0]]]}}'],
                         ids=["garbage", "a list", "null", "a wrong checksum"])
def test_a_damaged_store_is_an_empty_one(tmp_path, content):
    path = tmp_path / "store.json"
    path.write_text(content)
    store = msgtemplate.Store(path)
    assert store.get("k") is None
    kept = msgtemplate.Template(bytes.fromhex("1400000000000000000000000000000001020304"),
                                ((16,),))
    store.put("key", kept)
    assert msgtemplate.Store(path).get("key") == kept


def test_a_stored_template_that_values_do_not_fit_is_made_again(store_dir, monkeypatch):
    made = build_batch()._messages
    (stored,) = store_dir.iterdir()
    kept = json.loads(stored.read_text())["templates"]
    for key, (data, offsets) in kept.items():  # each value's last place: its last byte
        kept[key] = [data, [[len(data) // 2 - 1] for _ in offsets]]
    stored.write_text(json.dumps({"crc32": msgtemplate._checksum(kept), "templates": kept}))
    a_later_run(monkeypatch)
    assert build_batch()._messages == made
    assert json.loads(stored.read_text())["templates"] != kept  # made again, stored


@pytest.mark.needs_root
def test_requests_the_kernel_cannot_read_end_in_an_error(dataplane_cluster, monkeypatch):
    """A message whose header claims more than was sent is dropped unread, unacked: the
    batch ends in an error instead of waiting for its ack for ever."""
    monkeypatch.setattr(rtnl, "ACK_SECONDS", 0.2)
    pod = dataplane_cluster.plan.pods()[0]
    with netns.socket_in(pod.netns, socket.AF_NETLINK, socket.SOCK_DGRAM, 0) as sock:
        b = rtnl.Batch(sock, pod.netns)
        b.link_up(1)
        b._messages[0] = struct.pack("=I", 4096) + b._messages[0][4:]
        with pytest.raises(rtnl.NetlinkError, match="unanswered"):
            b.send()
