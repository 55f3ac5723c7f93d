"""Stage 5, report: what people and machines read. Hop tables and hop dicts (hoptable),
a verify run as text lines, JSON or pcapng written flow by flow (stream), hops as a
pcapng file (pcapng), and `dataplane status` (status).

May import: dataplane.errors, dataplane.names, dataplane.records and every earlier stage
(cluster, bpf, traffic, verify). Nothing from send.
"""
