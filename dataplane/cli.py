"""The `dataplane` command. Exit 0 ok, 1 failure, 2 usage or environment error."""

from __future__ import annotations

import argparse
import atexit
import gc
import gettext
import ipaddress
import json
import math
import os
import signal
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import NoReturn

from dataplane.cluster import lifecycle, state
from dataplane.cluster.spec import LABEL, LABEL_HINT
from dataplane.errors import UsageError
from dataplane.names import EXPECTABLE, PAIRS, PROTOCOLS
from dataplane.resources import DEFAULT_TOPOLOGY

TOPOLOGY_HELP = ("a topology file, or a shipped topology by name (flannel-vxlan, "
                 "flannel-vxlan-4x8, flannel-vxlan-cni)")
CAPTURE_HELP = ("terms joined by 'and': icmp, udp, tcp, arp, host IP, port N, vni N, "
                "at WHERE, dev NAME")


def _columns() -> int:
    """The terminal's width as shutil.get_terminal_size() finds it (a positive COLUMNS,
    else the terminal's, else 80), without importing shutil: argparse would import it
    (and the compression modules it imports) for every parser, needed or not."""
    try:
        columns = int(os.environ.get("COLUMNS", ""))
    except ValueError:
        columns = 0
    if columns > 0:
        return columns
    try:
        return os.get_terminal_size(sys.__stdout__.fileno()).columns or 80
    except (AttributeError, ValueError, OSError):
        return 80


class _Formatter(argparse.HelpFormatter):
    def __init__(self, prog: str, indent_increment: int = 2, max_help_position: int = 24,
                 width: int | None = None):
        super().__init__(prog, indent_increment, max_help_position,
                         _columns() - 2 if width is None else width)


class _Parser(argparse.ArgumentParser):
    intermixed = False  # positionals before and after the options: send TOPOLOGY --from X PACKET
    _intermixing = False

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("formatter_class", _Formatter)
        super().__init__(*args, **kwargs)

    def parse_known_args(self, args=None, namespace=None):
        """Subcommands are parsed with this (argparse cannot intermix at the top level)."""
        if not self.intermixed or self._intermixing:
            return super().parse_known_args(args, namespace)
        self._intermixing = True  # parse_known_intermixed_args calls back in here
        try:
            return self.parse_known_intermixed_args(args, namespace)
        finally:
            self._intermixing = False

    def error(self, message: str) -> None:
        """One line naming the problem and where to look, exit code 2."""
        self.exit(2, f"{self.prog}: {message}; see `{self.prog} --help`\n")


def _untranslated() -> None:
    """argparse has each of its messages translated as it builds a parser, and gettext
    searches the locale directories again for every one (hundreds of stat calls for this
    parser) when there is no translation to find. Where there is none, argparse is given
    what gettext would return: the message itself. The C locale (C.UTF-8 too) has none:
    gettext is not even asked (it imports locale and looks for files, ~2 ms)."""
    chosen = next((os.environ[name] for name in ("LANGUAGE", "LC_ALL", "LC_MESSAGES", "LANG")
                   if os.environ.get(name)), "C")
    if chosen.split(":")[0].split(".")[0] in ("C", "POSIX") or \
            gettext.find(gettext.textdomain()) is None:
        argparse._ = lambda message: message
        argparse.ngettext = lambda singular, plural, n: singular if n == 1 else plural


def _parser(argv: Sequence[str] = ()) -> argparse.ArgumentParser:
    """The command line's parser. When argv starts with a command, only that command's
    parser is built: building every command's arguments (their help included) is a
    visible part of a short command's start."""
    _untranslated()
    parser = _Parser(prog="dataplane", description="Build and verify a flannel-vxlan style "
                     "pod network made of network namespaces.")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    named = argv[0] if argv and argv[0] in ADDERS else None
    for command, add in ADDERS.items():
        if named in (None, command):
            add(sub)
    return parser


