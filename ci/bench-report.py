#!/usr/bin/env python3
"""ci/bench's report: turns the device half's raw.json (one JSON object a line) into
PREFIX.md and PREFIX.json. Usage: bench-report.py RAW.json PREFIX; bench-report.py
--goal-rows prints the rows the goals are read from, "FMT WORKLOAD" a line."""
import datetime
import json
import os
import statistics
import sys

# Set by `ci/bench --deterministic` (the icount shift): the table is counted in
# instructions, and its goals are issue 32's.
DETERMINISTIC = os.environ.get("BENCH_DETERMINISTIC", "")
# The goals on the ratio rows: (goal, row, peer, peer's row, op, wanted). The ratio is
# imgblk's row against the peer's row (>1 when imgblk is better); ">=" wants at least
# that, "time <=" wants imgblk's time at most that many times the peer's.
if DETERMINISTIC:
    RATIO_GOALS = [
        ("qcow2 randread 4k QD32x2, imgblk/rublk", "qcow2 randread-4k-qd32x2", "rublk", None, ">=", 1.5),
        ("qcow2 randread 4k QD32x2, imgblk (qcow2) / loop (raw)", "qcow2 randread-4k-qd32x2", "loop",
         "raw randread-4k-qd32x2", ">=", 0.8),
        ("qcow2 randread 4k QD1, imgblk/qemu-nbd", "qcow2 randread-4k-qd1", "qemu-nbd", None, ">=", 2.0),
        ("qcow2 randread 4k QD1, imgblk/rublk", "qcow2 randread-4k-qd1", "rublk", None, ">=", 1.2),
        ("e2fsck -fn, imgblk (qcow2) time / loop (raw) time", "qcow2 e2fsck", "loop", None, "time <=", 1.05),
    ]
else:
    RATIO_GOALS = [
        ("qcow2 randread 4k QD32x2, imgblk/qemu-nbd", "qcow2 randread-4k-qd32x2", "qemu-nbd", None, ">=", 4.0),
        ("qcow2 randread 4k QD32x2, imgblk/rublk", "qcow2 randread-4k-qd32x2", "rublk", None, ">=", 1.3),
        ("qcow2 randread 4k QD1, imgblk/qemu-nbd", "qcow2 randread-4k-qd1", "qemu-nbd", None, ">=", 1.5),
        ("raw seqread 1M, imgblk/loop", "raw seqread-1m", "loop", None, ">=", 0.9),
        ("e2fsck -fn, qemu-nbd time / imgblk time", "qcow2 e2fsck", "qemu-nbd", None, ">=", 1.5),
    ]
# issue 32's rows (ci/bench-device.sh's zstd, luks, alloc and large sections), in both
# kinds of table: each against its peer in the same run.
RATIO_GOALS += [
    ("zstd-compressed qcow2 randread 4k QD1, imgblk/qemu-nbd", "qcow2-zstd randread-4k-qd1",
     "qemu-nbd", None, ">=", 3.0),
    ("LUKS2 in qcow2 randread 4k QD1, imgblk/(qemu-nbd + dm-crypt)", "qcow2-luks2 randread-4k-qd1",
     "qemu-nbd", None, ">=", 1.0),
    ("LUKS2 in qcow2 randread 4k QD32x2, imgblk/(qemu-nbd + dm-crypt)",
     "qcow2-luks2 randread-4k-qd32x2", "qemu-nbd", None, ">=", 1.0),
    ("allocating randwrite 4k QD1 (fresh qcow2), imgblk/qemu-nbd", "qcow2-fresh randwrite-4k-qd1",
     "qemu-nbd", None, ">=", 3.0),
    ("allocating randwrite 4k QD32 (fresh qcow2), imgblk/qemu-nbd", "qcow2-fresh randwrite-4k-qd32",
     "qemu-nbd", None, ">=", 3.0),
    ("e2fsck -fn, 1 TiB sparse qcow2 on a disk, cold: qemu-nbd time / imgblk time",
     "qcow2-1t-cold e2fsck", "qemu-nbd", None, ">=", 2.0),
]
# ... and on the daemon's peak RSS: (goal, target, MiB at most).
RSS_GOALS = [
    ("daemon peak RSS, imgblk q1 (MiB)", "imgblk-q1", 64.0),
    ("daemon peak RSS, imgblk q2 (MiB)", "imgblk-q2", 64.0),
]
if sys.argv[1:] == ["--goal-rows"]:
    # For bench-device.sh, which gives these rows more rounds.
    print("\n".join(dict.fromkeys(r for _, row, _, peer_row, _, _ in RATIO_GOALS
                                   for r in (row, peer_row) if r)))
    sys.exit(0)

