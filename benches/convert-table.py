#!/usr/bin/env python3
"""The markdown table of benches/convert.sh: medians per source, output, cache and tool,
the speed-up of imgblk over qemu-img and whether the goals of issue 29 are met.

Usage: convert-table.py RUNS.tsv ROUNDS SIZE_GIB
"""
import collections
import platform
import statistics
import subprocess
import sys

rows = [line.split("\t") for line in open(sys.argv[1]).read().splitlines()]
rounds, size = sys.argv[2], sys.argv[3]
runs = collections.defaultdict(list)
for src, fmt, cache, tool, secs, rss in rows:
    runs[(src, fmt, cache, tool)].append((float(secs), int(rss)))
qemu = subprocess.run(["qemu-img", "--version"], capture_output=True, text=True)
cpus = subprocess.run(["nproc"], capture_output=True, text=True).stdout.strip()
print(f"Sources: {size} GiB virtual each; medians of up to {rounds} rounds (n = runs "
      f"per tool); {qemu.stdout.splitlines()[0]}; {platform.machine()}, {cpus} CPUs.\n")
print("| source | output | cache | n | imgblk s | qemu-img s | speed-up | goal "
      "| imgblk RSS MiB | qemu-img RSS MiB | RSS ≤ 64 MiB |")
print("|---|---|---|---|---|---|---|---|---|---|---|")
for src in ["zstd.qcow2", "zlib.qcow2", "plain.qcow2", "top.qcow2"]:
    goal = 2.0 if src in ("zstd.qcow2", "zlib.qcow2") else 1.3
    for fmt in ["raw", "qcow2"]:
        for cache in ["warm", "cold"]:
            ours = runs[(src, fmt, cache, "imgblk")]
            theirs = runs[(src, fmt, cache, "qemu-img")]
            if not ours or not theirs:
                continue
            t1 = statistics.median(s for s, _ in ours)
            t2 = statistics.median(s for s, _ in theirs)
            r1 = max(r for _, r in ours) / 1024
            r2 = max(r for _, r in theirs) / 1024
            x = t2 / t1 if t1 else float("inf")
            met = "met" if x >= goal else f"missed: {x / goal:.0%} of {goal}x"
            rss = "met" if r1 <= 64 else f"missed by {r1 - 64:.0f} MiB"
            n = min(len(ours), len(theirs))
            print(f"| {src} | {fmt} | {cache} | {n} | {t1:.2f} | {t2:.2f} | {x:.2f}x | {met} "
                  f"| {r1:.0f} | {r2:.0f} | {rss} |")
