"""Run a program inside one of our network namespaces, as `ip netns exec` does.

The program runs in a child made by nsenter(1), which setns()es into the namespace
before it execs: the calling process and its threads never leave their own
namespace, and no Python runs between fork and exec (a preexec_fn would, in a
process that may have other threads).
"""

from __future__ import annotations

import subprocess
from collections.abc import Mapping, Sequence
from pathlib import Path

from dataplane.cluster import netns

NSENTER = "nsenter"  # util-linux, on every Debian system


def run(name: str, argv: Sequence[str], *, stdin: str | None = None,
        env: Mapping[str, str] | None = None, cwd: Path | None = None,
        timeout: float | None = None) -> subprocess.CompletedProcess:
    """argv run in namespace name; its output captured as text. OSError if it cannot
    start, subprocess.TimeoutExpired when it overruns timeout (the child is killed)."""
    return subprocess.run([NSENTER, f"--net={netns.path(name)}", "--", *argv], input=stdin,
                          capture_output=True, text=True, env=env, cwd=cwd, timeout=timeout)
