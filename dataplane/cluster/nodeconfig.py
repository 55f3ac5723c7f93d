"""The user's own node configuration ([[configure]] in a topology), applied to its nodes
after the build and before anything is verified: network sysctls, an nftables ruleset
file, commands (argv lists, no shell), each inside the node's namespace.

What it leaves counts as deliberate, not drift: its sysctls are expected at their
values, and the firewall chains that can drop once everything is applied are
recorded in the cluster's state as expected. Their effect on flows is still
verified. Other changes a command makes (links, routes) are not expected: the audit
shows them. A failure names the node and the item, and the build is torn down.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

from dataplane.cluster import firewall, netns
from dataplane.cluster.plan import NodePlan, Plan
from dataplane.cluster.spec import Configure, Spec
from dataplane.errors import UsageError

RECORD = "configured.json"  # node -> {chain: how it drops}, after the user's configuration
COMMAND_TIMEOUT = 60.0  # seconds


def targets(spec: Spec, item: Configure) -> tuple[str, ...]:
    return item.nodes if item.nodes is not None else spec.nodes


def sysctls(spec: Spec, node: str) -> dict[str, str]:
    """The sysctls the user's configuration sets on node, the last word winning."""
    return {key: value for item in spec.configure if node in targets(spec, item)
            for key, value in item.sysctls}


def apply(plan: Plan, root: Path) -> None:
    """Apply every [[configure]] item to its nodes, in order, then record what the
    firewall of each configured node can drop."""
    configured: set[str] = set()
    for item in plan.spec.configure:
        ruleset = _read_ruleset(item) if item.nftables else None
        for name in targets(plan.spec, item):
            node = plan.node(name)
            for key, value in item.sysctls:
                _sysctl(node, f"{item.key}.sysctls.{key}", key, value)
            if ruleset is not None:
                _nftables(node, item, ruleset)
            for i, argv in enumerate(item.commands):
                _command(node, f"{item.key}.commands[{i}]", argv, plan.spec.base)
            configured.add(name)
    if configured:
        (root / RECORD).write_text(json.dumps(
            {name: _dropping(plan.node(name)) for name in sorted(configured)}, indent=1))


def recorded(plan: Plan, root: Path) -> Plan:
    """The plan with the firewall chains the user's configuration left, as expected."""
    try:
        found = json.loads((root / RECORD).read_text())
    except FileNotFoundError:
        return plan
    except (OSError, ValueError) as err:
        raise UsageError(f"{root / RECORD} is unreadable ({err}); take the cluster down and "
                         "up again") from None
    return replace(plan, firewall=tuple((node, what, how) for node, chains in found.items()
                                        for what, how in chains.items()))


def _read_ruleset(item: Configure) -> str:
    try:
        return item.nftables.read_text()
    except (OSError, UnicodeDecodeError) as err:
        raise UsageError(f"{item.key}.nftables: cannot read {item.nftables} ({err}); point it "
                         "at a ruleset file (relative to the topology file)") from None


def _sysctl(node: NodePlan, key: str, name: str, value: str) -> None:
    try:
        netns.run_in(node.netns, lambda: netns.write_sysctl(name, value))
    except FileNotFoundError:
        raise UsageError(f"{node.name}: {key}: no such sysctl in the node's namespace; "
                         "check the name (sysctl -a lists them)") from None
    except OSError as err:
        raise UsageError(f"{node.name}: {key}: cannot set {value!r} ({err.strerror}); "
                         "use a value the kernel accepts") from None


def _nftables(node: NodePlan, item: Configure, ruleset: str) -> None:
    def load() -> None:
        import nftables  # Debian's python3-nftables (libnftables)

        nft = nftables.Nftables()
        nft.add_include_path(str(item.nftables.parent))
        rc, _, err = nft.cmd(ruleset)
        if rc != 0:
            raise UsageError(f"{node.name}: {item.key}.nftables ({item.nftables}): "
                             f"{' '.join(err.split())}; fix the ruleset (nft -c -f FILE "
                             "checks it)")

    netns.run_in(node.netns, load)


def _command(node: NodePlan, key: str, argv: tuple[str, ...], cwd: Path) -> None:
    import subprocess  # here: a configuration without commands (most) never needs it

    from dataplane.cluster import nsexec

    shown = " ".join(argv)
    try:
        done = nsexec.run(node.netns, argv, cwd=cwd, timeout=COMMAND_TIMEOUT)
    except subprocess.TimeoutExpired:
        raise UsageError(f"{node.name}: {key} ({shown}): still running after "
                         f"{COMMAND_TIMEOUT:.0f} s; make it finish") from None
    if done.returncode != 0:
        said = (done.stderr.strip() or done.stdout.strip()).splitlines()
        raise UsageError(f"{node.name}: {key} ({shown}): exit status {done.returncode}"
                         f"{': ' + said[-1] if said else ''}; fix the command")


def _dropping(node: NodePlan) -> dict[str, str]:
    from dataplane.cluster import live

    found: list[dict[str, str]] = []
    netns.run_in(node.netns, lambda: found.append(firewall.dropping(live.ruleset())))
    return found[0]
