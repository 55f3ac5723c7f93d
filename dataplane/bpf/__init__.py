"""Stage 2, the probes: what the running kernel offers (kernel, btf), the eBPF programs
compiled and attached (loader; their C sources are the top-level probes/ folder, installed
as dataplane/probes), kernel events turned into Hop records (tracer), frames decoded
(packet: Ethernet, ARP, IPv4, ICMP/UDP/TCP, the VXLAN header and its inner frame), a
packet's hops made into its trail (trails), and `dataplane capture`'s recording (capture).

May import: bcc, the standard library, dataplane.errors, dataplane.resources,
dataplane.names, dataplane.records, dataplane.cluster. Nothing from traffic, verify, report or send.
"""
