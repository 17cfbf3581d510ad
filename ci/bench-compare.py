#!/usr/bin/env python3
"""Two ci/bench reports of the same rows side by side, for reproducibility: every measured
cell of A and B and their difference (B/A - 1), as a markdown table on stdout.
Usage: bench-compare.py A.json B.json"""
import json
import sys

a, b = (json.load(open(p)) for p in sys.argv[1:3])
TARGETS = ["imgblk-q1", "imgblk-q2", "qemu-nbd", "rublk", "loop"]


def rows(report):
    """{(row name, target): value} of the cells that hold a number."""
    out = {}
    for r in report["results"]:
        name = " ".join(x for x in (r.get("format"), r["workload"], f"({r['unit']})") if x)
        for t in TARGETS:
            if isinstance(r.get(t), (int, float)):
                out[(name, t)] = float(r[t])
    return out


ra, rb = rows(a), rows(b)
print("| row | target | run A | run B | B/A - 1 |")
print("|---|---|---:|---:|---:|")
worst = 0.0
for key in ra:
    if key not in rb or not ra[key]:
        continue
    diff = rb[key] / ra[key] - 1
    worst = max(worst, abs(diff))
    print(f"| {key[0]} | {key[1]} | {ra[key]:,.2f} | {rb[key]:,.2f} | {diff:+.1%} |")
print()
print("| goal | run A | run B | B/A - 1 |")
print("|---|---:|---:|---:|")
for ga, gb in zip(a["goals"], b["goals"]):
    if ga["measured"] is None or gb["measured"] is None:
        continue
    diff = gb["measured"] / ga["measured"] - 1
    print(f"| {ga['goal']} | {ga['measured']:.3f} | {gb['measured']:.3f} | {diff:+.1%} |")
print()
print(f"Largest difference of a cell: {worst:.1%}")
