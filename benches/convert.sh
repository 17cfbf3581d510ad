#!/bin/bash
# Speed of `imgblk convert` side by side with `qemu-img convert` (issue 29), on the host.
#
# Usage: benches/convert.sh [WORKDIR] > RESULTS.md
#   IMGBLK (default target/release/imgblk), ROUNDS (default 3), SIZE_GIB (default 4).
#
# Sources, each SIZE_GIB of virtual size with about half of it data and zero runs:
#   plain.qcow2  a qcow2 (qemu-img convert -O qcow2 of a sparse raw file)
#   zstd.qcow2   the same, compressed with zstd (qemu-img convert -c -o compression_type=zstd)
#   zlib.qcow2   the same, compressed with zlib (qemu-img convert -c, QEMU's default)
#   top.qcow2    a 3-deep chain: top.qcow2 -> mid.qcow2 -> plain.qcow2
# Each is converted to raw and to qcow2 by both tools, alternately (imgblk, qemu-img,
# imgblk, ...) so that a noisy shared host hurts both alike, with a warm and a cold page
# cache (cold: the sources' pages dropped with posix_fadvise(DONTNEED) through
# `dd iflag=nocache count=0`, which needs no root). Both tools sync their output before
# exiting (qemu-img is given -t writeback, which flushes at close). Times and peak RSS
# come from /usr/bin/time; the table shows medians. Disk: the sources take about
# 0.6 * SIZE_GIB GiB each, an output up to SIZE_GIB/2 GiB, deleted after each run.
set -euo pipefail

here=$(cd "$(dirname "$0")/.." && pwd)
imgblk=${IMGBLK:-$here/target/release/imgblk}
rounds=${ROUNDS:-3}
size_gib=${SIZE_GIB:-4}
work=${1:-$(mktemp -d /var/tmp/imgblk-bench.XXXXXX)}
mkdir -p "$work"
cd "$work"
trap 'rm -f out.raw out.qcow2' EXIT
log() { echo "$*" >&2; }

make_sources() {
    # A 64 MiB piece: 16 MiB random, 24 MiB base64 text, 16 MiB of counting lines,
    # 8 MiB of zeroes; laid at every other 64 MiB of the disk (the rest stays a hole).
    head -c 16M /dev/urandom > piece
    head -c 18M /dev/urandom | base64 -w 76 > text
    seq 1 3000000 >> text
    head -c 40M text >> piece
    head -c 8M /dev/zero >> piece
    rm text
    truncate -s "${size_gib}G" data.raw
    local n=$((size_gib * 1024 / 128)) i
    for ((i = 0; i < n; i++)); do
        dd if=piece of=data.raw bs=1M seek=$((i * 128)) conv=notrunc status=none
    done
    rm piece
    qemu-img convert -O qcow2 data.raw plain.qcow2
    qemu-img convert -c -O qcow2 -o compression_type=zstd data.raw zstd.qcow2
    qemu-img convert -c -O qcow2 data.raw zlib.qcow2
    rm data.raw
    qemu-img create -q -f qcow2 -b plain.qcow2 -F qcow2 mid.qcow2
    qemu-io -f qcow2 -c "write -P 0x21 100M 256M" -c "write -z 1G 64M" mid.qcow2 > /dev/null
    qemu-img create -q -f qcow2 -b mid.qcow2 -F qcow2 top.qcow2
    qemu-io -f qcow2 -c "write -P 0x33 2G 256M" -c "write -z 300M 32M" top.qcow2 > /dev/null
}

drop_cache() {
    local f
    for f in plain.qcow2 zstd.qcow2 zlib.qcow2 mid.qcow2 top.qcow2; do
        dd if="$f" iflag=nocache count=0 status=none
    done
}

# run TOOL SOURCE FORMAT CACHE: one conversion; prints a TSV line.
run() {
    local tool=$1 src=$2 fmt=$3 cache=$4 out="out.$3"
    rm -f "$out"
    sync
    [ "$cache" = cold ] && drop_cache
    [ "$cache" = warm ] && cat "$src" mid.qcow2 plain.qcow2 > /dev/null
    local cmd
    if [ "$tool" = imgblk ]; then
        cmd=("$imgblk" convert --no-progress -O "$fmt" -o "$out" "$src")
    else
        cmd=(qemu-img convert -t writeback -O "$fmt" "$src" "$out")
    fi
    /usr/bin/time -f "%e %M" -o time.txt "${cmd[@]}"
    read -r secs rss_kib < time.txt
    rm -f "$out" time.txt
    printf '%s\t%s\t%s\t%s\t%s\t%s\n' "$src" "$fmt" "$cache" "$tool" "$secs" "$rss_kib"
    log "$src -> $fmt ($cache) $tool: ${secs}s, $((rss_kib / 1024)) MiB"
}

[ -e zlib.qcow2 ] || make_sources
# every run, kept so that the table can be made of an interrupted benchmark too:
# benches/convert-table.py WORKDIR/runs.tsv ROUNDS SIZE_GIB
raw=$work/runs.tsv
for ((r = 1; r <= rounds; r++)); do
    for src in zstd.qcow2 zlib.qcow2 plain.qcow2 top.qcow2; do
        for fmt in raw qcow2; do
            for cache in warm cold; do
                # alternate which tool goes first, round by round
                if ((r % 2)); then tools="imgblk qemu-img"; else tools="qemu-img imgblk"; fi
                for tool in $tools; do run "$tool" "$src" "$fmt" "$cache" >> "$raw"; done
            done
        done
    done
done

"$here/benches/convert-table.py" "$raw" "$rounds" "$size_gib"