raw_path, prefix = sys.argv[1], sys.argv[2]
rows = [json.loads(line) for line in open(raw_path) if line.strip()]
env = next((r for r in rows if r.get("kind") == "env"), {})
TARGETS = ["imgblk-q1", "imgblk-q2", "qemu-nbd", "rublk", "loop"]
# The targets imgblk is compared against, one ratio column each.
PEERS = ("qemu-nbd", "rublk", "loop")
WORKLOADS = [
    ("randread-4k-qd1", "IOPS"),
    ("randread-4k-qd32x2", "IOPS"),
    ("seqread-1m", "MiB/s"),
    ("randwrite-4k-qd1", "IOPS"),
    ("randwrite-4k-qd32", "IOPS"),
]
# The rows' image sets, as bench-device.sh names them; the device table's own two always
# get a row, issue 32's only when they were run.
FORMATS = ["raw", "qcow2", "qcow2-zstd", "qcow2-luks2", "qcow2-fresh", "qcow2-1t-cold"]


def not_measured(why):
    why = str(why or "")
    return why if why.startswith("n/a") else "n/a: " + why


def median_or_why(values, whys):
    """The median of the rounds' values; else why there is none; None if never run."""
    if values:
        return round(statistics.median(values), 2)
    return not_measured(whys[0]) if whys else None


def fio_runs(fmt, workload, target):
    return [r for r in rows if (r.get("kind"), r.get("format"), r.get("workload"),
                                r.get("target")) == ("fio", fmt, workload, target)]


def fio_result(workload, run):
    unit = dict(WORKLOADS)[workload]
    return run["result"]["bw_mib"] if unit == "MiB/s" else run["result"]["iops"]


def fio_value(fmt, workload, target):
    runs = fio_runs(fmt, workload, target)
    return median_or_why([fio_result(workload, r) for r in runs if "result" in r],
                         [r.get("na") for r in runs if "na" in r])


def by_round(runs, value):
    """{round: value} of the runs that have a result."""
    return {r.get("round", 1): value(r) for r in runs if "result" in r or "seconds" in r}


def paired_ratios(per_target, lower_is_better):
    """imgblk against each peer, round by round, and the median of those ratios. imgblk is
    the configuration (q1 or q2) with the better median over the rounds: picking the better
    of the two in each round would favour imgblk with the luckier of two noisy runs.
    Pairing within a round cancels the slow drifts of an emulated machine that medians of
    the absolute numbers still carry."""
    configs = [t for t in ("imgblk-q1", "imgblk-q2") if per_target.get(t)]
    pick = min if lower_is_better else max
    ours = per_target[pick(configs, key=lambda t: statistics.median(per_target[t].values()))] \
        if configs else {}
    out = {}
    for peer in PEERS:
        ratios = [theirs / ours[rnd] if lower_is_better else ours[rnd] / theirs
                  for rnd, theirs in per_target.get(peer, {}).items()
                  if theirs and ours.get(rnd)]
        out[peer] = f"{statistics.median(ratios):.2f}" if ratios else "-"
    return out


def fmt_cell(v):
    if v is None:
        return "-"
    if isinstance(v, str):
        return v
    return f"{v:,.0f}" if v >= 100 else f"{v:,.1f}"


def set_runs(fmt, workload, target):
    """The runs of a row: the 1 TiB set's loop runs are the raw copy's (raw-1t-cold)."""
    runs = fio_runs(fmt, workload, target)
    if fmt == "qcow2-1t-cold" and target == "loop":
        runs = fio_runs("raw-1t-cold", workload, target)
    return runs


def set_value(fmt, workload, target):
    runs = set_runs(fmt, workload, target)
    return median_or_why([fio_result(workload, r) for r in runs if "result" in r],
                         [r.get("na") for r in runs if "na" in r])


