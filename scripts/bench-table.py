#!/usr/bin/env python3
"""Prints scripts/bench-vs-etcd.sh's results (kv-bench JSON reports in DIR, named
SYSTEM-RUN.json) as one Markdown table: per run, etcd's and Flotilla's throughput and
p99, and Flotilla's ratios to etcd; then Flotilla's runs that etcd has no counterpart
for (transactions, the single store)."""

import json
import pathlib
import sys


def load(path):
    r = json.loads(path.read_text())
    if not r["ops"]:
        total = {"ops_per_sec": 0.0, "p50_us": 0, "p99_us": 0}
    else:
        total = next(l for l in r["ops"] if l["op"] == "total") if len(r["ops"]) > 1 else r["ops"][0]
    errors = sum(sum(l["errors"].values()) for l in r["ops"] if l["op"] != "total")
    return {
        "ops": total["ops_per_sec"],
        "p50": total["p50_us"] / 1000,
        "p99": total["p99_us"] / 1000,
        "errors": errors,
        "fsyncs": r.get("fsyncs_per_write"),
        "incomplete": r.get("incomplete"),
    }


def cell(r):
    if r is None:
        return "–", "–"
    note = f" ({r['errors']} errors)" if r["errors"] else ""
    if r["incomplete"]:
        note += " (incomplete)"
    return f"{r['ops']:,.0f}{note}", f"{r['p99']:.1f}"

# The systems bench-vs-etcd.sh names its reports after; other files in OUT are not ours.
SYSTEMS = ("etcd", "flotilla", "single")


def main():
    out = pathlib.Path(sys.argv[1] if len(sys.argv) > 1 else "bench-results")
    runs = {}
    for p in sorted(out.glob("*-*.json")):
        system, _, run = p.stem.partition("-")
        if system not in SYSTEMS:
            continue
        runs.setdefault(run, {})[system] = load(p)
    order = ["load", "write-only", "ycsb-c", "ycsb-a", "ycsb-b", "ycsb-e"]
    side = [r for r in order if r in runs] + sorted(
        r for r in runs if r not in order and "etcd" in runs[r]
    )
    print("| workload | etcd ops/s | etcd p99 ms | Flotilla ops/s | Flotilla p99 ms | throughput ratio | p99 ratio |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    for run in side:
        e, f = runs[run].get("etcd"), runs[run].get("flotilla")
        ratio = f"{f['ops'] / e['ops']:.2f}x" if e and f and e["ops"] else "–"
        p99 = f"{f['p99'] / e['p99']:.2f}" if e and f and e["p99"] else "–"
        print(f"| {run} | {' | '.join(cell(e))} | {' | '.join(cell(f))} | {ratio} | {p99} |")
    rest = [(s, run, r) for run, by in sorted(runs.items()) for s, r in sorted(by.items())
            if run not in side or s not in ("etcd", "flotilla")]
    if rest:
        print()
        print("| system | run | ops/s | p50 ms | p99 ms | fsyncs per write |")
        print("| --- | --- | ---: | ---: | ---: | ---: |")
        for s, run, r in rest:
            fs = f"{r['fsyncs']:.3f}" if r["fsyncs"] is not None else "–"
            print(f"| {s} | {run} | {cell(r)[0]} | {r['p50']:.1f} | {r['p99']:.1f} | {fs} |")


if __name__ == "__main__":
    main()
