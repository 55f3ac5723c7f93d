"""The protocols dataplane sends between pods and verifies, by the names users give.

Kept apart from traffic.py so the CLI can offer them without importing it.
"""

PROTOCOLS = ("icmp", "udp", "tcp", "arp")
