//! The kernel scans the partition table of an attached image: /dev/ublkbNpM appear and
//! show the right byte ranges (what `kpartx` / `losetup -o` were for).

use crate::harness::*;
use std::path::Path;

const SECTOR: u64 = 512;

/// Writes a partition table with `sfdisk` (no root needed: it works on a plain file).
fn sfdisk(image: &Path, script: &str) {
    let script_file = image.with_extension("sfdisk");
    std::fs::write(&script_file, script).unwrap();
    let out = cmd("sh")
        .arg("-c")
        .arg("sfdisk --quiet --no-reread --no-tell-kernel \"$0\" < \"$1\"")
        .arg(image)
        .arg(&script_file)
        .output();
    assert!(out.success(), "sfdisk: {}", out.describe());
}

/// (start, size) in bytes of partition `number`, from sysfs.
fn sysfs_extent(dev: &Device, number: u32) -> (u64, u64) {
    let part = format!("{}p{number}", dev.name());
    let start: u64 = dev.sys_attr(&format!("{part}/start")).parse().unwrap();
    let size: u64 = dev.sys_attr(&format!("{part}/size")).parse().unwrap();
    (start * SECTOR, size * SECTOR)
}

#[test]
#[ignore = "needs ublk: run by ci/test (in a VM if needed)"]
fn gpt_partitions_appear_with_their_bytes() {
    let s = Scratch::new("gpt");
    let image = s.path("disk.raw");
    write_random(&image, 24 * MIB, 11);
    // p1: 1 MiB at 1 MiB; p2: from 3 MiB, 17 MiB + 3 sectors (odd on purpose)
    let p2_start = 3 * MIB;
    let p2_size = 17 * MIB + 3 * SECTOR;
    sfdisk(
        &image,
        &format!(
            "label: gpt\nstart=2048, size=2048, type=linux\nstart={}, size={}, type=linux\n",
            p2_start / SECTOR,
            p2_size / SECTOR
        ),
    );

    let dev = Device::attach(&image, &[]);
    let p1 = dev.partition(1);
    let p2 = dev.partition(2);
    assert_eq!(sysfs_extent(&dev, 1), (MIB, MIB));
    assert_eq!(sysfs_extent(&dev, 2), (p2_start, p2_size));
    assert_eq!(block_size(&p1), MIB);
    assert_eq!(block_size(&p2), p2_size);
    assert!(
        !Path::new(&format!("{}p3", dev.path.display())).exists(),
        "a third partition appeared"
    );
    assert_same_bytes(&p2, 0, &image, p2_start, p2_size);
    assert_same_bytes(&p1, 0, &image, MIB, MIB);
    dev.detach();
    assert!(
        !p1.exists() && !p2.exists(),
        "partition nodes outlived detach"
    );
}

#[test]
#[ignore = "needs ublk: run by ci/test (in a VM if needed)"]
fn mbr_partitions_in_qcow2() {
    let s = Scratch::new("mbr");
    let raw = s.path("disk.raw");
    write_random(&raw, 16 * MIB, 12);
    sfdisk(
        &raw,
        "label: dos\nstart=2048, size=4096, type=83\nstart=8192, size=16384, type=83\n",
    );
    let image = s.path("disk.qcow2");
    cmd("qemu-img")
        .args(["convert", "-f", "raw", "-O", "qcow2"])
        .arg(&raw)
        .arg(&image)
        .ok();

    let dev = Device::attach(&image, &[]);
    let p2 = dev.partition(2);
    assert_eq!(sysfs_extent(&dev, 2), (8192 * SECTOR, 16384 * SECTOR));
    assert_same_bytes(&p2, 0, &raw, 8192 * SECTOR, 16384 * SECTOR);
    dev.detach();
}
