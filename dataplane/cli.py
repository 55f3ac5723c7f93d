"""The `dataplane` command. Exit 0 ok, 1 failure, 2 usage or environment error."""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys

from dataplane import cluster, spec, state
from dataplane.errors import UsageError

DEFAULT_TOPOLOGY = "topologies/flannel-vxlan.toml"


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
    p = sub.add_parser("status", help="show running clusters")
    p.add_argument("name", nargs="?", help="one cluster (default: all)")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p = sub.add_parser("down", help="tear a running cluster down")
    p.add_argument("name")
    sub.add_parser("clean", help="remove every cluster an earlier run left behind")
    return parser


def _need_root(command: str) -> None:
    if os.geteuid() != 0:
        raise UsageError(f"`dataplane {command}` needs root to manage network namespaces; "
                         f"run it as root (sudo dataplane {command} ...)")


def cmd_up(args: argparse.Namespace) -> int:
    spec.load(args.topology, name=args.name)  # report a bad file before asking for root
    _need_root("up")
    made = cluster.up(args.topology, name=args.name)
    made.record.release()  # it outlives this process; `down` or `clean` removes it
    n_pods = len(made.plan.pods())
    print(f"cluster {made.name} is up: {len(made.plan.nodes)} nodes, {n_pods} pods "
          f"(namespaces {made.plan.prefix}.*); `dataplane status {made.name}` shows it, "
          f"`dataplane down {made.name}` removes it")
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    from dataplane import status

    names = [args.name] if args.name else [r.name for r in state.records() if r.namespaces]
    shown = [status.as_dict(cluster.attach(name)) for name in names]
    if args.json:
        print(json.dumps(shown[0] if args.name else {"clusters": shown}, indent=2))
    elif not shown:
        print("no cluster is up")
    else:
        print("\n\n".join(status.as_text(s) for s in shown))
    return 0


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


COMMANDS = {"up": cmd_up, "status": cmd_status, "down": cmd_down, "clean": cmd_clean}


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
