"""Audit a running cluster: every difference between what the plan defines (and a
fresh build has) and what the kernel holds, as Drift items.

compare() is pure: it takes a snapshot (namespace -> NetState, None when the
namespace is gone) so that it is tested on data; audit() reads the live one.
"""

from __future__ import annotations

import time

from dataplane.cluster import expected, live
from dataplane.cluster.netstate import LINK, NetState
from dataplane.cluster.plan import Plan
from dataplane.records import Drift

MISSING = "missing"
SETTLE_SECONDS = 1.5
SETTLE_POLL = 0.05


def audit(plan: Plan) -> list[Drift]:
    wanted = expected.state(plan)
    snapshot = live.snapshot(wanted)
    _settle(plan, wanted, snapshot)
    return _compare(plan, wanted, snapshot)


def _settle(plan: Plan, wanted: dict[str, NetState], snapshot: dict[str, NetState | None]) -> None:
    """Read again the namespaces with a link whose oper state the kernel has not set
    yet ("unknown" on a veth or bridge just made or changed: its linkwatch work runs
    up to a second later), until it has."""
    deadline = time.monotonic() + SETTLE_SECONDS
    while unsettled := {ns: wanted[ns] for ns, s in snapshot.items() if s and _unsettled(s)}:
        if time.monotonic() > deadline:
            return
        time.sleep(SETTLE_POLL)
        snapshot.update(live.snapshot(unsettled))


def _unsettled(s: NetState) -> bool:
    return any(what == "oper state" and value == "unknown"
               and s.items.get((dev, LINK)) in ("veth", "bridge")
               for (dev, what), value in s.attrs.items())


def compare(plan: Plan, snapshot: dict[str, NetState | None]) -> list[Drift]:
    return _compare(plan, expected.state(plan), snapshot)


def _compare(plan: Plan, wanted: dict[str, NetState],
             snapshot: dict[str, NetState | None]) -> list[Drift]:
    labels = plan.where()
    drift = []
    for ns, want in wanted.items():
        found = snapshot.get(ns)
        if found is None:
            drift.append(Drift(labels[ns], None, "namespace", "present", MISSING))
        else:
            drift += diff(labels[ns], want, found)
    return drift + duplicates(plan, wanted, snapshot)


def diff(at: str, want: NetState, found: NetState) -> list[Drift]:
    """The drift of one namespace. A device that is missing or extra is one item:
    what belongs to it (addresses, routes, flags) is not listed again."""
    odd = want.devices() ^ found.devices()
    drift = []
    for key in want.items.keys() | found.items.keys():
        dev, what = key
        if (dev in odd and what != LINK) or want.items.get(key) == found.items.get(key):
            continue
        drift.append(Drift(at, dev, what, want.items.get(key, _absent(what)),
                           found.items.get(key, MISSING)))
    for key in want.attrs.keys() & found.attrs.keys():
        if key[0] not in odd and want.attrs[key] != found.attrs[key]:
            drift.append(Drift(at, key[0], key[1], want.attrs[key], found.attrs[key]))
    return sorted(drift, key=lambda d: (d.device or "", d.what))


def _absent(what: str) -> str:
    return "no drop" if what.startswith(("nftables", "iptables")) else "absent"


def duplicates(plan: Plan, wanted: dict[str, NetState],
               snapshot: dict[str, NetState | None]) -> list[Drift]:
    """An IP address held in two namespaces: one item at each holder but its owner."""
    labels = plan.where()
    owner = {_ip(what): labels[ns] for ns, s in wanted.items() for _, what in s.items
             if what.startswith("address ")}
    holders: dict[str, list[tuple[str, str | None]]] = {}
    for ns, s in snapshot.items():
        for dev, what in (s.items if s else {}):
            if what.startswith("address ") and not _ip(what).startswith("127."):
                holders.setdefault(_ip(what), []).append((labels.get(ns, ns), dev))
    drift = []
    for ip, held in holders.items():
        places = sorted({at for at, _ in held})
        if len(places) < 2:
            continue
        for at, dev in held:
            if at != owner.get(ip):
                drift.append(Drift(at, dev, f"duplicate address {ip}",
                                   f"only on {owner.get(ip, 'one namespace')}",
                                   f"on {' and '.join(places)}"))
    return drift


def _ip(what: str) -> str:
    return what.split()[1].split("/")[0]
