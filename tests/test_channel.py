"""channel: whole objects through pipes and socket pairs, as verify's forked processes
send them."""

from __future__ import annotations

import threading

import pytest

from dataplane.verify import channel


def test_an_object_larger_than_the_pipe_arrives_whole():
    """A wave's flows with their hops: megabytes, many times a pipe's buffer."""
    receiving, sending = channel.one_way()
    big = {"hops": [bytes([k % 256]) * 1000 for k in range(5000)]}
    writer = threading.Thread(target=sending.send, args=(big,), daemon=True)  # never hangs a run
    writer.start()
    assert receiving.recv() == big
    writer.join()
    receiving.close()
    sending.close()


def test_both_ways_then_the_close_is_seen():
    one, other = channel.pair()
    one.send(("job", 1))
    assert other.poll(1) and other.recv() == ("job", 1)
    other.send(None)
    assert one.recv() is None
    assert not one.poll()  # nothing waits
    other.close()
    assert one.poll(1)  # the close can be read: EOFError
    with pytest.raises(EOFError):
        one.recv()
    one.close()
    one.close()  # twice is nothing


def test_wait_gives_the_ends_that_can_be_read():
    (a, a_peer), (b, b_peer) = channel.pair(), channel.pair()
    b_peer.send("ready")
    assert channel.wait([a, b], timeout=1) == [b]
    assert channel.wait([a], timeout=0.01) == []
    assert channel.wait([a], timeout=-1) == []  # at once, as multiprocessing's wait
    a_peer.close()
    a.close()
    with pytest.raises(OSError):  # not a wait for ever
        channel.wait([a])
    b.close()
    b_peer.close()
