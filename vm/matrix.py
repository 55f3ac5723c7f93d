"""The VM lane's verdict on its kernels: reads what vm/suite.py wrote in each guest
(RELEASE.json, with RELEASE.seconds from vm/run.sh beside it), prints the matrix (a row
per kernel) and compares the verdicts of every flow, healthy and under each fault, across
the kernels. Exits 1 when a guest failed or did not finish, a kprobe test failed or
skipped, a fault was not caught, a healthy flow did not pass, or a flow's verdict, rule or
cause differs between two kernels (a kernel that lacks a probe may say INCONCLUSIVE, with
the reason, where another says PASS or FAIL: that is listed, not failed).
  python3 vm/matrix.py DIR RELEASE...
"""

import json
import sys
from pathlib import Path


def load(where: Path, release: str) -> dict:
    try:
        result = json.loads((where / f"{release}.json").read_text())
    except (OSError, ValueError) as err:
        result = {"error": f"no result from the guest ({err.__class__.__name__})"}
    try:
        result["wall"] = float((where / f"{release}.seconds").read_text())
    except (OSError, ValueError):
        result["wall"] = None
    return result


def problems(release: str, r: dict) -> list[str]:
    found = []
    if "error" in r:
        found.append(f"{release}: {r['error']}")
    tests = r.get("tests")
    if tests is None:
        found.append(f"{release}: the kprobe tests did not run")
    elif tests["rc"] != 0 or tests["counts"].get("skipped"):
        found.append(f"{release}: kprobe tests: {tests['summary']}"
                     + (" (a skip proves nothing on a kernel with kprobes)"
                        if tests["counts"].get("skipped") else ""))
    if r.get("doctor", {}).get("rc", 0) != 0:
        found.append(f"{release}: doctor exited with {r['doctor']['rc']}")
    runs = r.get("runs", [])
    for run in runs:
        if "error" in run:
            found.append(f"{release}: {run['fault']}: {run['error']}")
        elif run["fault"] == "healthy" and (run["passed"] != len(run["flows"]) or run["drift"]):
            found.append(f"{release}: healthy: {run['passed']} of {len(run['flows'])} flows "
                         f"passed, drift {run['drift']}")
        elif run["fault"] != "healthy" and not run["failed"]:
            found.append(f"{release}: fault {run['fault']} not caught: no flow failed")
    # test_kprobes' fault check, which the guest leaves to these runs: the flow across the
    # missing FDB entry fails on the node that lacks it.
    fdb = next((run for run in runs if run["fault"] == "missing-fdb"), None)
    flow = next((f for f in fdb["flows"] if (f["src"], f["dst"], f["proto"], f["size"])
                 == ("node-0/pod-0", "node-1/pod-1", "icmp", None)), None) if fdb else None
    if fdb and "error" not in fdb and (flow is None or flow["verdict"] != "FAIL"
                                       or flow.get("last_at") != "node-0"):
        found.append(f"{release}: missing-fdb: icmp node-0/pod-0 -> node-1/pod-1 did not fail "
                     f"at node-0: {flow}")
    if r.get("doctor") and len(runs) < 2:
        found.append(f"{release}: verify ran {len(runs)} of the runs")
    return found


def compare(results: dict[str, dict]) -> tuple[list[str], list[str], int]:
    """(differences that fail the lane, INCONCLUSIVE where another kernel judged, flows
    compared)."""
    verdicts: dict[tuple, dict[str, dict]] = {}
    for release, r in results.items():
        for run in r.get("runs", []):
            for f in run["flows"]:
                key = (run["fault"], f["proto"], f["size"], f["src"], f["dst"])
                verdicts.setdefault(key, {})[release] = f
    differ, unjudged = [], []
    for key, by in verdicts.items():
        fault, proto, size, src, dst = key
        what = f"{fault}: {proto}{'/' + str(size) if size else ''} {src} -> {dst}"
        judged = {rel: (f["verdict"], f["rule"], tuple(f["cause"])) for rel, f in by.items()
                  if f["verdict"] != "INCONCLUSIVE"}
        for rel, f in by.items():
            if f["verdict"] == "INCONCLUSIVE" and judged:
                unjudged.append(f"{what}: INCONCLUSIVE on {rel} ({f['rule']}: "
                                f"{f['diagnosis']})")
        if len(set(judged.values())) > 1:
            differ.append(f"{what}: " + "; ".join(
                f"{rel} {v[0]} [{v[1]}]" + (f" cause: {' | '.join(v[2])}" if v[2] else "")
                for rel, v in judged.items()))
        missing = set(results) - set(by)
        if missing and all("runs" in results[m] for m in missing):
            differ.append(f"{what}: not verified on {', '.join(sorted(missing))}")
    return differ, unjudged, len(verdicts)


