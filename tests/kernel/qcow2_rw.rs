//! qcow2 written through /dev/ublkbN: random writes over a backing file read back exactly
//! and leave an image `qemu-img check` calls clean; and a daemon killed with SIGKILL in
//! the middle of a write storm, twenty times over, never corrupts the image and never
//! loses a write that was flushed; and `fstrim` of a file system on qcow2 gives the
//! clusters of deleted files back.

use crate::harness::*;
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use std::collections::BTreeMap;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::time::Duration;

const SIZE: u64 = 32 * MIB;
const BLOCK: u64 = 4 * KIB;

/// The bytes of block `block` as written in round `round`.
fn pattern(round: u32, block: u64, buf: &mut [u8]) {
    for (i, chunk) in buf.chunks_mut(8).enumerate() {
        let word = (u64::from(round) << 48) ^ (block << 16) ^ i as u64;
        chunk.copy_from_slice(&word.to_le_bytes()[..chunk.len()]);
    }
}

#[test]
#[ignore = "needs ublk: run by ci/test (in a VM if needed)"]
fn random_writes_over_a_backing_file_read_back_and_check_clean() {
    let s = Scratch::new("qcow2-rw");
    let base = s.path("base.raw");
    write_mixed(&base, SIZE, 31);
    let image = s.path("overlay.qcow2");
    cmd("qemu-img")
        .args([
            "create",
            "-q",
            "-f",
            "qcow2",
            "-o",
            "cluster_size=65536",
            "-b",
        ])
        .arg(&base)
        .args(["-F", "raw"])
        .arg(&image)
        .ok();
    let mirror = s.path("mirror.raw");
    std::fs::copy(&base, &mirror).unwrap();
    let mirror_file = std::fs::OpenOptions::new()
        .write(true)
        .open(&mirror)
        .unwrap();

    let dev = Device::attach(&image, &["--rw", "--queues", "2"]);
    let device = open_rw_direct(&dev.path);
    let mut rng = SmallRng::seed_from_u64(7);
    let mut buf = AlignedBuf::new(256 * KIB as usize);
    for _ in 0..1500 {
        let len = rng.gen_range(1..=64) * BLOCK; // crosses 64K clusters often
        let offset = rng.gen_range(0..(SIZE - len) / 512) * 512;
        let data = &mut buf.as_mut_slice()[..len as usize];
        rng.fill(data);
        device.write_all_at(data, offset).unwrap();
        mirror_file.write_all_at(data, offset).unwrap();
    }
    device.sync_all().unwrap();
    assert_device_equals(&dev.path, &mirror);
    drop(device);
    dev.detach();

    assert!(
        !assert_not_corrupt(&image, "after a clean detach"),
        "a clean detach leaked clusters"
    );
    cmd("qemu-img")
        .args(["compare", "-f", "raw", "-F", "qcow2"])
        .arg(&mirror)
        .arg(&image)
        .ok();
}