table = []
out_json = {"date": datetime.date.today().isoformat(), "environment": {}, "results": []}
for fmt in FORMATS:
    for workload, unit in WORKLOADS:
        if not any(set_runs(fmt, workload, t) for t in TARGETS) and (
                fmt not in ("raw", "qcow2") or workload == "randwrite-4k-qd1"):
            continue
        vals = {t: set_value(fmt, workload, t) for t in TARGETS}
        ratios = paired_ratios({t: by_round(set_runs(fmt, workload, t),
                                            lambda r, w=workload: fio_result(w, r))
                                for t in TARGETS}, False)
        table.append((f"{fmt} {workload} ({unit})", vals, ratios))
        out_json["results"].append({"format": fmt, "workload": workload, "unit": unit, **vals,
                                    "ratios": ratios})

def fsck_runs(target, fset=None):
    """e2fsck's runs; fset names issue 32's large image ("qcow2-1t-cold"), None the small one."""
    return [r for r in rows if r.get("kind") == "fsck" and r.get("target") == target
            and r.get("set") == fset]


def fsck_value(target, fset=None):
    runs = fsck_runs(target, fset)
    return median_or_why([r["seconds"] for r in runs if "seconds" in r],
                         [r.get("na") for r in runs if "na" in r])


vals = {t: fsck_value(t) for t in TARGETS}
ratios = paired_ratios({t: by_round(fsck_runs(t), lambda r: r["seconds"]) for t in TARGETS}, True)
table.append((f"qcow2 e2fsck -fn, {env.get('files', '?')} files (s, lower is better; loop: the raw copy)",
              vals, ratios))
out_json["results"].append({"format": "qcow2", "workload": "e2fsck-fn", "unit": "s", **vals,
                            "ratios": ratios})
if any(fsck_runs(t, "qcow2-1t-cold") for t in TARGETS):
    vals = {t: fsck_value(t, "qcow2-1t-cold") for t in TARGETS}
    ratios = paired_ratios({t: by_round(fsck_runs(t, "qcow2-1t-cold"), lambda r: r["seconds"])
                            for t in TARGETS}, True)
    table.append(("qcow2-1t-cold e2fsck -fn, 1 TiB sparse on a disk, cold (s, lower is better; "
                  "loop: the raw copy)", vals, ratios))
    out_json["results"].append({"format": "qcow2-1t-cold", "workload": "e2fsck-fn", "unit": "s",
                                **vals, "ratios": ratios})

rss = {}
for r in rows:
    if r.get("kind") == "rss":
        rss[r["target"]] = max(rss.get(r["target"], 0), int(r["vmhwm_kib"]))
vals = {t: (round(rss[t] / 1024, 1) if t in rss else "n/a") for t in TARGETS}
vals["loop"] = "n/a (kernel)"
ours = min([vals[t] for t in ("imgblk-q1", "imgblk-q2") if isinstance(vals[t], float)], default=None)
ratios = {peer: (f"{vals[peer] / ours:.2f}" if ours and isinstance(vals[peer], float) else "-")
          for peer in PEERS}
table.append(("daemon peak RSS, VmHWM (MiB, lower is better)", vals, ratios))
out_json["results"].append({"workload": "peak-rss", "unit": "MiB", **vals, "ratios": ratios})

# The goals (RATIO_GOALS, RSS_GOALS), checked against this table.
def ratio_of(fmt_workload, peer):
    for name, _vals, ratios in table:
        if name.startswith(fmt_workload):
            try:
                return float(ratios[peer])
            except ValueError:
                return None
    return None


def cross_ratio(row, peer, peer_row):
    """imgblk's row against the peer's run of another row (qcow2 against loop's raw copy),
    paired by round like the table's ratios."""
    (fmt, workload), (peer_fmt, peer_workload) = row.split(), peer_row.split()
    per_target = {t: by_round(fio_runs(fmt, workload, t), lambda r: fio_result(workload, r))
                  for t in ("imgblk-q1", "imgblk-q2")}
    per_target[peer] = by_round(fio_runs(peer_fmt, peer_workload, peer),
                                lambda r: fio_result(peer_workload, r))
    try:
        return float(paired_ratios(per_target, False)[peer])
    except ValueError:
        return None


def rss_of(target):
    v = vals_rss.get(target)
    return v if isinstance(v, float) else None


