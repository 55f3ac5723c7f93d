"""The `dataplane` command. Exit 0 ok, 1 failure, 2 usage or environment error."""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
from pathlib import Path

from dataplane import cluster, state
from dataplane.errors import UsageError
from dataplane.protocols import PROTOCOLS

DEFAULT_TOPOLOGY = "topologies/flannel-vxlan.toml"
CAPTURE_HELP = ("terms joined by 'and': icmp, udp, tcp, arp, host IP, port N, vni N, "
                "at WHERE, dev NAME")


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:
        """One line naming the problem and where to look, exit code 2."""
        self.exit(2, f"{self.prog}: {message}; see `{self.prog} --help`\n")


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="dataplane", description="Build and verify a flannel-vxlan style "
                     "pod network made of network namespaces.")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    p = sub.add_parser("up", help="build a cluster and leave it running")
    p.add_argument("topology", help="topology file, e.g. " + DEFAULT_TOPOLOGY)
    p.add_argument("--name", help="cluster name (default: the file's cluster.name)")
    p = sub.add_parser("status", help="show running clusters and their drift from the plan "
                       "(exit 1 if there is any)")
    p.add_argument("name", nargs="?", help="one cluster (default: all)")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p = sub.add_parser("down", help="tear a running cluster down")
    p.add_argument("name")
    sub.add_parser("clean", help="remove every cluster an earlier run left behind")
    p = sub.add_parser("trace", help="send one packet between two pods and show its hops")
    where = p.add_mutually_exclusive_group()
    where.add_argument("topology", nargs="?", help="build this topology for the trace, then "
                       "tear it down")
    where.add_argument("--running", metavar="N", help="trace in running cluster N")
    p.add_argument("--from", dest="src", required=True, metavar="NODE/POD")
    p.add_argument("--to", dest="dst", required=True, metavar="NODE/POD")
    p.add_argument("--proto", choices=PROTOCOLS, default="icmp")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    sub.add_parser("doctor", help="show what the kernel offers the probes")
    p = sub.add_parser("verify", help="verify every pod pair hop by hop (default: build "
                       f"{DEFAULT_TOPOLOGY}, verify, tear down)")
    where = p.add_mutually_exclusive_group()
    where.add_argument("topology", nargs="?", help=f"topology to build (default {DEFAULT_TOPOLOGY})")
    where.add_argument("--running", metavar="N", help="verify running cluster N")
    p.add_argument("--pairs", choices=("all", "same-node", "cross-node"), default="all")
    p.add_argument("--proto", choices=PROTOCOLS, action="append",
                   help="verify with only these protocol(s) (default: all of them; repeatable; "
                        "arp asks for the destination on the same node, else for the gateway)")
    p.add_argument("--no-mtu", dest="mtu", action="store_false",
                   help="skip the DF UDP probes at MTU-1, MTU and MTU+1 bytes (sent by default)")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.add_argument("--pcap", metavar="OUT.pcapng", help="also write every flow's hops")
    p = sub.add_parser("capture", help="record every hop of every packet to pcapng")
    p.add_argument("--running", metavar="N", required=True, help="the running cluster")
    p.add_argument("--duration", type=float, default=10.0, metavar="S",
                   help="seconds to record (default 10; Ctrl-C stops early)")
    p.add_argument("--filter", metavar="EXPR", help="keep only matching hops: " + CAPTURE_HELP)
    p.add_argument("-o", "--output", required=True, metavar="OUT.pcapng")
    p = sub.add_parser("fault", help="inject a fault into a running cluster")
    faults = p.add_subparsers(dest="fault_command", required=True, parser_class=_Parser)
    faults.add_parser("list", help="the faults there are")
    p = faults.add_parser("inject", help="inject one fault")
    p.add_argument("fault", metavar="NAME")
    p.add_argument("--running", metavar="N", required=True, help="the running cluster")
    p.add_argument("--node", help="the node to break (default: the first)")
    p.add_argument("--pod", metavar="[NODE/]POD", help="the pod to break (default: the node's first)")
    p.add_argument("--peer", help="missing-fdb: the peer whose entry goes (default: the next node)")
    return parser


def _need_root(command: str) -> None:
    if os.geteuid() != 0:
        raise UsageError(f"`dataplane {command}` needs root to manage network namespaces; "
                         f"run it as root (sudo dataplane {command} ...)")


def cmd_up(args: argparse.Namespace) -> int:
    topology = cluster.read(args.topology, name=args.name)  # a bad file before root
    _need_root("up")
    made = cluster.start(topology)
    made.record.release()  # it outlives this process; `down` or `clean` removes it
    n_pods = len(made.plan.pods())
    print(f"cluster {made.name} is up: {len(made.plan.nodes)} nodes, {n_pods} pods "
          f"(namespaces {made.plan.prefix}.*); `dataplane status {made.name}` shows it, "
          f"`dataplane down {made.name}` removes it")
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    from dataplane import status

    if args.name:
        shown = [status.as_dict(cluster.attach(args.name))]
    else:
        shown = [s for r in state.records() if r.namespaces and (s := _status_of(r.name))]
    if args.json:
        print(json.dumps(shown[0] if args.name else {"clusters": shown}, indent=2))
    elif not shown:
        print("no cluster is up")
    else:
        print("\n\n".join(status.as_text(s) for s in shown))
    return 1 if any(s["drift"] for s in shown) else 0


