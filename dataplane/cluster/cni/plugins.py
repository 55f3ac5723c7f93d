"""Run CNI plugins as the CNI spec has a runtime run them.

The command (ADD, CHECK, DEL), the container id, the pod's namespace, the interface
name and the plugin search path go in the environment; the network configuration
goes on stdin; ADD's result comes back on stdout as JSON. A plugin that fails exits
non-zero with an error object on stdout, which is shown as it came. Plugins run in
the node's namespace (nsexec), so what they make on the host side lands there.
"""

from __future__ import annotations

import json
import os
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dataplane.cluster import nsexec
from dataplane.cluster.spec import Cni
from dataplane.errors import UsageError

CNI_VERSION = "1.0.0"  # CHECK needs 0.4.0 or later
SYSTEM_PATH = Path("/usr/lib/cni")  # Debian's containernetworking-plugins
TIMEOUT = 60.0  # seconds a plugin may take before it counts as hung
INSTALL_HINT = ("install Debian's containernetworking-plugins (apt-get install "
                "containernetworking-plugins, or `make setup`)")


class PluginError(UsageError):
    """A plugin refused: `bridge ADD node-0/pod-1: {"code": 11, "msg": ...}`."""


@dataclass(frozen=True)
class Call:
    """Who a plugin is run for, and where."""

    node_netns: str  # the plugin runs here: cni0 and host veths belong to the node
    pod: str  # NODE/POD, for messages
    container_id: str
    sandbox: Path  # CNI_NETNS: the pod's namespace file
    ifname: str


def search_path(cni: Cni) -> list[Path]:
    """CNI_PATH: the user's own plugin builds first, then the system's."""
    return ([cni.path] if cni.path else []) + [SYSTEM_PATH]


def find(plugin: str, path: list[Path]) -> Path | None:
    """The executable named plugin in the first directory of path holding one."""
    for folder in path:
        candidate = folder / plugin
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return candidate
    return None


def require(plugins: list[str], cni: Cni) -> None:
    """Refuse, before anything is built, to wire pods with plugins that are not there."""
    if cni.path and not cni.path.is_dir():
        raise UsageError(f"cni.path: {cni.path} is not a directory; point it at the folder "
                         "holding your plugin builds")
    path = search_path(cni)
    for plugin in plugins:
        if find(plugin, path) is None:
            raise UsageError(f"CNI plugin {plugin} is in none of {_joined(path)}; {INSTALL_HINT}")


def invoke(plugin: str, command: str, config: dict[str, Any], call: Call,
           path: list[Path]) -> dict[str, Any] | None:
    """Run plugin for call; ADD's parsed result (None for CHECK and DEL)."""
    binary = find(plugin, path)
    where = f"{plugin} {command} {call.pod}"
    if binary is None:
        raise PluginError(f"{where}: not found in {_joined(path)}; {INSTALL_HINT}")
    env = {"PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin"),
           "CNI_COMMAND": command, "CNI_CONTAINERID": call.container_id,
           "CNI_NETNS": str(call.sandbox), "CNI_IFNAME": call.ifname,
           "CNI_PATH": _joined(path)}
    try:
        done = nsexec.run(call.node_netns, [str(binary)], stdin=json.dumps(config), env=env,
                          timeout=TIMEOUT)
    except subprocess.TimeoutExpired:
        raise PluginError(f"{where}: no answer within {TIMEOUT:.0f} s; the plugin hangs") \
            from None
    if done.returncode != 0:
        raise PluginError(f"{where}: {_complaint(done)}")
    if command != "ADD":
        return None
    try:
        result = json.loads(done.stdout)
    except ValueError:
        raise PluginError(f"{where}: its result is not JSON: {_one_line(done.stdout)!r}") \
            from None
    if not isinstance(result, dict):
        raise PluginError(f"{where}: its result is not a JSON object: {_one_line(done.stdout)}")
    return result


def _complaint(done: subprocess.CompletedProcess) -> str:
    """What a failed plugin said, on one line: its error object as it came (compacted), or
    its last words on stderr, or its exit status."""
    try:
        return json.dumps(json.loads(done.stdout))
    except ValueError:
        pass
    said = _one_line(done.stdout) or _one_line(done.stderr)
    return said or f"exit status {done.returncode} and no error object"


def _one_line(text: str) -> str:
    return " ".join(text.split())


def _joined(path: list[Path]) -> str:
    return ":".join(str(p) for p in path)
