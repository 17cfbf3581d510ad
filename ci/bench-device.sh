#!/usr/bin/env bash
# The device half of ci/bench, run as root where ublk is (the VM or the host); not meant
# to be run by hand. Writes one JSON object per measurement to $BENCH_RESULTS
# (/vmout/raw.json in the VM).
set -uo pipefail

S=${IMGBLK_SCRATCH:?no scratch file system}
RES=${BENCH_RESULTS:-/vmout/raw.json}
RT=${BENCH_RUNTIME:-10}
ROUNDS=${BENCH_ROUNDS:-3}
GOAL_ROUNDS=${BENCH_GOAL_ROUNDS:-7}
IMGBLK=${BENCH_IMGBLK:?}
RUBLK=${BENCH_RUBLK:-}
: > "$RES"
say() { echo "bench: $*" >&2; }
# section NAME: whether BENCH_SECTIONS (default: all) lists it; sections: reads writes fsck
# (the device table), zstd luks alloc large (issue 32's rows)
section() { [ -z "${BENCH_SECTIONS:-}" ] || grep -qw "$1" <<< "$BENCH_SECTIONS"; }
# guard SECS CMD...: run CMD, killed after SECS; on a timeout the log gets what the guest
# looked like (a hung benchmark must end with a reason, not eat the VM's whole time budget)
guard() {
  local secs=$1 rc; shift
  timeout -k 10 "$secs" "$@"; rc=$?
  if [ "$rc" = 124 ] || [ "$rc" = 137 ]; then
    say "TIMEOUT after ${secs}s: $*"
    { free -m; df -m "$S"; ps -eo pid,stat,rss,wchan:24,args | grep -E 'imgblk|qemu-nbd|rublk|fio|cp ' | grep -v grep
      dmesg | tail -40; } >&2
  fi
  return "$rc"
}
emit() { # emit KEY=VALUE... (values are JSON already or plain strings)
  python3 - "$@" >> "$RES" <<'EOF'
import json, sys
obj = {}
for arg in sys.argv[1:]:
    k, v = arg.split("=", 1)
    try:
        obj[k] = json.loads(v)
    except ValueError:
        obj[k] = v
print(json.dumps(obj))
EOF
  # /vmout is 9p: written back now, not by the flusher in the middle of the next measurement
  sync
}

# --- environment ---------------------------------------------------------------------------
emit kind=env kernel="$(uname -r)" cpu="$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ //')" \
  nproc="$(nproc)" mem_kib="$(awk '/MemTotal/ {print $2}' /proc/meminfo)" \
  fio="$(fio --version)" qemu_nbd="$(qemu-nbd --version | head -1)" files="${BENCH_FILES:-?}" \
  size="${BENCH_SIZE:-1G}" runtime="$RT" rounds="$ROUNDS" goal_rounds="$GOAL_ROUNDS"

# --- images (on the scratch ext4, so O_DIRECT works) ---------------------------------------
say "preparing images in $S"
fio --name=fill --filename="$S/img.raw" --size="${BENCH_SIZE:-1G}" --rw=write --bs=1M \
  --ioengine=psync --direct=1 --refill_buffers=0 --output=/dev/null || exit 1
qemu-img convert -O qcow2 -o cluster_size=65536 "$S/img.raw" "$S/img.qcow2" || exit 1
cp "${BENCH_OUT_IN:?}/fs.qcow2" "$S/fs.qcow2" || exit 1
# the same file system raw, for loop's e2fsck row; a tiny one to start e2fsck on untimed
qemu-img convert -O raw "$S/fs.qcow2" "$S/fs.raw" || exit 1
# issue 32's rows: a zstd-compressed qcow2 and a LUKS2 volume in a qcow2, made by ci/bench
for f in zstd.qcow2 luks.qcow2 luks.key; do cp "${BENCH_OUT_IN:?}/$f" "$S/$f" || exit 1; done
mkfs.ext4 -q -F /tmp/tiny.ext4 8M || exit 1
sync; df -h "$S" >&2