vals_rss = table[-1][1]
goals = []
for what, row, peer, peer_row, op, want in RATIO_GOALS:
    got = cross_ratio(row, peer, peer_row) if peer_row else ratio_of(row, peer)
    if got is not None and op == "time <=":
        got = 1 / got  # the table's ratio is the peer's time over imgblk's
    met = None if got is None else (got >= want if op == ">=" else got <= want)
    goals.append({"goal": what, "measured": got, "wanted": f"{op} {want:g}", "met": met})
for what, target, want in RSS_GOALS:
    got = rss_of(target)
    goals.append({"goal": what, "measured": got, "wanted": f"<= {want:g}",
                  "met": None if got is None else got <= want})
out_json["goals"] = goals

modes = sorted({f"{r['target']}: {'zero copy' if r.get('zero_copy') else 'copy'}"
                for r in rows if r.get("kind") == "imgblk"})

where = os.environ.get("BENCH_WHERE", "?")
environment = {
    "where": where,
    "imgblk_commit": os.environ.get("BENCH_COMMIT", "unknown"),
    "guest_kernel": env.get("kernel"),
    "imgblk_data_path": ", ".join(modes) or "?",
    "guest_cpu": env.get("cpu"),
    "guest_cpus": env.get("nproc"),
    "guest_mem_mib": int(env.get("mem_kib", 0)) // 1024,
    "host_cpu": os.environ.get("BENCH_HOST_CPU"),
    "fio": env.get("fio"),
    "qemu_nbd": env.get("qemu_nbd"),
    "fio_runtime_s": env.get("runtime"),
    "rounds": env.get("rounds"),
    "goal_rounds": env.get("goal_rounds"),
    "image_size": env.get("size"),
    "small_files": env.get("files"),
}
out_json["environment"] = environment
out_json["raw"] = rows

md = []
rounds = env.get("rounds", "?")
if DETERMINISTIC:
    md.append(f"# Device benchmark under instruction counting, {out_json['date']}\n")
    md.append("Produced by `ci/bench --deterministic`: the VM runs under QEMU's "
              f"`-icount shift={DETERMINISTIC},sleep=off`, so the guest's clock advances "
              f"{2 ** int(DETERMINISTIC)} ns per instruction executed and jumps over idle time. "
              "A number here is instructions, not real-hardware time: each stack's CPU cost per "
              "I/O, with cache misses free and the vCPUs taking turns (see "
              "benches/results/NOTES.md). It repeats from run to run whatever the host does. "
              f"Each cell is the median of {rounds} {'round' if str(rounds) == '1' else 'rounds'}.\n")
else:
    md.append(f"# Device benchmark, {out_json['date']}\n")
if not DETERMINISTIC:
    md.append("Produced by `ci/bench`. Numbers from one run of the VM; each cell is the median of "
              f"{rounds} {'round' if str(rounds) == '1' else 'rounds'}"
              + (f" ({env['goal_rounds']} for the rows a goal is read from)" if "goal_rounds" in env else "")
              + ", interleaved across targets. Compare only within this "
              "table (under TCG emulation absolute values mean little, ratios do).\n")
md.append("## Environment\n")
for k, v in environment.items():
    md.append(f"- {k}: {v}")
md.append("")
md.append("## Results\n")
md.append("Higher is better unless the row says otherwise. Ratios are >1 when imgblk is "
          "better: imgblk's better configuration for the row (q1 or q2, by its median) against "
          "the peer's run of the same round, then the median over the rounds (for RSS: the "
          "smaller imgblk peak).\n")
