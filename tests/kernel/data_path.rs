//! How request bytes move between the kernel and the image: zero copy (Linux 6.16+: the
//! driver lends the daemon the request's pages) and copy give the same bytes, and a
//! transfer that the kernel would have committed on its own (linked to the commit) still
//! ends right when it falls short or fails.

use crate::harness::*;
use std::fs::File;
use std::path::Path;

/// Attaches `image` with `--zero-copy MODE` and checks what the device reports.
fn attach_mode(image: &Path, mode: &str, extra: &[&str], zero_copy: bool) -> Device {
    let mut options = vec!["--zero-copy", mode];
    options.extend_from_slice(extra);
    let dev = Device::attach(image, &options);
    assert_eq!(
        dev.info["zero_copy"].as_bool(),
        Some(zero_copy),
        "zero_copy with --zero-copy {mode} in {}",
        dev.info
    );
    dev
}

/// A qcow2 over a backing file with every kind of extent: data of the top and of the
/// backing file, zero clusters, compressed clusters, unallocated ranges, and a request
/// boundary that splits them unevenly.
fn mixed_qcow2(s: &Scratch) -> std::path::PathBuf {
    let base = s.path("base.qcow2");
    let top = s.path("top.qcow2");
    let raw = s.path("base.raw");
    write_mixed(&raw, 8 * MIB, 7);
    cmd("qemu-img")
        .args(["convert", "-q", "-O", "qcow2"])
        .arg(&raw)
        .arg(&base)
        .ok();
    cmd("qemu-img")
        .args(["create", "-q", "-f", "qcow2", "-F", "qcow2", "-b"])
        .arg(&base)
        .arg(&top)
        .arg("12M")
        .ok();
    cmd("qemu-io")
        .args([
            "-c",
            "write -P 0x11 1M 1M",
            "-c",
            "write -z 3M 512k",
            "-c",
            "write -c -P 0x22 5M 128k",
            "-c",
            "write -P 0x33 9M 64k",
            "-c",
            "write -c -P 0x44 10M 64k",
        ])
        .arg(&top)
        .ok();
    top
}

#[test]
#[ignore = "needs ublk: run by ci/test (in a VM if needed)"]
fn zero_copy_and_copy_serve_and_write_the_same_bytes() {
    let s = Scratch::new("zero-copy");
    let top = mixed_qcow2(&s);
    let expected = reference_raw(&top, &s.path("expected.raw"));
    let zero_copy = kernel_has_zero_copy();

    for (mode, zc) in [("off", false), ("auto", zero_copy)] {
        let dev = attach_mode(&top, mode, &[], zc);
        assert_device_equals(&dev.path, &expected);
        dev.detach();
    }
    if zero_copy {
        attach_mode(&top, "on", &[], true).detach();
    } else {
        let out = imgblk()
            .args(["attach", "--zero-copy", "on"])
            .arg(&top)
            .fails();
        assert!(
            out.stderr.contains("zero copy") && out.stderr.contains("6.16"),
            "a kernel without zero copy should be named as the reason\n{}",
            out.describe()
        );
    }

    // Writes in both modes: in place over data, allocating over the backing file and
    // over holes, unaligned to clusters, all read back the same and leave a clean image.
    for (mode, zc) in [("off", false), ("auto", zero_copy)] {
        let image = s.path(&format!("rw-{mode}.qcow2"));
        std::fs::copy(&top, &image).unwrap();
        let reference = s.path(&format!("rw-{mode}.raw"));
        std::fs::copy(&expected, &reference).unwrap();
        let dev = attach_mode(&image, mode, &["--rw"], zc);
        for (i, (offset, len)) in [
            (0, 4096),
            (MIB + 512, 70_000 - 70_000 % 512),
            (5 * MIB, 256 * KIB),
            (11 * MIB, MIB),
        ]
        .into_iter()
        .enumerate()
        {
            let data = s.path(&format!("write-{mode}-{i}"));
            write_random(&data, len, 100 + i as u64);
            for target in [&dev.path, &reference] {
                cmd("dd")
                    .arg(format!("if={}", data.display()))
                    .arg(format!("of={}", target.display()))
                    .args(["bs=512", "conv=notrunc,fsync", "status=none"])
                    .arg(format!("seek={}", offset / 512))
                    .ok();
            }
        }
        assert_device_equals(&dev.path, &reference);
        dev.detach();
        assert!(
            !assert_not_corrupt(&image, "after writes"),
            "clusters leaked"
        );
        cmd("qemu-img")
            .args(["compare", "-q", "-f", "qcow2", "-F", "raw"])
            .arg(&image)
            .arg(&reference)
            .ok();
    }
}