def _add_up(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("up", help="build a cluster and leave it running")
    p.add_argument("topology", help=TOPOLOGY_HELP)
    p.add_argument("--name", help="cluster name (default: the file's cluster.name)")
    p.add_argument("--cni", choices=("builtin", "plugins"),
                   help="who wires the pods: the built-in netlink builder or the real CNI "
                        "bridge + host-local plugins (default: the file's cni.mode, builtin)")


def _add_status(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("status", help="show running clusters and their drift from the plan "
                       "(exit 1 if there is any)")
    p.add_argument("name", nargs="?", help="one cluster (default: all)")
    p.add_argument("--json", action="store_true", help="machine-readable output")


def _add_down(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("down", help="tear a running cluster down")
    p.add_argument("name")
    p.add_argument("--force", action="store_true",
                   help="even while a live process (a verify --running, a test session) uses it")


def _add_clean(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("clean", help="remove what dead processes left behind (half-built "
                       "clusters, clusters whose owner died)")
    p.add_argument("names", nargs="*", metavar="NAME",
                   help="remove these clusters, even if `up` left them running on purpose")
    p.add_argument("--all", dest="everything", action="store_true",
                   help="also remove every cluster `up` left running, and unreadable records")


def _add_trace(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("trace", help="send one packet between two pods and show its hops")
    where = p.add_mutually_exclusive_group()
    where.add_argument("topology", nargs="?", help=TOPOLOGY_HELP + "; built for the trace, "
                       "then torn down")
    where.add_argument("--running", metavar="N", type=_cluster, help="trace in running cluster N")
    p.add_argument("--from", dest="src", required=True, metavar="NODE/POD")
    p.add_argument("--to", dest="dst", required=True, metavar="NODE/POD")
    p.add_argument("--proto", choices=PROTOCOLS, default="icmp")
    p.add_argument("--json", action="store_true", help="machine-readable output")


def _add_send(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("send", help="send any packet crafted with scapy from a pod and "
                       "follow it hop by hop",
                       usage="dataplane send (TOPOLOGY | --running N) --from NODE/POD "
                             "(PACKET | --from-pcap FILE) [--count K] [--expect OUTCOME] "
                             "[--wait S] [--json] [--pcap OUT.pcapng]")
    p.intermixed = True
    p.add_argument("words", nargs="*", metavar="[TOPOLOGY] PACKET",
                   help=f"{TOPOLOGY_HELP} (built for the send, then torn down; not with "
                        "--running), then a scapy expression, e.g. "
                        "'IP(dst=pod(\"node-1/pod-1\"))/TCP(dport=80, flags=\"S\")', with "
                        "pod(\"NODE/POD\"), mac(\"NODE/POD\"), gw(\"NODE\"), "
                        "fragment(PACKET, fragsize=N)")
    p.add_argument("--running", metavar="N", type=_cluster, help="send in running cluster N")
    p.add_argument("--from", dest="src", required=True, metavar="NODE/POD")
    p.add_argument("--from-pcap", metavar="FILE", help="send the packets of a capture "
                   "instead of PACKET")
    p.add_argument("--count", type=_count, default=1, metavar="K",
                   help="send it K times (default 1)")
    p.add_argument("--expect", choices=EXPECTABLE, help="exit 0 when this is the outcome "
                   "(answered counts as delivered), 1 when not")
    p.add_argument("--wait", type=_seconds, metavar="S",
                   help="give the outcome at most S seconds (default 5)")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.add_argument("--pcap", metavar="OUT.pcapng", help="also write its hops")


def _add_doctor(sub: argparse._SubParsersAction) -> None:
    sub.add_parser("doctor", help="show what the kernel offers the probes")


def _add_verify(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("verify", help="verify every pod pair hop by hop (default: build "
                       f"{DEFAULT_TOPOLOGY}, verify, tear down)")
    where = p.add_mutually_exclusive_group()
    where.add_argument("topology", nargs="?", help=f"{TOPOLOGY_HELP} (default {DEFAULT_TOPOLOGY})")
    where.add_argument("--running", metavar="N", type=_cluster, help="verify running cluster N")
    p.add_argument("--pairs", choices=PAIRS,
                   help="which ordered pod pairs (default: all up to 64 pods, else sample: "
                        "every node pair and every pod as source and as destination)")
    p.add_argument("--proto", choices=PROTOCOLS, action="append",
                   help="verify with only these protocol(s) (default: all of them; repeatable; "
                        "arp asks for the destination on the same node, else for the gateway)")
    p.add_argument("--no-mtu", dest="mtu", action="store_false",
                   help="skip the DF UDP probes at MTU-1, MTU and MTU+1 bytes (sent by default)")
    p.add_argument("--jobs", type=_count, metavar="J",
                   help="worker processes judging the flows (default: one per core for a "
                        "run of a few hundred exchanges or more, one with --json or --pcap)")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.add_argument("--pcap", metavar="OUT.pcapng", help="also write every flow's hops")


def _add_capture(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("capture", help="record every hop of every packet to pcapng")
    p.add_argument("--running", metavar="N", type=_cluster, required=True,
                   help="the running cluster")
    p.add_argument("--duration", type=_seconds, default=10.0, metavar="S",
                   help="seconds to record (default 10; Ctrl-C stops early)")
    p.add_argument("--filter", metavar="EXPR", help="keep only matching hops: " + CAPTURE_HELP)
    p.add_argument("-o", "--output", required=True, metavar="OUT.pcapng")


def _add_fault(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("fault", help="inject a fault into a running cluster")
    faults = p.add_subparsers(dest="fault_command", required=True, parser_class=_Parser)
    faults.add_parser("list", help="the faults there are")
    for action, what in (("inject", "inject one fault"),
                         ("repair", "undo one fault: put back what the plan says")):
        p = faults.add_parser(action, help=what)
        p.add_argument("fault", metavar="NAME")
        p.add_argument("--running", metavar="N", type=_cluster, required=True,
                       help="the running cluster")
        p.add_argument("--node", help="the node to break (default: the first)")
        p.add_argument("--pod", metavar="[NODE/]POD",
                       help="the pod to break (default: the node's first)")
        p.add_argument("--peer",
                       help="missing-fdb: the peer whose entry goes (default: the next node)")


def _add_discover(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("discover", help="infer a pod network dataplane did not build from the "
                       "live kernel, and audit it against flannel's rules")
    where = p.add_mutually_exclusive_group(required=True)
    where.add_argument("--prefix", metavar="P", help="the namespaces whose names start with P")
    where.add_argument("--netns", nargs="+", metavar="NS", help="these namespaces")
    p.add_argument("--cluster-cidr", type=_network, metavar="CIDR",
                   help="the cluster CIDR (default: the nodes' subnet.env FLANNEL_NETWORK)")
    p.add_argument("--node-files", type=Path, metavar="DIR",
                   help="each node's files as DIR/NODE/run/flannel/subnet.env (default: the "
                        "state directory's, for one of our clusters)")
    p.add_argument("--name", help="record it as attached cluster N, for --running N")
    p.add_argument("--json", action="store_true", help="machine-readable output")


# Each command's arguments, in the order --help lists them.
ADDERS = {"up": _add_up, "status": _add_status, "down": _add_down, "clean": _add_clean,
          "trace": _add_trace, "send": _add_send, "doctor": _add_doctor, "verify": _add_verify,
          "capture": _add_capture, "fault": _add_fault, "discover": _add_discover}


def _network(text: str) -> ipaddress.IPv4Network:
    try:
        return ipaddress.IPv4Network(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(f"{text!r} is not an IPv4 CIDR ({err}); write "
                                         "network/prefix, e.g. 10.244.0.0/16") from None


def _seconds(text: str) -> float:
    """A duration argument: a finite number of seconds, not negative."""
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not math.isfinite(value) or value < 0:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds; give one "
                                         "of 0 or more, e.g. 10")
    return value


def _cluster(text: str) -> str:
    """A running cluster's name (an empty one would read as no --running at all)."""
    if not text:
        raise argparse.ArgumentTypeError("an empty name names no cluster; `dataplane status` "
                                         "lists the running ones")
    return text


def _count(text: str) -> int:
    """A positive number of times."""
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a count; give 1 or more")
    return int(text)


def _need_root(command: str) -> None:
    if os.geteuid() != 0:
        raise UsageError(f"`dataplane {command}` needs root to manage network namespaces; "
                         f"run it as root (sudo dataplane {command} ...)")


def cmd_up(args: argparse.Namespace) -> int:
    topology = lifecycle.read(args.topology, name=args.name, cni_mode=args.cni)  # before root
    _need_root("up")
    made = lifecycle.start(topology)
    state.release(made.name)  # it outlives this process; `down` removes it
    n_pods = len(made.plan.pods())
    print(f"cluster {made.name} is up: {len(made.plan.nodes)} nodes, {n_pods} pods "
          f"(namespaces {made.plan.prefix}.*); `dataplane status {made.name}` shows it, "
          f"`dataplane down {made.name}` removes it")
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    from dataplane.report import status

    found = [lifecycle.inspect(args.name)] if args.name is not None else lifecycle.inspect_all()
    shown = [status.as_dict(c) for c in found]
    if args.json:
        print(json.dumps(shown[0] if args.name is not None else {"clusters": shown}, indent=2))
    elif not shown:
        print("no cluster is up")
    else:
        print("\n\n".join(status.as_text(s) for s in shown))
    return 1 if any(s["problems"] or s.get("drift") for s in shown) else 0  # the text says why


def cmd_down(args: argparse.Namespace) -> int:
    _need_root("down")
    found = state.read(args.name)
    removed = lifecycle.down(args.name, force=args.force)
    if isinstance(found, state.Record) and found.attached:
        print(f"cluster {args.name} is forgotten (attached: its namespaces are left as they are)")
    else:
        print(f"cluster {args.name} is down ({len(removed)} namespaces removed)")
    return 0


def cmd_clean(args: argparse.Namespace) -> int:
    """Exit 1 when a cluster named on the command line was left."""
    _need_root("clean")
    swept = lifecycle.clean(args.names, everything=args.everything)
    for item in swept:
        if item.removed is None:
            print(f"left {item.name}: {item.why}")
        else:
            print(f"removed {item.name}: {item.why} ({len(item.removed)} namespaces)")
    removed = [ns for item in swept for ns in item.removed or ()]
    print(f"removed {len(removed)} leftover namespaces" + "".join(f"\n  {ns}" for ns in removed))
    return 1 if any(item.removed is None for item in swept if item.name in args.names) else 0


def _on_cluster(args: argparse.Namespace, command: str, work, check=None):
    """Run work(plan) on --running N (held, and refused when not healthy), or on a
    cluster built from the topology for it (with a name of its own, so a cluster of
    that name may be up) and torn down. check(plan) runs first, before anything is
    built or loaded, on the plan as the user named it."""
    if args.running:
        _need_root(command)
        with lifecycle.using(args.running, f"dataplane {command} --running") as made:
            if check:
                check(made.plan)
            return work(made.plan)
    topology = lifecycle.read(args.topology)  # a bad file before root
    if check:
        from dataplane.cluster.plan import make_plan

        check(make_plan(topology.spec))
    _need_root(command)
    with lifecycle.temporary(topology.renamed(f"{topology.spec.name[:20]}-{os.getpid()}")) as made:
        return work(made.plan)


def cmd_trace(args: argparse.Namespace) -> int:
    from dataplane.report.hoptable import trace_dict, trace_text
    from dataplane.verify.verifier import trace

    def check(plan):
        plan.pod(args.src), plan.pod(args.dst)

    if not args.topology and not args.running:
        raise UsageError("trace needs a topology FILE or --running N")
    result = _on_cluster(args, "trace", lambda plan: trace(plan, args.src, args.dst,
                                                              args.proto), check)
    print(json.dumps(trace_dict(result), indent=2) if args.json else trace_text(result))
    return 0 if result.exchange.answered else 1


def _send_words(args: argparse.Namespace) -> tuple[str | None, str | None]:
    """The topology and the packet expression among send's positional words."""
    wanted = (0 if args.running else 1) + (0 if args.from_pcap else 1)
    if len(args.words) != wanted:
        raise UsageError("send takes " + " and ".join(
            (["a TOPOLOGY (or --running N)"] if not args.running else [])
            + (["one PACKET expression (or --from-pcap FILE)"] if not args.from_pcap else []))
            + f", got {len(args.words)} word(s); quote PACKET as one argument")
    words = list(args.words)
    topology = None if args.running else words.pop(0)
    return topology, (words[0] if words else None)


def cmd_send(args: argparse.Namespace) -> int:
    from dataplane.send import sending
    from dataplane.traffic import craft

    args.topology, expression = _send_words(args)
    pcap = _output(args.pcap) if args.pcap else None  # an unwritable path before any work
    crafted: list = []

    def check(plan):  # before anything is built or loaded
        src, tag = plan.pod(args.src), craft.new_tag()
        crafted.extend(craft.from_pcap(args.from_pcap, src, tag) if args.from_pcap
                       else craft.evaluate(expression, plan, src, tag))

    try:
        wait = sending.WAIT_SECONDS if args.wait is None else args.wait
        result = _on_cluster(args, "send", lambda plan: sending.run(
            plan, args.src, crafted, args.count, wait), check)
        if pcap:
            from dataplane.report import pcapng

            pcap.write(pcapng.write(result.hops))
    finally:
        if pcap:
            pcap.close()
    print(json.dumps(sending.as_dict(result), indent=2) if args.json else sending.as_text(result))
    return 0 if args.expect is None or result.matches(args.expect) else 1


def cmd_verify(args: argparse.Namespace) -> int:
    from dataplane.verify import pairs

    protos = tuple(dict.fromkeys(args.proto or PROTOCOLS))
    pcap = _output(args.pcap) if args.pcap else None  # an unwritable path before any work

    def which(plan):
        return args.pairs or pairs.default_pairs(plan)

    def work(plan):
        from dataplane.verify import beside

        # forked before the rest of the run is imported: its child resets and audits meanwhile
        with beside.start(plan) as started:
            from dataplane.report import stream
            from dataplane.verify import verifier

            streams = [stream.Json(sys.stdout) if args.json else stream.Text(sys.stdout)]
            if pcap:
                streams.append(stream.Pcap(pcap))
            if not args.json and sys.stderr.isatty():
                streams.append(stream.Progress())
            return verifier.run(plan, which(plan), protos, mtu=args.mtu,
                                stream=stream.Tee(streams), keep_hops=False, jobs=args.jobs,
                                started=started)

    try:
        result = _on_cluster(args, "verify", work,
                             check=lambda plan: pairs.some_pairs(plan, which(plan)))
    finally:
        if pcap:
            pcap.close()
    return 0 if result.passed else 1


def _output(path: str):
    try:
        return open(path, "wb")
    except OSError as err:
        raise UsageError(f"cannot write {path}: {err.strerror}; pick a writable path") from None


def _write_pcap(path: str, hops: list) -> None:
    from dataplane.report import pcapng

    with _output(path) as out:
        out.write(pcapng.write(hops))


def cmd_capture(args: argparse.Namespace) -> int:
    from dataplane.bpf import capture

    keep = capture.parse_filter(args.filter)  # a bad expression fails before anything runs
    _need_root("capture")
    with lifecycle.using(args.running, "dataplane capture") as made:
        def recording() -> None:  # as tcpdump says "listening on": traffic sent now is seen
            print(f"recording every hop in cluster {made.name} for {args.duration:g} s "
                  "(Ctrl-C stops)", file=sys.stderr, flush=True)

        hops, lost = capture.run(made.plan, args.duration, keep, recording)
        _write_pcap(args.output, hops)  # before a vanished cluster is reported
    print(f"{len(hops)} hops written to {args.output}; lost events {lost}")
    return 0 if lost == 0 else 1


def cmd_doctor(args: argparse.Namespace) -> int:
    from dataplane.bpf import kernel

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
    from dataplane.cluster import faults

    if args.fault_command == "list":
        for fault in faults.FAULTS.values():
            print(f"{fault.name:<14} {fault.summary}")
        return 0
    faults.check_options(args.fault, args.node, args.pod, args.peer)
    command = f"fault {args.fault_command}"
    _need_root(command)
    with lifecycle.using(args.running, f"dataplane {command}") as made:
        if made.record.attached:
            raise UsageError(f"cluster {made.name} is attached (discovered, not built): "
                             "dataplane never changes it; break or mend it by hand instead")
        act = faults.inject if args.fault_command == "inject" else faults.repair
        print(act(made.plan, args.fault, node=args.node, pod=args.pod, peer=args.peer))
    return 0


def cmd_discover(args: argparse.Namespace) -> int:
    """Exit 1 when the network breaks flannel's rules or a namespace was not placed."""
    from dataplane.cluster import discover, netns
    from dataplane.report import status
    from dataplane.verify import audit

    if args.name is not None and not LABEL.match(args.name):
        raise UsageError(f"--name {args.name!r} cannot name a cluster; use {LABEL_HINT}")
    _need_root("discover")
    names = args.netns or netns.listed(args.prefix)
    if not names:
        raise UsageError(f"no network namespace's name starts with {args.prefix!r}; "
                         "`ip netns list` shows them")
    found = discover.discover(names, args.name, args.cluster_cidr,
                              args.node_files or _node_files(names))
    drift = found.broken + audit.audit(found.plan)
    if args.name:
        lifecycle.adopt(found.plan, source=f"discovered in {', '.join(sorted(names))}")
    shown = {"name": found.plan.name, "attached": bool(args.name), "namespaces": names,
             **status.describe(found.plan),
             "cluster_cidr": {"cidr": str(found.plan.spec.cluster_cidr),
                              "from": found.sources["cluster CIDR"]},
             "unplaced": found.unplaced, "drift": [d.as_dict() for d in drift]}
    print(json.dumps(shown, indent=2) if args.json else _discovered_text(shown))
    return 1 if drift or found.unplaced else 0


def _node_files(names: list[str]) -> Path | None:
    """The node files of the cluster we built in these namespaces, if we did."""
    from dataplane.cluster.nodefiles import NODES_DIR

    for made in lifecycle.inspect_all():
        if isinstance(made, lifecycle.Cluster) and not made.record.attached \
                and set(names) & set(made.record.namespaces):
            return made.record.dir / NODES_DIR
    return None


def _discovered_text(shown: dict) -> str:
    from dataplane.report import status
    from dataplane.records import Drift

    pods = sum(len(node["pods"]) for node in shown["nodes"])
    lines = [f"discovered {shown['name']}: {len(shown['nodes'])} nodes, {pods} pods in "
             f"{len(shown['namespaces'])} namespaces; {status.network_line(shown)} (bridge "
             f"{shown['underlay']['bridge']}); cluster CIDR {shown['cluster_cidr']['cidr']} "
             f"({shown['cluster_cidr']['from']})"]
    lines += status.table(shown, [])
    lines += [f"not placed: {what}" for what in shown["unplaced"]]
    drift = shown["drift"]
    lines += [f"drift: {len(drift)} differences from flannel's rules"] + \
        [f"  {Drift(**d)}" for d in drift] if drift else \
        ["drift: none (the kernel holds what flannel's rules make of these nodes)"]
    if shown["attached"]:
        name = shown["name"]
        lines.append(f"recorded as cluster {name} (attached): `dataplane verify --running "
                     f"{name}` verifies it; `dataplane down {name}` forgets it, leaving its "
                     "namespaces as they are")
    return "\n".join(lines)


COMMANDS = {"up": cmd_up, "status": cmd_status, "down": cmd_down, "clean": cmd_clean,
            "trace": cmd_trace, "send": cmd_send, "doctor": cmd_doctor, "verify": cmd_verify,
            "fault": cmd_fault, "capture": cmd_capture, "discover": cmd_discover}


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised as a KeyboardInterrupt so it unwinds and tears down like Ctrl-C."""


def _terminate(signum: int, frame: object) -> None:
    raise Terminated


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = _parser(argv).parse_args(argv)
    signal.signal(signal.SIGTERM, _terminate)
    try:
        return COMMANDS[args.command](args)
    except UsageError as err:
        print(f"dataplane: {err}", file=sys.stderr)
        return err.exit_code
    except BrokenPipeError:  # the reader went away (`| head`): nothing more to say
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
    except OSError as err:  # the kernel refused something: a failure, not a usage error
        print(f"dataplane {args.command}: {err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt as err:  # the shell's convention: 128 + the signal's number
        signum = signal.SIGTERM if isinstance(err, Terminated) else signal.SIGINT
        print(f"dataplane: interrupted ({signal.Signals(signum).name})", file=sys.stderr)
        return 128 + signum


def run() -> NoReturn:
    """The `dataplane` program: main(), then exit. Its objects are frozen first, out of
    the garbage collector's reach: its last pass over every one of them, as the
    interpreter shuts down, frees nothing the kernel would not (~15 ms of an `up`).
    When nothing is left for the interpreter to run at exit (no exit handler, no other
    thread), the process ends once its output is flushed: tearing down every module it
    imported frees nothing the kernel would not either (~5 ms of a `verify`)."""
    status = main()
    gc.freeze()
    threading = sys.modules.get("threading")
    if atexit._ncallbacks() == 0 and (threading is None or threading.active_count() == 1):
        try:
            if sys.stdout is not None:  # None: started with stdout closed
                sys.stdout.flush()
        except BrokenPipeError:  # the reader went away: as main() answers it
            status = 1
        if sys.stderr is not None:
            sys.stderr.flush()
        os._exit(status)
    sys.exit(status)


if __name__ == "__main__":
    run()