md.append("| workload | imgblk q1 | imgblk q2 | qemu-nbd | rublk | loop | imgblk/qemu-nbd | imgblk/rublk | imgblk/loop |")
md.append("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
for name, vals, ratios in table:
    cells = [fmt_cell(vals[t]) for t in TARGETS]
    md.append(f"| {name} | " + " | ".join(cells + [ratios[p] for p in PEERS]) + " |")
md.append("")
# Peak RSS by image set (kind=rss_set, one per detach): which rows cost the memory.
by_set = {}
for r in rows:
    if r.get("kind") == "rss_set":
        key = (r.get("set") or "?", r["target"])
        by_set[key] = max(by_set.get(key, 0), int(r["vmhwm_kib"]))
if by_set:
    out_json["rss_by_set"] = [{"set": k[0], "target": k[1], "vmhwm_mib": round(v / 1024, 1)}
                              for k, v in by_set.items()]
    md.append("Peak RSS (MiB) by image set: " + "; ".join(
        f"{s} {', '.join(f'{t} {v / 1024:.1f}' for (s2, t), v in by_set.items() if s2 == s)}"
        for s in dict.fromkeys(k[0] for k in by_set)) + ".\n")
notes = sorted({f"{t}: {v}" for _, vals, _ in table for t, v in vals.items()
                if isinstance(v, str) and v.startswith("n/a:")})
if notes:
    md.append("Not measured:\n")
    md.extend(f"- {n}" for n in notes)
    md.append("")
md.append("## Goals\n")
md.append("| goal | measured | wanted | met |")
md.append("|---|---:|---:|---|")
for g in goals:
    got = "-" if g["measured"] is None else f"{g['measured']:.2f}"
    met = {True: "yes", False: "**no**", None: "not measured"}[g["met"]]
    md.append(f"| {g['goal']} | {got} | {g['wanted']} | {met} |")
md.append("")
md.append("## Settings\n")
md.append(f"""- Images on the VM's scratch ext4 (loop-mounted, tmpfs-backed) so O_DIRECT works;
  {env.get('size', '?')} raw filled by fio, qcow2 converted from it (64 KiB clusters, all allocated).
- imgblk: `imgblk attach --queues 1|2` (depth 64 per queue, default L2 cache 16 MiB per image,
  O_DIRECT on the image, `--zero-copy auto`: zero copy with 512 KiB requests where the
  kernel has it, else one copy through a buffer per tag, within 32 MiB per device: 512 KiB
  requests with one queue, 256 KiB with two); `--rw` for the write rows.
- qemu-nbd: `qemu-nbd -c /dev/nbdN --cache=none --aio=io_uring` (threads if unsupported),
  `--read-only` for reads.
- loop: `losetup --direct-io=on` (raw only). rublk: `rublk add qcow2 -f IMG` (defaults).
- fio: ioengine=io_uring, direct=1, time_based, runtime={env.get('runtime', '?')} s, ramp 1 s;
  randread 4k iodepth=1 numjobs=1; randread 4k iodepth=32 numjobs=2; read 1M iodepth=4;
  randwrite 4k iodepth=32 numjobs=1 (writes run after all reads, each on a fresh, synced copy).
- issue 32's rows, each against its peer in this run (imgblk q1/q2, qemu-nbd; rublk not run):
  qcow2-zstd, a {env.get('size', '?')} qcow2 made by `qemu-img convert -c -o compression_type=zstd`
  from data that compresses to about half; qcow2-luks2, a LUKS2 volume (aes-xts-plain64, 512-bit
  key, 4 KiB sectors, pbkdf2) of the same size in a qcow2, `imgblk attach --luks --key-file`
  against qemu-nbd + `cryptsetup open` (dm-crypt's defaults); qcow2-fresh, randwrite 4k QD1 and
  QD32 on a fresh, empty 1 GiB qcow2 per run (most writes allocate a cluster); qcow2-1t-cold, a
  1 TiB sparse qcow2 (ext4, 128000 files in 8192 block groups, 2048 L2 tables = 128 MiB) on a
  virtio disk of the VM (host file, `cache=none`), loop on its raw copy, the guest's page cache
  dropped and the device attached afresh before each run (randread 4k QD1, QD32x2; e2fsck -fn);
  under `ci/bench --deterministic` in a VM of its own with `-icount sleep=on` (idle time, the
  waits on the disk, on the host's clock; benches/results/NOTES.md).
- Reads: all targets attached to the image at once (read-only), fio runs interleaved round by
  round. Writes and e2fsck: attached per run.
- e2fsck -fn: ext4 (built on the host with `mkfs.ext4 -d` from {env.get('files', '?')} files of
  100-3000 bytes in 1000 directories) in a qcow2 (loop: converted to raw in the VM); the page
  cache dropped, then a fresh attach, then e2fsck started once untimed on a tiny file system
  (so that its binary is not read over 9p inside the timed run), then the timed run.
- Peak RSS: VmHWM of the serving process (imgblk daemon, qemu-nbd, rublk), read before each
  detach; the largest over all its runs.
""")
open(prefix + ".md", "w").write("\n".join(md))
with open(prefix + ".json", "w") as f:
    json.dump(out_json, f, indent=2)
    f.write("\n")