#[test]
#[ignore = "needs ublk: run by ci/test (in a VM if needed)"]
fn reads_past_the_end_of_a_shrunk_file_are_zeros() {
    let s = Scratch::new("shrunk");
    let image = s.path("disk.raw");
    let kept = 3 * MIB + 1000;
    for (mode, zc) in [("off", false), ("auto", kernel_has_zero_copy())] {
        write_random(&image, 8 * MIB, 3);
        let expected = s.path("expected.raw");
        std::fs::copy(&image, &expected).unwrap();
        let dev = attach_mode(&image, mode, &[], zc);
        // The file shrinks under the device: every read that reaches past the new end
        // comes back short, and the rest of the request must read as zeros.
        let file = std::fs::OpenOptions::new()
            .write(true)
            .open(&image)
            .unwrap();
        file.set_len(kept).unwrap();
        let reference = std::fs::OpenOptions::new()
            .write(true)
            .open(&expected)
            .unwrap();
        reference.set_len(kept).unwrap();
        reference.set_len(8 * MIB).unwrap();
        cmd("blockdev").arg("--flushbufs").arg(&dev.path).ok();
        let copy = s.path("read-back.raw");
        cmd("dd")
            .arg(format!("if={}", dev.path.display()))
            .arg(format!("of={}", copy.display()))
            .args(["bs=256k", "iflag=direct", "status=none"])
            .ok();
        assert_same_bytes(&copy, 0, &expected, 0, 8 * MIB);
        dev.detach();
    }
}

#[test]
#[ignore = "needs ublk: run by ci/test (in a VM if needed)"]
fn a_failing_write_reaches_the_writer_and_the_device_lives_on() {
    require_ublk();
    let s = Scratch::new("enospc");
    let small = s.mkdir("small-fs");
    cmd("mount")
        .args(["-t", "tmpfs", "-o", "size=2m", "tmpfs"])
        .arg(&small)
        .ok();
    with_cleanup(
        || {
            let image = small.join("disk.raw");
            std::fs::File::create(&image)
                .unwrap()
                .set_len(16 * MIB)
                .unwrap();
            let dev = Device::attach(&image, &["--rw"]);
            let data = s.path("data");
            write_random(&data, 8 * MIB, 9);
            let out = cmd("dd")
                .arg(format!("if={}", data.display()))
                .arg(format!("of={}", dev.path.display()))
                .args(["bs=64k", "oflag=direct", "status=none"])
                .fails();
            assert!(
                out.stderr.contains("error"),
                "the writer should see an I/O error\n{}",
                out.describe()
            );
            // What fitted was written, and the device still serves.
            assert_same_bytes(&dev.path, 0, &data, 0, 64 * KIB);
            dev.detach();
        },
        || {
            let _ = cmd("umount").arg(&small).output();
        },
    );
}

/// Cold qcow2 tables are read on the queue's ring while the queue's other requests go on
/// (issue 32): fio's checksummed random reads at depth 32 from two jobs, over a chain of
/// 1 KiB clusters (an L2 table per 128 KiB, so nearly every first read of a region misses
/// in the top image, then in its backing image) served cold, find every block fio wrote
/// into the raw file the chain was made from, in copy and (where the kernel has it) zero
/// copy mode.
#[test]
#[ignore = "needs ublk: run by ci/test (in a VM if needed)"]
fn reads_that_miss_the_table_cache_verify_at_depth() {
    require_ublk();
    // Found the linked-commit bug of Linux 6.10-6.13 (`kernel::links_ublk_commands_safely`):
    // on 6.12 with linked commits, fio read other requests' blocks in about half of the
    // attaches, and the device then hung. So copy mode is attached twice (three times
    // where `auto` copies too), each with the page cache dropped first.
    let s = Scratch::new("cold-tables");
    let raw = s.path("fio.raw");
    File::create(&raw).unwrap().set_len(8 * MIB).unwrap();
    fio_verify(&raw, "--do_verify=1");
    // Each block fio wrote names its own offset (its verify header's `offset`, at byte
    // 16): checked here, so that a failure below is the device's, not fio's.
    let written = std::fs::read(&raw).unwrap();
    for (i, block) in written.chunks(4096).enumerate() {
        let named = u64::from_le_bytes(block[16..24].try_into().unwrap());
        assert_eq!(
            named,
            i as u64 * 4096,
            "fio's block at {} in the raw file",
            i * 4096
        );
    }
    let base = s.path("base.qcow2");
    let top = s.path("top.qcow2");
    cmd("qemu-img")
        .args(["convert", "-q", "-O", "qcow2", "-o", "cluster_size=1024"])
        .arg(&raw)
        .arg(&base)
        .ok();
    cmd("qemu-img")
        .args([
            "create",
            "-q",
            "-f",
            "qcow2",
            "-o",
            "cluster_size=1024",
            "-F",
            "qcow2",
        ])
        .arg("-b")
        .arg(&base)
        .arg(&top)
        .arg("8M")
        .ok();
    // The top holds two stretches of the same bytes, so reads come from both images.
    let all = std::fs::read(&raw).unwrap();
    for (offset, len) in [(MIB, MIB), (5 * MIB + 3 * KIB, 300 * KIB)] {
        let piece = s.path(&format!("piece-{offset}"));
        std::fs::write(&piece, &all[offset as usize..(offset + len) as usize]).unwrap();
        cmd("qemu-io")
            .arg("-c")
            .arg(format!("write -s {} {offset} {len}", piece.display()))
            .arg(&top)
            .ok();
    }
    let zero_copy = kernel_has_zero_copy();
    for (mode, zc) in [("off", false), ("off", false), ("auto", zero_copy)] {
        drop_caches();
        let dev = attach_mode(&top, mode, &[], zc);
        fio_verify(&dev.path, "--verify_only=1");
        assert_device_equals(&dev.path, &raw);
        dev.detach();
    }
}
