"""What the benchmarks share: running this tree's CLI as a whole process, timing it,
and printing figures against their baselines and targets, then the exit status."""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# The CLI of this tree (a worktree too), run by the interpreter running the benchmark.
DP = [sys.executable, "-m", "dataplane"]
ENV = {**os.environ, "PYTHONPATH": str(ROOT)}


@dataclass(frozen=True)
class Run:
    seconds: float
    peak_rss_kb: int  # its own peak, or its children's and its memory together if more
    stdout: str


def timed(argv: list[str], check: bool = True, **env: str) -> Run:
    """Wall time, peak RSS and output of one whole process (env: variables to add). The
    kernel keeps the peak RSS of each process; a run whose workers are its children holds
    their memory too, so the proportional set size (shared pages split between the
    processes that map them) of the process and its children is summed every 100 ms, and
    the larger figure is kept."""
    start = time.perf_counter()
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, text=True, env={**ENV, **env})
    peak = [0]
    sampler = threading.Thread(target=_sample_rss, args=(proc, peak), daemon=True)
    sampler.start()
    out = proc.stdout.read()
    _, status, usage = os.wait4(proc.pid, 0)
    elapsed = time.perf_counter() - start
    sampler.join()
    code = os.waitstatus_to_exitcode(status)
    if check and code != 0:
        raise SystemExit(f"{' '.join(argv)} failed with exit code {code}:\n{out[-2000:]}")
    return Run(elapsed, max(usage.ru_maxrss, peak[0]), out)


def _sample_rss(proc: subprocess.Popen, peak: list[int]) -> None:
    while Path(f"/proc/{proc.pid}").exists():  # until wait4 reaps it
        pids = [str(proc.pid)]
        for task in Path(f"/proc/{proc.pid}/task").glob("*/children"):
            try:
                pids += task.read_text().split()
            except OSError:
                pass
        peak[0] = max(peak[0], sum(_pss_kb(pid) for pid in pids))
        time.sleep(0.1)


def _pss_kb(pid: str) -> int:
    try:
        rollup = Path(f"/proc/{pid}/smaps_rollup").read_text()
    except OSError:
        return 0
    found = [line.split()[1] for line in rollup.splitlines() if line.startswith("Pss:")]
    return int(found[0]) if found else 0


def summary_line(stdout: str) -> str:
    """A verify's summary ("N flows: ... passed, ..."), and where its time went."""
    lines = stdout.splitlines()
    found = [line for line in lines if " flows: " in line and " passed, " in line]
    spent = [line for line in lines if line.startswith("time: ")]
    return "; ".join(found[-1:] + spent[-1:]) or "no summary"


def median_ratio(numerators: list[float], denominators: list[float]) -> float:
    """The median of per-run ratios: each run's two figures are seconds apart, so their
    ratio is steadier on a shared machine than the ratio of two medians."""
    return statistics.median(n / d for n, d in zip(numerators, denominators))


def ms(seconds: list[float]) -> str:
    return f"{statistics.median(seconds) * 1000:7.0f} ms"


@dataclass
class Targets:
    """Figures are printed as they come; missed targets are named at the end, and
    make the exit status 1."""

    missed: list[str] = field(default_factory=list)

    def check(self, line: str, met: bool) -> None:
        print(line + ("" if met else "   MISSED"))
        if not met:
            self.missed.append(line.strip())

    def exit_status(self, name: str) -> int:
        if self.missed:
            print(f"{name}: {len(self.missed)} target(s) missed:")
            for line in self.missed:
                print(f"  {line}")
            return 1
        print(f"{name}: every target met")
        return 0

    def ratio(self, name: str, numerators: list[float], denominators: list[float],
              at_least: float) -> float:
        """Print and check the median of the runs' ratios numerator / denominator."""
        value = median_ratio(numerators, denominators)
        self.check(f"  ratio {name} = {value:.2f}x, median of {len(numerators)} per-run "
                   f"ratios (target >= {at_least})", value >= at_least)
        return value
