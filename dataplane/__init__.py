"""dataplane: build a flannel-vxlan style pod network from namespaces and verify it hop by hop.

A run flows one way, and each stage is a subpackage that imports only from the stages
before it (its __init__ says its job and what it may import):

    cluster (spec, plan, build) -> bpf (probes, hops) -> traffic (exchanges)
        -> verify (expected paths, verdicts, audit) -> report (text, JSON, pcapng)
        -> send (any packet, followed to an outcome)

errors, resources, names (the names every stage and the command line share: protocols,
directions, pair sets) and records (the pure records every stage hands on: Frame, Hop,
Flow, Exchange, FlowResult, Drift) sit beneath them all; the faces, cli and
pytest_plugin, on top.
"""

__version__ = "0.1.0"