#[test]
#[ignore = "needs ublk: run by ci/test (in a VM if needed)"]
fn sigkill_during_a_write_storm_never_corrupts_or_loses_flushed_writes() {
    let s = Scratch::new("qcow2-kill");
    let image = s.path("storm.qcow2");
    cmd("qemu-img")
        .args(["create", "-q", "-f", "qcow2"])
        .arg(&image)
        .arg(SIZE.to_string())
        .ok();
    let blocks = SIZE / BLOCK;
    // block -> round of its last flushed write; blocks touched after the last flush of a
    // killed round are uncertain until a later flushed write covers them
    let mut flushed: BTreeMap<u64, u32> = BTreeMap::new();
    let mut rng = SmallRng::seed_from_u64(1234);
    let mut leaks = 0;
    for round in 1..=20u32 {
        let dev = Device::attach(&image, &["--rw"]);
        let pid = dev.pid.expect("daemon pid");
        let device = open_rw_direct(&dev.path);
        let mut buf = AlignedBuf::new(BLOCK as usize);
        let mut durable: Vec<u64> = Vec::new();
        for _ in 0..rng.gen_range(20..80) {
            let block = rng.gen_range(0..blocks);
            pattern(round, block, buf.as_mut_slice());
            device
                .write_all_at(buf.as_mut_slice(), block * BLOCK)
                .unwrap();
            durable.push(block);
        }
        device.sync_all().unwrap();
        for block in durable {
            flushed.insert(block, round);
        }
        // unflushed storm, killed at a random moment
        let storm: Vec<u64> = (0..200).map(|_| rng.gen_range(0..blocks)).collect();
        for block in &storm {
            flushed.remove(block);
        }
        let path = dev.path.clone();
        let writer = std::thread::spawn(move || {
            let device = open_rw_direct(&path);
            let mut buf = AlignedBuf::new(BLOCK as usize);
            for block in storm {
                pattern(round, block, buf.as_mut_slice());
                if device
                    .write_all_at(buf.as_mut_slice(), block * BLOCK)
                    .is_err()
                {
                    break;
                }
            }
        });
        std::thread::sleep(Duration::from_millis(rng.gen_range(0..400)));
        cmd("kill").args(["-9", &pid.to_string()]).ok();
        assert!(wait_until(Duration::from_secs(10), || process_gone(pid)));
        drop(device);
        // The daemon is gone: remove the (quiesced) device; pending writes fail.
        imgblk().args(["detach", "--force"]).arg(&dev.path).ok();
        writer.join().unwrap();
        dev.disarm();
        if assert_not_corrupt(&image, &format!("after kill -9 in round {round}")) {
            leaks += 1;
        }
    }
    // Every flushed block still holds what was flushed.
    let reader = open_direct(&image);
    drop(reader);
    let dev = Device::attach(&image, &[]);
    let device = open_direct(&dev.path);
    let mut got = AlignedBuf::new(BLOCK as usize);
    let mut want = vec![0u8; BLOCK as usize];
    for (&block, &round) in &flushed {
        device
            .read_exact_at(got.as_mut_slice(), block * BLOCK)
            .unwrap();
        pattern(round, block, &mut want);
        assert!(
            got.as_mut_slice() == want.as_slice(),
            "block {block} lost its round-{round} write"
        );
    }
    drop(device);
    dev.detach();
    eprintln!(
        "{} flushed blocks verified; {leaks} of 20 crashes left leaked clusters",
        flushed.len()
    );
}

/// Bytes `path` takes on disk.
fn allocated_bytes(path: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(path).unwrap().blocks() * 512
}

#[test]
#[ignore = "needs ublk: run by ci/test (in a VM if needed)"]
fn fstrim_on_qcow2_frees_the_clusters_of_deleted_files() {
    let s = Scratch::new("qcow2-trim");
    let image = s.path("trim.qcow2");
    qemu_img([
        "create",
        "-q",
        "-f",
        "qcow2",
        image.to_str().unwrap(),
        "64M",
    ]);
    let mut dev = Device::attach(&image, &["--rw"]);
    let path = dev.path.clone();
    cmd("mkfs.ext4")
        .args(["-q", "-E", "nodiscard"])
        .arg(&path)
        .ok();
    let mnt = s.path("mnt");
    dev.mount(&path, &mnt, "");
    write_random(&mnt.join("big"), 24 * MIB, 9);
    cmd("sync").ok();
    let before = allocated_bytes(&image);
    std::fs::remove_file(mnt.join("big")).unwrap();
    // ext4 can trim the file's blocks only once the journal has committed their release.
    cmd("sync").ok();
    let trimmed = cmd("fstrim").arg("-v").arg(&mnt).ok();
    eprintln!("{}", trimmed.stdout);
    dev.umount(&mnt);
    dev.detach();
    let after = allocated_bytes(&image);
    assert!(
        !assert_not_corrupt(&image, "after fstrim"),
        "discarded clusters leaked"
    );
    assert!(
        after + 16 * MIB < before,
        "fstrim of a deleted 24 MiB file left the image at {after} bytes (from {before})"
    );
    // The file system is intact.
    let dev = Device::attach(&image, &[]);
    cmd("e2fsck").arg("-fn").arg(&dev.path).ok();
    dev.detach();
}