AIO=io_uring
if ! qemu-nbd --help 2>&1 | grep -q io_uring; then AIO=threads; fi

dev=""; pid=""; detach_cmd=(); under_cmd=(); why=""; zero_copy=false
# LUKS_KEY: set while the LUKS rows run: imgblk attaches with --luks, qemu-nbd's device gets
# dm-crypt on top (under_cmd then detaches the NBD device after the mapping is closed)
LUKS_KEY=""
wait_dev() { # a device that reports a size
  for _ in $(seq 100); do
    [ -b "$1" ] && [ "$(blockdev --getsize64 "$1" 2>/dev/null || echo 0)" -gt 0 ] && return 0
    sleep 0.1
  done
  return 1
}

# attach TARGET FORMAT IMAGE RW: sets dev, pid and detach_cmd; non-zero with a reason in
# $why when the target cannot serve it.
attach() {
  local target=$1 fmt=$2 img=$3 rw=$4 out
  dev=""; pid=""; why=""; detach_cmd=(); under_cmd=()
  case $target in
    imgblk-q1|imgblk-q2)
      local q=${target#imgblk-q}
      local args=(attach --json --queues "$q")
      [ "$rw" = rw ] && args+=(--rw)
      [ -n "$LUKS_KEY" ] && args+=(--luks --key-file "$LUKS_KEY")
      out=$(guard 120 "$IMGBLK" "${args[@]}" "$img" 2>&1) || { why="attach failed: $(echo "$out" | tail -1)"; return 1; }
      dev=$(echo "$out" | python3 -c 'import json,sys; print(json.load(sys.stdin)["device"])')
      pid=$(echo "$out" | python3 -c 'import json,sys; print(json.load(sys.stdin)["pid"])')
      zero_copy=$(echo "$out" | python3 -c 'import json,sys; print(json.dumps(json.load(sys.stdin)["zero_copy"]))')
      detach_cmd=("$IMGBLK" detach "$dev")
      ;;
    qemu-nbd)
      local args=(--cache=none --aio="$AIO" -f "$fmt")
      [ "$rw" = rw ] || args+=(--read-only)
      dev=${NBD:-/dev/nbd0}
      qemu-nbd -c "$dev" "${args[@]}" "$img" >/tmp/nbd.log 2>&1 &
      pid=$!
      wait_dev "$dev" || { why="qemu-nbd did not connect: $(tail -1 /tmp/nbd.log)"; return 1; }
      # qemu-nbd -c forks a server and its first process exits: the kernel knows the server.
      pid=$(cat "/sys/block/${dev#/dev/}/pid" 2>/dev/null || pgrep -n -f "qemu-nbd -c $dev" || true)
      detach_cmd=(qemu-nbd -d "$dev")
      if [ -n "$LUKS_KEY" ]; then
        # the admin's ritual: dm-crypt (cryptsetup open, its defaults) over the NBD device
        local name=bench-${dev#/dev/} ro=(--readonly)
        [ "$rw" = rw ] && ro=()
        out=$(cryptsetup open "${ro[@]}" --key-file "$LUKS_KEY" "$dev" "$name" 2>&1) ||
          { why="cryptsetup open failed: $(echo "$out" | tail -1)"; qemu-nbd -d "$dev" >/dev/null; return 1; }
        under_cmd=("${detach_cmd[@]}")
        dev=/dev/mapper/$name
        detach_cmd=(cryptsetup close "$name")
      fi
      ;;
    loop)
      [ "$fmt" = raw ] || { why="n/a (raw only)"; return 1; }
      local args=(--direct-io=on -f --show)
      [ "$rw" = rw ] || args+=(-r)
      dev=$(losetup "${args[@]}" "$img" 2>&1) || { why="losetup failed: $dev"; return 1; }
      detach_cmd=(losetup -d "$dev")
      ;;
    rublk)
      [ -n "$RUBLK" ] || { why="not available: ${BENCH_RUBLK_WHY:-not built}"; return 1; }
      [ "$fmt" = qcow2 ] || { why="n/a (qcow2 target only benchmarked)"; return 1; }
      [ "$rw" = rw ] && { why="n/a (read-only comparison)"; return 1; }
      local id=9
      out=$("$RUBLK" add qcow2 -n $id --read-only -f "$img" 2>&1) || { why="not available: rublk add failed: $(echo "$out" | tail -1)"; return 1; }
      dev=/dev/ublkb$id
      wait_dev "$dev" || { why="not available: $dev did not appear"; "$RUBLK" del -n "$id" >/dev/null 2>&1; return 1; }
      pid=$(cat "/sys/block/ublkb$id/ublk_pid" 2>/dev/null || pgrep -n -x rublk || true)
      detach_cmd=("$RUBLK" del -n "$id")
      ;;
  esac
  return 0
}