def kprobes(r: dict) -> str:
    if "attached" not in r:
        return "?"
    if "kprobes" in r.get("skipped", {}):
        return "none (no kprobes)"
    missing = [s for s in r.get("skipped", {}) if s.startswith("kprobe:")]
    return f"{len(r['attached'])} of {len(r['attached']) + len(missing)}"


def row(release: str, r: dict) -> list[str]:
    facts = r.get("doctor", {}).get("facts", {})
    runs = r.get("runs", [])
    healthy = next((run for run in runs if run["fault"] == "healthy"), None)
    fault_runs = [run for run in runs if run["fault"] != "healthy"]
    skipped = sorted(k.split(":", 1)[-1] for k in r.get("skipped", {}))
    tests = r.get("tests", {}).get("counts", {})
    return [
        f"{r.get('kernel', '?')} ({release})",
        r.get("python", "?"), r.get("bcc", "?"),
        kprobes(r),
        ", ".join(skipped) or "none",
        "+".join(r.get("backends", [])) or "?",
        r.get("buffer", "?"),
        f"{r['probes']} {r['load_seconds']} s" if "probes" in r else "?",
        "yes" if r.get("btf") else "no",
        facts.get("drop reasons", "?").split(" ")[0],
        " ".join(f"{n} {w}" for w, n in tests.items()) or "?",
        f"{healthy['passed']}/{len(healthy['flows'])}" if healthy else "?",
        f"{sum(1 for run in fault_runs if run['failed'])}/{len(fault_runs)}",
        str(sum(run["lost"] for run in runs)),
        f"{r['wall']:.0f} s" if r.get("wall") is not None else "?",
    ]


HEADER = ["kernel", "python", "bcc", "kprobes attached", "skipped", "backends", "buffer",
          "probes", "BTF", "drop reasons", "kprobe tests", "flows passed", "faults caught",
          "lost events", "guest time"]


def table(rows: list[list[str]]) -> str:
    widths = [max(len(r[i]) for r in [HEADER, *rows]) for i in range(len(HEADER))]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(r, widths)).rstrip()
                     for r in [HEADER, *rows])


def main() -> int:
    where, releases = Path(sys.argv[1]), sys.argv[2:]
    results = {release: load(where, release) for release in releases}
    print(table([row(release, r) for release, r in results.items()]))
    for release, r in results.items():
        for probe, why in sorted(r.get("skipped", {}).items()):
            print(f"{release}: skipped {probe}: {why}")
        for name, value in (("tracepoints", r.get("doctor", {}).get("facts", {})
                             .get("tracepoints")),
                            ("kprobe functions", r.get("kprobe_functions"))):
            if value and "missing" in value:
                print(f"{release}: doctor: {name}: {value}")
    failed = [p for release, r in results.items() for p in problems(release, r)]
    differ, unjudged, compared = compare(results)
    for line in unjudged:
        print(f"inconclusive: {line}")
    if len(results) > 1:
        runs = max((len(r.get("runs", [])) for r in results.values()), default=0)
        if differ:
            print(f"verdicts DIFFER between the kernels ({len(differ)} of {compared} flows):")
            for line in differ[:30]:
                print(f"  {line}")
            if len(differ) > 30:
                print(f"  ... and {len(differ) - 30} more")
        else:
            print(f"verdicts: the same on every kernel ({compared} flows in {runs} runs: "
                  f"verdict, rule and cause)")
    for line in failed:
        print(f"FAILED: {line}")
    return 1 if failed or differ else 0


if __name__ == "__main__":
    sys.exit(main())
