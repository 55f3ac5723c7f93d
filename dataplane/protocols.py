"""The protocols dataplane sends between pods and verifies, and the outcomes `send` can
be told to expect, by the names users give.

Kept apart from traffic.py and outcome.py so the CLI can offer them without importing those.
"""

PROTOCOLS = ("icmp", "udp", "tcp", "arp")
EXPECTABLE = ("delivered", "answered", "dropped")
