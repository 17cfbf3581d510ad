#!/bin/sh
# imgblk tar of an ext4 tree against GNU tar over the same file system (issue 30's goal:
# within 1.5x of tar over the kernel's ext4).
#
#   benches/files-tar.sh [IMGBLK...]
#
# Builds /usr/include and /usr/share/doc into an ext4 image with mkfs.ext4 -d (some
# 14,000 files, 270 MB), then times, warm (one untimed run first), RUNS times each:
# every IMGBLK binary given (default: target/release/imgblk) as `imgblk tar fs.img | cat`,
# GNU tar over a read-only loop mount of the image (as root; skipped otherwise) and GNU
# tar over the source directory. Output is piped through cat: with its output on
# /dev/null GNU tar skips reading the files. Prints one line per run: what, seconds,
# peak RSS.
set -eu
RUNS=${RUNS:-5}
work=$(mktemp -d)
trap 'umount "$work/mnt" 2>/dev/null || true; rm -rf "$work"' EXIT
mkdir "$work/tree"
cp -a /usr/include "$work/tree/include"
cp -a /usr/share/doc "$work/tree/doc"
truncate -s 700M "$work/fs.img"
mkfs.ext4 -q -F -d "$work/tree" "$work/fs.img"
echo "# $(find "$work/tree" | wc -l) files, $(du -sh "$work/tree" | cut -f1)"

time_it() {
	what=$1
	shift
	sh -c "$*" >/dev/null
	i=0
	while [ $i -lt "$RUNS" ]; do
		/usr/bin/time -f "$what %e s %M KB" sh -c "$*"
		i=$((i + 1))
	done
}

[ $# -gt 0 ] || set -- target/release/imgblk
for bin in "$@"; do
	time_it "imgblk-tar($bin)" "$bin tar $work/fs.img | cat >/dev/null"
done
if [ "$(id -u)" = 0 ]; then
	mkdir "$work/mnt"
	mount -o loop,ro "$work/fs.img" "$work/mnt"
	time_it gnu-tar-loop-mount "tar -C $work/mnt -cf - . | cat >/dev/null"
fi
time_it gnu-tar-source-dir "tar -C $work/tree -cf - . | cat >/dev/null"
