"""Which ordered pod pairs a verify run probes: all of them, those on one node or across
nodes, or a sample of a big cluster. Pure."""

from __future__ import annotations

from dataplane.cluster.plan import Plan, PodPlan
from dataplane.errors import UsageError
from dataplane.names import Pairs

SAMPLE_ABOVE = 64  # pods: bigger clusters are sampled unless --pairs all is asked for


def default_pairs(plan: Plan) -> Pairs:
    return "all" if len(plan.pods()) <= SAMPLE_ABOVE else "sample"


def pairs(plan: Plan, which: Pairs = "all") -> list[tuple[PodPlan, PodPlan]]:
    """Every ordered pod pair, or those on the same node, or those across nodes, or a
    sample of them."""
    if which == "sample":
        return sample(plan)
    chosen = []
    for src in plan.pods():
        for dst in plan.pods():
            same = src.node == dst.node
            if src != dst and (which == "all" or (which == "same-node") == same):
                chosen.append((src, dst))
    return chosen


def some_pairs(plan: Plan, which: Pairs) -> list[tuple[PodPlan, PodPlan]]:
    """pairs(), refusing a choice that leaves nothing to verify."""
    chosen = pairs(plan, which)
    if not chosen:
        raise UsageError(f"--pairs {which} selects no pod pair in cluster {plan.name} "
                         f"({len(plan.nodes)} nodes x {len(plan.nodes[0].pods)} pods): "
                         "nothing to verify; pick other --pairs or a bigger topology")
    return chosen


def sample(plan: Plan) -> list[tuple[PodPlan, PodPlan]]:
    """A pair for every ordered (source node, destination node), the same node included
    where it has two pods, and every pod once as source and once as destination (pods
    paired with the pod half the cluster away), pods taken in turn on each node."""
    chosen: dict[tuple[str, str], tuple[PodPlan, PodPlan]] = {}
    for i, a in enumerate(plan.nodes):
        for j, b in enumerate(plan.nodes):
            src, dst = a.pods[j % len(a.pods)], b.pods[i % len(b.pods)]
            if src == dst:
                dst = b.pods[(i + 1) % len(b.pods)]
            if src != dst:
                chosen[(src.ref, dst.ref)] = (src, dst)
    pods = plan.pods()
    shift = max(1, len(pods) // 2)
    for k, src in enumerate(pods):
        dst = pods[(k + shift) % len(pods)]
        if src != dst:
            chosen[(src.ref, dst.ref)] = (src, dst)
    return list(chosen.values())
