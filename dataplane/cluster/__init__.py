"""Stage 1, the cluster: a topology file made into a live pod network, and read back.

spec (the topology file) -> plan (every name, address and MAC; pure) -> build (netlink
batches through rtnl, in namespaces made by netns) -> lifecycle (up, down, clean, who
holds a cluster; its record in state, its node files). Also what a fresh build holds
(expected), what the kernel holds now (live, netstate, ethtool, firewall), the user's
own node configuration (nodeconfig), faults to inject, and discovery of a network
dataplane did not build (scan, discover). cni/ wires pods with the real CNI plugins.

May import: the standard library, pyroute2, dataplane.errors, dataplane.resources,
dataplane.names, dataplane.records. Nothing from a later stage (bpf, traffic, verify, report, send).
"""
