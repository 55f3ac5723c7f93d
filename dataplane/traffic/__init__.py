"""Stage 3, traffic: exchanges between pods from sockets opened in their namespaces
(prober: ICMP, UDP, TCP, ARP, DF probes around the MTU, each tagged so its hops can be
found), packets a user crafts with scapy (craft), and the next hop a pod's kernel would
pick for one (nexthop).

May import: scapy (craft only), the standard library, dataplane.errors,
dataplane.names, dataplane.records, dataplane.cluster, dataplane.bpf. Nothing from verify,
report or send.
"""