# run_fio NAME DEV extra fio args...: prints the JSON summary {iops, bw_mib, lat_us}
# Under icount (BENCH_DETERMINISTIC) fio's jobs are pinned, one vCPU each: left to the
# scheduler, where each job and the queue threads land differs from boot to boot, and with
# it a row by up to 20 %; pinned, imgblk's and rublk's rows agreed within ~1 % in a trial.
# The same for e2fsck, on vCPU 0.
PIN=() FSCK_PIN=()
if [ -n "${BENCH_DETERMINISTIC:-}" ]; then
  PIN=(--cpus_allowed="0-$(($(nproc) - 1))" --cpus_allowed_policy=split) FSCK_PIN=(taskset -c 0)
fi
run_fio() {
  local name=$1 dev=$2; shift 2
  guard $((RT * 4 + 60)) fio --name="$name" --filename="$dev" --ioengine=io_uring --direct=1 --time_based \
    --runtime="$RT" --ramp_time=1 --group_reporting --output-format=json "${PIN[@]}" "$@" 2>/dev/null |
    python3 -c '
import json, sys
j = json.load(sys.stdin)["jobs"][0]
side = j["read"] if j["read"]["io_bytes"] > 0 else j["write"]
print(json.dumps({"iops": round(side["iops"], 1), "bw_mib": round(side["bw_bytes"] / 2**20, 2),
                  "lat_us": round(side["clat_ns"]["mean"] / 1000, 1)}))'
}

TARGETS=(imgblk-q1 imgblk-q2 qemu-nbd rublk loop)
WORKLOADS_READ=("randread-4k-qd1:--rw=randread --bs=4k --iodepth=1 --numjobs=1"
  "randread-4k-qd32x2:--rw=randread --bs=4k --iodepth=32 --numjobs=2"
  "seqread-1m:--rw=read --bs=1M --iodepth=4 --numjobs=1")
WORKLOAD_WRITE="randwrite-4k-qd32:--rw=randwrite --bs=4k --iodepth=32 --numjobs=1"
# rounds_for FMT WORKLOAD: how many rounds a measurement gets. The rows a goal is read
# from (as the report names them, "FMT WORKLOAD" a line) get more: single rounds move by
# up to 2x under emulation, and a median of three paired ratios still lands on either
# side of a bar it sits near.
GOAL_ROWS=$(python3 ci/bench-report.py --goal-rows) || exit 1
rounds_for() {
  if grep -qxF "$1 $2" <<< "$GOAL_ROWS"; then echo "$GOAL_ROUNDS"; else echo "$ROUNDS"; fi
}

# Per-target state while several targets are attached at once.
declare -A DEV PID DETACH UNDER PEAK
RSS_SET=""
# The qemu-nbd devices, one per target that needs one at a time.
NBD_NEXT=0

attach_keep() { # attach_keep TARGET FMT IMG RW: attach and remember; non-zero with $why
  local t=$1
  if [ "$t" = qemu-nbd ]; then NBD=/dev/nbd$NBD_NEXT; NBD_NEXT=$(((NBD_NEXT + 1) % 4)); fi
  attach "$@" || return 1
  DEV[$t]=$dev; PID[$t]=$pid; DETACH[$t]="${detach_cmd[*]}" UNDER[$t]="${under_cmd[*]}"
}

