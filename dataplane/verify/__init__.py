"""Stage 4, verify: the expected hops of a flow (paths: same node, cross node, ARP), a
flow's observed hops judged against them and the VXLAN rules (verdict), the live kernel
state audited against the plan (audit), the drift that explains a failure (cause), the
kernel caches an earlier run left reset (caches), and the run itself: pod pairs in waves,
each flow judged and handed on (verifier), the waves shared between worker processes
(workers), the reset and the audit in a forked child beside the traffic (beside, forked),
objects between a run and the processes it forks (channel).

May import: dataplane.errors, dataplane.names, dataplane.records, dataplane.cluster,
dataplane.bpf, dataplane.traffic. Nothing from report or send.
"""