def _status_of(name: str) -> dict | None:
    """A listed cluster's status; None if it went down since it was listed (auditing
    every cluster takes a while, and others may be tearing theirs down meanwhile)."""
    from dataplane import status

    try:
        return status.as_dict(cluster.attach(name))
    except UsageError:
        return None


def cmd_down(args: argparse.Namespace) -> int:
    _need_root("down")
    removed = cluster.down(args.name)
    print(f"cluster {args.name} is down ({len(removed)} namespaces removed)")
    return 0


def cmd_clean(args: argparse.Namespace) -> int:
    _need_root("clean")
    removed, busy = cluster.clean()
    for record in busy:
        print(f"left {record.name}: in use by pid {record.owner_pid}, which removes it itself")
    print(f"removed {len(removed)} leftover namespaces" + "".join(f"\n  {ns}" for ns in removed))
    return 0


def _on_cluster(args: argparse.Namespace, command: str, work):
    """Run work(plan) on --running N, or on a cluster built from the topology for it
    (with a name of its own, so a cluster of that name may be up) and torn down."""
    path = None if args.running else (args.topology or DEFAULT_TOPOLOGY)
    topology = cluster.read(path) if path else None  # a bad file before root
    _need_root(command)
    made = None
    if topology:
        made = cluster.start(topology.renamed(f"{topology.spec.name[:20]}-{os.getpid()}"))
    try:
        return work(made.plan if made else cluster.attach(args.running).plan)
    finally:
        if made:
            cluster.down(made.name)


def cmd_trace(args: argparse.Namespace) -> int:
    from dataplane import trace

    def work(plan):
        plan.pod(args.src), plan.pod(args.dst)  # name errors before loading probes
        return trace.run(plan, args.src, args.dst, args.proto)

    if not args.topology and not args.running:
        raise UsageError("trace needs a topology FILE or --running N")
    result = _on_cluster(args, "trace", work)
    print(json.dumps(trace.as_dict(result), indent=2) if args.json else trace.as_text(result))
    return 0 if result.exchange.answered else 1


def cmd_verify(args: argparse.Namespace) -> int:
    from dataplane import verify

    protos = tuple(dict.fromkeys(args.proto or PROTOCOLS))
    report = _on_cluster(args, "verify", lambda plan: verify.run(plan, args.pairs, protos,
                                                                mtu=args.mtu))
    if args.pcap:
        _write_pcap(args.pcap, [hop for flow in report.flows for hop in flow.hops])
    print(json.dumps(verify.as_dict(report), indent=2) if args.json else verify.as_text(report))
    return 0 if report.passed else 1


def _write_pcap(path: str, hops: list) -> None:
    from dataplane import pcapng

    try:
        Path(path).write_bytes(pcapng.write(hops))
    except OSError as err:
        raise UsageError(f"cannot write {path}: {err.strerror}; pick a writable path") from None


def cmd_capture(args: argparse.Namespace) -> int:
    from dataplane import capture

    keep = capture.parse_filter(args.filter)  # a bad expression fails before anything runs
    _need_root("capture")
    plan = cluster.attach(args.running).plan
    hops, lost = capture.run(plan, args.duration, keep)
    _write_pcap(args.output, hops)
    print(f"{len(hops)} hops written to {args.output}; lost events {lost}")
    return 0 if lost == 0 else 1


def cmd_doctor(args: argparse.Namespace) -> int:
    from dataplane import kernel

    facts = kernel.facts()
    for fact in facts:
        line = f"{fact.name + ':':<16} {fact.value}"
        if fact.fix and (not fact.ok or fact.name == "kprobes"):
            line += f"  ({'fix: ' if not fact.ok else ''}{fact.fix})"
        print(line)
    bad = [fact for fact in facts if not fact.ok]
    if bad:
        print(f"probes cannot run: {bad[0].name}: {bad[0].fix}")
        return 2
    print("probes can run")
    return 0


def cmd_fault(args: argparse.Namespace) -> int:
    from dataplane import faults

    if args.fault_command == "list":
        for fault in faults.FAULTS.values():
            print(f"{fault.name:<14} {fault.summary}")
        return 0
    faults.check_options(args.fault, args.node, args.pod, args.peer)
    _need_root("fault inject")
    plan = cluster.attach(args.running).plan
    print(faults.inject(plan, args.fault, node=args.node, pod=args.pod, peer=args.peer))
    return 0


COMMANDS = {"up": cmd_up, "status": cmd_status, "down": cmd_down, "clean": cmd_clean,
            "trace": cmd_trace, "doctor": cmd_doctor, "verify": cmd_verify,
            "fault": cmd_fault, "capture": cmd_capture}


def _terminate(signum: int, frame: object) -> None:
    raise KeyboardInterrupt  # so SIGTERM unwinds and tears down like Ctrl-C


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    signal.signal(signal.SIGTERM, _terminate)
    try:
        return COMMANDS[args.command](args)
    except UsageError as err:
        print(f"dataplane: {err}", file=sys.stderr)
        return err.exit_code
    except OSError as err:  # the kernel refused something: a failure, not a usage error
        print(f"dataplane {args.command}: {err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("dataplane: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