detach_keep() { # detach_keep TARGET: note its peak RSS, then detach it
  local t=$1 h=""
  [ -n "${PID[$t]:-}" ] && h=$(awk '/VmHWM/ {print $2}' "/proc/${PID[$t]}/status" 2>/dev/null)
  if [ -n "$h" ] && [ "$h" -gt "${PEAK[$t]:-0}" ]; then PEAK[$t]=$h; fi
  # and per image set (RSS_SET, named by each section), to tell which one costs memory
  [ -n "$h" ] && emit kind=rss_set set="$RSS_SET" target="$t" vmhwm_kib="$h"
  # shellcheck disable=SC2086
  [ -n "${DETACH[$t]:-}" ] && guard 120 ${DETACH[$t]} >/dev/null
  # shellcheck disable=SC2086
  [ -n "${UNDER[$t]:-}" ] && guard 120 ${UNDER[$t]} >/dev/null
  if [ "$t" = qemu-nbd ] && [ -n "${PID[$t]:-}" ]; then
    for _ in $(seq 50); do kill -0 "${PID[$t]}" 2>/dev/null || break; sleep 0.1; done
  fi
  unset "DEV[$t]" "PID[$t]" "DETACH[$t]" "UNDER[$t]"
  sleep 0.3
}

fio_round() { # fio_round FMT TARGET ROUND WORKLOAD: one fio run on DEV[TARGET], emitted
  local fmt=$1 t=$2 round=$3 w=$4 r
  # shellcheck disable=SC2086
  r=$(run_fio "${w%%:*}" "${DEV[$t]}" ${w#*:})
  if [ -n "$r" ]; then
    emit kind=fio format="$fmt" target="$t" workload="${w%%:*}" round="$round" result="$r"
  else
    emit kind=fio format="$fmt" target="$t" workload="${w%%:*}" round="$round" na="fio failed"
  fi
  say "  $fmt ${w%%:*} round $round $t: $r"
}

# --- reads: every target attached to the same image at once, runs interleaved -----------
# Interleaving (round 1 of every target, then round 2, ...) and taking medians keeps slow
# drifts of an emulated machine from favouring whichever target ran first.
# read_set SET FMT IMG TARGET...: the workloads of READS on IMG, its rows named SET.
read_set() {
  local set=$1 fmt=$2 img=$3 t w round live=()
  shift 3
  RSS_SET=$set
  for t in "$@"; do
    if attach_keep "$t" "$fmt" "$img" ro; then
      live+=("$t"); say "$set $t on ${DEV[$t]}"
      case $t in imgblk-*) emit kind=imgblk target="$t" zero_copy="$zero_copy" ;; esac
    else
      for w in "${READS[@]}"; do emit kind=fio format="$set" target="$t" workload="${w%%:*}" na="$why"; done
      say "$set $t: $why"
    fi
  done
  for w in "${READS[@]}"; do
    for round in $(seq "$(rounds_for "$set" "${w%%:*}")"); do
      for t in "${live[@]}"; do fio_round "$set" "$t" "$round" "$w"; done
    done
  done
  for t in "${live[@]}"; do detach_keep "$t"; done
}
READS=("${WORKLOADS_READ[@]}")
if section reads; then
  for fmt in raw qcow2; do read_set "$fmt" "$fmt" "$S/img.$fmt" "${TARGETS[@]}"; done
fi

# --- writes: a fresh copy of the image per target and round ------------------------------
section writes &&
for fmt in raw qcow2; do
  RSS_SET="$fmt randwrite"
  for round in $(seq "$ROUNDS"); do
    for t in "${TARGETS[@]}"; do
      # synced: O_DIRECT writes over a copy still dirty in the page cache would each wait
      # for writeback (an imgblk raw run measured 785 IOPS unsynced, 10,034 synced)
      guard 300 cp --sparse=always "$S/img.$fmt" "$S/copy.$fmt" || continue
      sync
      if attach_keep "$t" "$fmt" "$S/copy.$fmt" rw; then
        fio_round "$fmt" "$t" "$round" "$WORKLOAD_WRITE"
        detach_keep "$t"
      elif [ "$round" = 1 ]; then
        emit kind=fio format="$fmt" target="$t" workload="${WORKLOAD_WRITE%%:*}" na="$why"
        say "$fmt $t: $why"
      fi
      rm -f "$S/copy.$fmt"
    done
  done
done

# --- e2fsck -fn over many small files, a fresh attach (cold caches) per run ---------------
# The page cache is dropped before the attach, not between it and e2fsck, and e2fsck runs
# once untimed over a tiny file system: after a drop, e2fsck's binary, libraries and files
# (and timeout's) would be read again from the host over 9p inside the timed run, and under
# icount with sleep=off each wait for the host lets the guest's clock jump to its next
# timer, by as much as the host happens to take (benches/results/NOTES.md, "Deterministic
# timing"). The device's own cache is empty anyway: each run is a fresh attach.
# fsck_run SET TARGET ROUND FMT IMG: one such run, emitted as kind=fsck (with set= unless
# SET is the small file system's "qcow2").
fsck_run() {
  local set=$1 t=$2 round=$3 fmt=$4 img=$5 start end secs rc tag=()
  [ "$set" = qcow2 ] || tag=(set="$set")
  RSS_SET="$set e2fsck"
  sync; echo 3 > /proc/sys/vm/drop_caches
  # The drop leaves work to the kernel's threads; left to run inside the timed run, it
  # took that run's vCPU turns in some rounds (e2fsck rounds up to 70 % slower, more on a
  # busy host). Idle time is free under icount with sleep=off.
  sleep 5
  guard 60 taskset -c 0 e2fsck -fn /tmp/tiny.ext4 > /dev/null 2>&1
  # On the cold large image the attach is timed too: imgblk starts reading the image's
  # tables ahead as its device starts, and that must not run before the clock does.
  [ "$set" = qcow2-1t-cold ] && start=$EPOCHREALTIME
  if ! attach_keep "$t" "$fmt" "$img" ro; then
    [ "$round" = 1 ] && emit kind=fsck "${tag[@]}" target="$t" na="$why"
    return
  fi
  [ "$set" = qcow2-1t-cold ] || start=$EPOCHREALTIME
  guard 1800 "${FSCK_PIN[@]}" e2fsck -fn "${DEV[$t]}" > /tmp/fsck.log 2>&1; rc=$?
  end=$EPOCHREALTIME
  secs=$(python3 -c "print(round($end - $start, 2))")
  say "e2fsck ($set) via $t, round $round: ${secs}s (rc $rc)"
  emit kind=fsck "${tag[@]}" target="$t" round="$round" seconds="$secs" rc="$rc" summary="$(tail -1 /tmp/fsck.log)"
  detach_keep "$t"
}
section fsck &&
for round in $(seq "$(rounds_for qcow2 e2fsck)"); do
  for t in imgblk-q1 imgblk-q2 qemu-nbd rublk loop; do
    img=$S/fs.qcow2 fmt=qcow2
    [ "$t" = loop ] && img=$S/fs.raw fmt=raw
    fsck_run qcow2 "$t" "$round" "$fmt" "$img"
  done
done

# --- issue 32's rows: each against its peer in this same run -------------------------------
# A zstd-compressed qcow2 (clusters decoded by imgblk's cache of decoded clusters, by
# qemu-nbd on every read).
if section zstd; then
  READS=("${WORKLOADS_READ[@]}")
  read_set qcow2-zstd qcow2 "$S/zstd.qcow2" imgblk-q1 imgblk-q2 qemu-nbd
fi
# LUKS2 inside a qcow2: imgblk --luks against qemu-nbd + cryptsetup open.
if section luks; then
  LUKS_KEY=$S/luks.key
  READS=("${WORKLOADS_READ[@]}")
  read_set qcow2-luks2 qcow2 "$S/luks.qcow2" imgblk-q1 imgblk-q2 qemu-nbd
  LUKS_KEY=""
fi
# Allocating random writes: a fresh, empty 1 GiB qcow2 (64 KiB clusters) per target and
# run, so most 4 KiB writes allocate a cluster (ci/bench-alloc-writes measures the same
# against an older build).
WORKLOADS_ALLOC=("randwrite-4k-qd1:--rw=randwrite --bs=4k --iodepth=1 --numjobs=1"
  "randwrite-4k-qd32:--rw=randwrite --bs=4k --iodepth=32 --numjobs=1")
section alloc &&
for w in "${WORKLOADS_ALLOC[@]}"; do
  RSS_SET=qcow2-fresh
  for round in $(seq "$(rounds_for qcow2-fresh "${w%%:*}")"); do
    for t in imgblk-q1 imgblk-q2 qemu-nbd; do
      rm -f "$S/fresh.qcow2"
      qemu-img create -q -f qcow2 -o cluster_size=65536 "$S/fresh.qcow2" 1G || continue
      sync
      if attach_keep "$t" qcow2 "$S/fresh.qcow2" rw; then
        fio_round qcow2-fresh "$t" "$round" "$w"
        detach_keep "$t"
      elif [ "$round" = 1 ]; then
        emit kind=fio format=qcow2-fresh target="$t" workload="${w%%:*}" na="$why"
      fi
      rm -f "$S/fresh.qcow2"
    done
  done
done
# A large sparse qcow2 on a disk of the VM, not tmpfs: 1 TiB virtual, an ext4 with files in
# every block group and every group's bitmaps in use (made by ci/bench), so its L2 tables
# (128 MiB) outgrow imgblk's default cache (16 MiB); the same file system raw for loop.
# The page cache is dropped and the device attached afresh before each run.
LARGE=${BENCH_LARGE_DISK:-}
if section large && [ -n "$LARGE" ]; then
  mkdir -p /mnt/large
  if mount -o ro,noload "$LARGE" /mnt/large; then
    L=/mnt/large RSS_SET=qcow2-1t-cold
    # Every target reads the same disk: one pass over it first (past the guest's page
    # cache) warms whatever caches lie below the guest's disk alike for all of them, so
    # that a target's numbers do not depend on what the targets before it read.
    dd if="$LARGE" of=/dev/null bs=4M iflag=direct status=none || say "cannot read $LARGE"

    WORKLOADS_LARGE=("randread-4k-qd1:--rw=randread --bs=4k --iodepth=1 --numjobs=1"
      "randread-4k-qd32x2:--rw=randread --bs=4k --iodepth=32 --numjobs=2")
    for w in "${WORKLOADS_LARGE[@]}"; do
      for round in $(seq "$(rounds_for qcow2-1t-cold "${w%%:*}")"); do
        for t in imgblk-q1 imgblk-q2 qemu-nbd loop; do
          set=qcow2-1t-cold fmt=qcow2
          [ "$t" = loop ] && set=raw-1t-cold fmt=raw
          sync; echo 3 > /proc/sys/vm/drop_caches
          if attach_keep "$t" "$fmt" "$L/large.$fmt" ro; then
            fio_round "$set" "$t" "$round" "$w"
            detach_keep "$t"
          elif [ "$round" = 1 ]; then
            emit kind=fio format="$set" target="$t" workload="${w%%:*}" na="$why"
          fi
        done
      done
    done
    for round in $(seq "$(rounds_for qcow2-1t-cold e2fsck)"); do
      for t in imgblk-q1 imgblk-q2 qemu-nbd loop; do
        fmt=qcow2; [ "$t" = loop ] && fmt=raw
        fsck_run qcow2-1t-cold "$t" "$round" "$fmt" "$L/large.$fmt"
      done
    done
    umount /mnt/large
  else
    say "cannot mount $LARGE: no large-image rows"
  fi
fi

for t in "${!PEAK[@]}"; do emit kind=rss target="$t" vmhwm_kib="${PEAK[$t]}"; done
say "done"
