"""Pods wired by the real CNI plugins: running a plugin as a runtime does (plugins),
flannel's CNI step (flannel), ADD/CHECK/DEL for a whole cluster (wiring).

May import: dataplane.cluster's modules, dataplane.errors, dataplane.records.
"""
