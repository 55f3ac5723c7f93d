"""The VM lane's suite, run as root in each guest (by vm/guest-run) with the checkout on
PYTHONPATH: `doctor`, the kprobe tests, then one cluster of the default topology and one
loaded Verifier (bcc compiles once: under QEMU/TCG a compile takes a minute) for a
`verify` with every protocol and the DF probes, healthy and then under each public fault
in turn, each fault repaired (and the repair audited clean) before the next.
Writes what it found as JSON to OUT for the host (vm/matrix.py compares the kernels) and
a line per run on the console. Runs on every guest's Python, 3.9 (Debian 11) on.
  python3 vm/suite.py OUT
"""

import json
import os
import platform
import re
import subprocess
import sys
import time
import traceback

from dataplane.bpf import kernel
from dataplane.bpf import loader as probes
from dataplane.cluster import faults
from dataplane.cluster import lifecycle as cluster
from dataplane.verify import audit, caches
from dataplane.verify import verifier as verify

# The kprobe tests, and the plugin's skip test (it needs a kernel with kprobes too). Not
# test_verify_passes_then_fails_at_the_fault: the runs below verify the same cluster healthy
# and with that fault (vm/matrix.py checks where it fails), without its two probe loads
# (two minutes under TCG).
TESTS = ["tests/test_kprobes.py", "tests/test_plugin.py::test_capability_markers_skip_with_the_fix",
         "--deselect", "tests/test_kprobes.py::test_verify_passes_then_fails_at_the_fault"]


def doctor():
    done = subprocess.run([sys.executable, "-m", "dataplane", "doctor"], capture_output=True,
                          text=True)
    print(done.stdout + done.stderr, end="", flush=True)
    return {"rc": done.returncode, "facts": {f.name: f.value for f in kernel.facts()}}


def tests():
    """The kprobe tests, on the console; a skip here is a failure (this kernel has kprobes)."""
    began = time.monotonic()
    lines = []
    with subprocess.Popen([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-v",
                           "-rs", "--durations=0", *TESTS],
                          stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True) as pytest:
        for line in pytest.stdout:  # on the console as it comes: the host follows it
            print(line, end="", flush=True)
            lines.append(line.strip())
    summary = ([line for line in lines if line] or [""])[-1]
    counts = {word: int(n) for n, word in re.findall(r"(\d+) (passed|failed|skipped|error)",
                                                        summary)}
    return {"rc": pytest.returncode, "summary": summary.strip("= "), "counts": counts,
            "seconds": round(time.monotonic() - began, 1)}


def flows(report):
    return [{"src": f.src, "dst": f.dst, "proto": f.proto, "size": f.size, "verdict": f.verdict,
             "rule": f.rule, "cause": [str(c) for c in f.cause],
             "diagnosis": f.diagnosis if not f.passed else "",
             "last_at": (f.last_hop or {}).get("at")} for f in report.flows]


def verify_runs(plan, verifier):
    runs = []
    for name in [None, *faults.FAULTS]:
        began = time.monotonic()
        caches.reset(plan)  # as a fresh verify does: nothing an earlier run left sways this one
        what = faults.inject(plan, name) if name else "healthy"
        lost_before = verifier.lost
        report = verify.run(plan, verifier=verifier, keep_hops=False)
        run = {"fault": name or "healthy", "injected": what, "flows": flows(report),
               "drift": [str(d) for d in report.drift], "lost": verifier.lost - lost_before,
               "passed": report.count("PASS"), "failed": report.count("FAIL"),
               "inconclusive": report.count("INCONCLUSIVE")}
        if name:
            faults.repair(plan, name)
            left = audit.audit(plan)
            if left:
                run["error"] = f"the repair left drift: {'; '.join(map(str, left))}"
        run["seconds"] = round(time.monotonic() - began, 1)
        runs.append(run)
        print(f"verify {run['fault']:15} {len(run['flows'])} flows: {run['passed']} passed, "
              f"{run['failed']} failed, {run['inconclusive']} inconclusive; drift "
              f"{len(run['drift'])}; lost {run['lost']}; {run['seconds']} s"
              + (f"; {run['error']}" if "error" in run else ""), flush=True)
        if "error" in run:
            break  # the next runs would judge a damaged cluster
    return runs


def main():
    out = sys.argv[1]
    result = {"kernel": kernel.release(), "python": platform.python_version(),
              "bcc": kernel.bcc_version(), "btf": os.path.exists("/sys/kernel/btf/vmlinux")}
    began = time.monotonic()
    try:
        result["doctor"] = doctor()
        if "--no-tests" not in sys.argv:
            result["tests"] = tests()
        with cluster.temporary(cluster.read(name="vm-suite")) as made:
            loading = time.monotonic()
            with verify.Verifier(made.plan) as verifier:
                result["load_seconds"] = round(time.monotonic() - loading, 1)
                # with the cluster up, its bridge and VXLAN modules are loaded
                result["kprobe_functions"] = kernel.kprobe_functions()
                print(f"kprobe functions with a cluster up: {result['kprobe_functions']}",
                      flush=True)
                result["backends"] = verifier.backends
                result["probes"] = verifier.origin  # compiled by an earlier load: cached
                result["skipped"] = verifier.skipped
                result["attached"] = [n for n in kernel.KPROBE_SYMBOLS
                                      if f"kprobe:{n}" not in verifier.skipped
                                      and "kprobes" not in verifier.skipped]
                result["buffer"] = ("ring" if probes.ring_buffer_supported(kernel.release())
                                    else "perf")
                result["runs"] = verify_runs(made.plan, verifier)
    except Exception as err:  # reported to the host, which fails the lane
        traceback.print_exc()
        result["error"] = repr(err)
    result["seconds"] = round(time.monotonic() - began, 1)
    with open(out, "w") as f:
        json.dump(result, f)
        f.flush()
        os.fsync(f.fileno())
    print(f"suite: {result['seconds']} s" + (f"; error: {result['error']}"
                                               if "error" in result else ""), flush=True)


if __name__ == "__main__":
    main()
