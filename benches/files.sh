#!/bin/bash
# Speed of `imgblk get` (one file out of an image, in process) side by side with
# libguestfs's `virt-cat`, which boots an appliance VM for every call (issue 30).
#
# Usage: benches/files.sh [WORKDIR] > RESULTS.md
#   IMGBLK (default target/release/imgblk), ROUNDS (default 3; virt-cat runs once per
#   round too, however slow), FORCE_TCG=1 to run libguestfs's appliance under TCG
#   emulation even where /dev/kvm exists (where KVM does not work: the appliance hangs
#   at boot). Needs libguestfs-tools (apt-get install libguestfs-tools: not in
#   ci/install-deps, a benchmark's tool, not a test's). libguestfs is run with
#   LIBGUESTFS_BACKEND=direct (no libvirt); the table says whether its appliance ran
#   under KVM or TCG: that is what virt-cat costs on such a host.
#
# The image: a 256 MiB ext4 file system made by mkfs.ext4 -d from a tree of 2000 small
# files and one 8 MiB file (with the few files that make virt-cat's inspection see a
# Debian root), as a qcow2; the files read are the 8 MiB one and a small one.
set -euo pipefail

here=$(cd "$(dirname "$0")/.." && pwd)
imgblk=${IMGBLK:-$here/target/release/imgblk}
rounds=${ROUNDS:-3}
work=${1:-$(mktemp -d /var/tmp/imgblk-files-bench.XXXXXX)}
mkdir -p "$work"
cd "$work"
export LIBGUESTFS_BACKEND=direct
command -v virt-cat > /dev/null || { echo "benches/files.sh: virt-cat is missing (apt-get install libguestfs-tools)" >&2; exit 1; }
log() { echo "$*" >&2; }

if [ ! -e fs.qcow2 ]; then
    # enough of a Debian root for virt-cat's inspection to take it for an OS
    rm -rf src && mkdir -p src/etc src/data src/bin src/sbin src/usr/bin src/lib src/var src/root
    echo "hello from the guest" > src/etc/hostname
    printf 'ID=debian\nVERSION_ID="12"\nPRETTY_NAME="Debian GNU/Linux 12"\n' > src/etc/os-release
    echo 12.0 > src/etc/debian_version
    echo "/dev/sda / ext4 defaults 0 1" > src/etc/fstab
    for i in $(seq 1 2000); do echo "file $i" > "src/data/f$i"; done
    head -c 8M /dev/urandom > src/data/big.bin
    mkfs.ext4 -q -F -d src fs.raw 256M >&2
    qemu-img convert -O qcow2 fs.raw fs.qcow2
    rm -rf src fs.raw
fi
accel=kvm; [ -w /dev/kvm ] || accel=tcg
if [ -n "${FORCE_TCG:-}" ]; then
    accel=tcg
    export LIBGUESTFS_BACKEND_SETTINGS=force_tcg
fi

# run TOOL PATH: one read of PATH; prints seconds (to the microsecond) and checks the
# bytes against imgblk's.
run() {
    local tool=$1 path=$2 start end
    start=$(date +%s%N)
    if [ "$tool" = imgblk ]; then
        "$imgblk" get fs.qcow2 "$path" > out.bin
    else
        virt-cat -a fs.qcow2 "$path" > out.bin
    fi
    end=$(date +%s%N)
    cmp -s out.bin "want$(echo "$path" | tr / _)" || { log "$tool $path: wrong bytes"; exit 1; }
    printf '%d.%06d\n' $(((end - start) / 1000000000)) $(((end - start) % 1000000000 / 1000))
}

# the first call builds libguestfs's appliance (then cached under /var/tmp): not timed
log "virt-cat: building the appliance (once)"
virt-cat -a fs.qcow2 /etc/hostname > /dev/null
printf 'tool\tpath\tseconds\n' > runs.tsv
for path in /etc/hostname /data/big.bin; do
    "$imgblk" get fs.qcow2 "$path" > "want$(echo "$path" | tr / _)"
    for ((r = 1; r <= rounds; r++)); do
        for tool in imgblk virt-cat; do
            secs=$(run "$tool" "$path")
            log "$path $tool: ${secs}s"
            printf '%s\t%s\t%s\n' "$tool" "$path" "$secs" >> runs.tsv
        done
    done
done

# the table: medians per tool and path
python3 - "$rounds" "$accel" <<'PY'
import csv, statistics, sys
rounds, accel = sys.argv[1], sys.argv[2]
rows = list(csv.DictReader(open("runs.tsv"), delimiter="\t"))
print(f"# imgblk get vs virt-cat ({rounds} rounds each, medians; virt-cat's appliance under {accel.upper()})\n")
print("| file | imgblk get s | virt-cat s | speed-up | goal ≥ 10x |")
print("|---|---:|---:|---:|---|")
for path in dict.fromkeys(r["path"] for r in rows):
    t = {tool: statistics.median(float(r["seconds"]) for r in rows if r["path"] == path and r["tool"] == tool)
         for tool in ("imgblk", "virt-cat")}
    ratio = t["virt-cat"] / t["imgblk"]
    print(f"| {path} | {t['imgblk']:.4f} | {t['virt-cat']:.1f} | {ratio:,.0f}x | {'met' if ratio >= 10 else 'missed'} |")
PY
