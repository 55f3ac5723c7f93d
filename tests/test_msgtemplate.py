"""Messages copied from a template are the bytes pyroute2 encodes for the same values."""

from functools import partial
from ipaddress import IPv4Address, IPv4Network

from dataplane.cluster import msgtemplate, rtnl
from dataplane.cluster.msgtemplate import Mac


def direct(build, values, sequence=1):
    return msgtemplate.encode(build, values, sequence)


def test_templated_messages_are_pyroute2s_bytes():
    cases = [
        (rtnl._addr, (24,), [(5, IPv4Address("10.244.1.7")), (300, IPv4Address("10.244.9.255"))]),
        (rtnl._veth, (), [(5, "veth0001", 1450, 2, "eth0", Mac("0a:58:0a:f4:01:02"), 7, 3),
                          (70000, "vethffff", 9000, 2, "eth0", Mac("ff:ee:dd:cc:bb:aa"), 999, 3)]),
        (rtnl._route, (0, False), [(IPv4Address("10.244.1.1"), 2),
                                   (IPv4Address("10.244.3.1"), 2)]),
        (rtnl._fdb, (rtnl.RTM_NEWNEIGH, rtnl.NLM_F_REQUEST),
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
        assert data == direct(lambda *v: rtnl._route(24, True, *v), values, k + 1)


def test_a_field_narrower_than_its_value_is_not_templated():
    def narrow(prefixlen):  # ifaddrmsg's prefixlen is one byte: no u32 fits
        return rtnl._addr(prefixlen, 2, IPv4Address("10.0.0.1"))

    assert msgtemplate.template(narrow, (24,)) is None
