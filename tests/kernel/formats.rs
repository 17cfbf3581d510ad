//! What the device shows equals what qemu-img says the image holds: raw, qcow2 (plain,
//! compressed, with a backing chain, over a raw backing file).

use crate::harness::*;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

/// An odd size: not a multiple of 64 KiB clusters nor of 1 MiB.
const SIZE: u64 = 12 * MIB + 3 * 4096;

#[test]
#[ignore = "needs ublk: run by ci/test (in a VM if needed)"]
fn raw_read_only_matches_file_and_refuses_writes() {
    let s = Scratch::new("raw-ro");
    let image = s.path("disk.raw");
    write_random(&image, SIZE, 1);
    let before = std::fs::read(&image).unwrap();

    let dev = Device::attach_plain(&image, &[]);
    assert!(
        dev.kernel_read_only(),
        "{} should be read-only",
        dev.path.display()
    );
    assert_device_equals(&dev.path, &image);

    // Opening for writing or writing must fail; with a read-only disk the kernel says
    // EROFS/EPERM/EACCES at open or at write (which depends on the kernel version).
    let opened = std::fs::OpenOptions::new()
        .write(true)
        .custom_flags(libc::O_DIRECT)
        .open(&dev.path);
    match opened {
        Err(e) => assert!(
            matches!(
                e.raw_os_error(),
                Some(libc::EROFS | libc::EPERM | libc::EACCES)
            ),
            "opening read-only {} for writing failed with an unexpected error: {e}",
            dev.path.display()
        ),
        Ok(mut file) => {
            let mut buf = AlignedBuf::new(4096);
            buf.as_mut_slice().fill(0xa5);
            let written = file.write(buf.as_mut_slice()).and_then(|_| file.sync_all());
            let e = written.expect_err("writing to a read-only device succeeded");
            assert!(
                matches!(
                    e.raw_os_error(),
                    Some(libc::EROFS | libc::EPERM | libc::EACCES | libc::EIO)
                ),
                "write to a read-only device failed with an unexpected error: {e}"
            );
        }
    }
    assert_device_equals(&dev.path, &image);
    dev.detach();
    assert!(
        std::fs::read(&image).unwrap() == before,
        "the image file changed"
    );
}

/// Attaches `image` (read-only, options as given) and compares the device with
/// `qemu-img convert -O raw` of the same image.
fn assert_matches_qemu(s: &Scratch, image: &Path, options: &[&str]) {
    let name = image.file_name().unwrap().to_string_lossy();
    let reference = reference_raw(image, &s.path(&format!("{name}.reference.raw")));
    let dev = Device::attach(image, options);
    assert_eq!(
        dev.info["format"], "qcow2",
        "attach --json of {name}: {}",
        dev.info
    );
    assert_eq!(
        dev.info["size"].as_u64(),
        Some(file_size(&reference)),
        "{}",
        dev.info
    );
    assert_eq!(dev.info["writable"], false, "{}", dev.info);
    assert_device_equals(&dev.path, &reference);
    dev.detach();
}

#[test]
#[ignore = "needs ublk: run by ci/test (in a VM if needed)"]
fn qcow2_plain_matches_qemu_img() {
    let s = Scratch::new("qcow2");
    let raw = s.path("source.raw");
    write_mixed(&raw, SIZE, 2);
    let image = s.path("disk.qcow2");
    cmd("qemu-img")
        .args(["convert", "-f", "raw", "-O", "qcow2"])
        .arg(&raw)
        .arg(&image)
        .ok();
    assert_matches_qemu(&s, &image, &[]);
    // the format named explicitly, and a shallow queue
    assert_matches_qemu(&s, &image, &["--format", "qcow2", "--depth", "4"]);
}

#[test]
#[ignore = "needs ublk: run by ci/test (in a VM if needed)"]
fn qcow2_compressed_matches_qemu_img() {
    let s = Scratch::new("qcow2-c");
    let raw = s.path("source.raw");
    write_mixed(&raw, SIZE, 3);
    let image = s.path("compressed.qcow2");
    cmd("qemu-img")
        .args(["convert", "-c", "-f", "raw", "-O", "qcow2"])
        .arg(&raw)
        .arg(&image)
        .ok();
    assert!(
        file_size(&image) < file_size(&raw) / 2,
        "the fixture should really be compressed"
    );
    assert_matches_qemu(&s, &image, &[]);
}

#[test]
#[ignore = "needs ublk: run by ci/test (in a VM if needed)"]
fn qcow2_backing_chain_matches_qemu_img() {
    // base.qcow2 <- mid.qcow2 <- top.qcow2, each layer changing some clusters; backing
    // files named relative to the overlay, as qemu-img create -b does by default.
    let s = Scratch::new("chain");
    let (base_raw, mid_raw, top_raw) = (s.path("base.raw"), s.path("mid.raw"), s.path("top.raw"));
    write_mixed(&base_raw, SIZE, 4);
    // mid: base with every 3rd MiB replaced; top: mid with the 2nd half of each 5th
    // MiB replaced and some ranges zeroed.
    std::fs::copy(&base_raw, &mid_raw).unwrap();
    overwrite_every(&mid_raw, 3 * MIB, 0, MIB, 5);
    std::fs::copy(&mid_raw, &top_raw).unwrap();
    overwrite_every(&top_raw, 5 * MIB, MIB / 2, MIB / 2, 6);
    zero_range(&top_raw, 7 * MIB, 256 * KIB);

    cmd("qemu-img")
        .args(["convert", "-f", "raw", "-O", "qcow2"])
        .arg(&base_raw)
        .arg(s.path("base.qcow2"))
        .ok();
    // -B writes only what differs from the backing file
    for (raw, image, backing) in [
        (&mid_raw, "mid.qcow2", "base.qcow2"),
        (&top_raw, "top.qcow2", "mid.qcow2"),
    ] {
        cmd("qemu-img")
            .current_dir(s.path(""))
            .args([
                "convert", "-f", "raw", "-O", "qcow2", "-F", "qcow2", "-B", backing,
            ])
            .arg(raw)
            .arg(image)
            .ok();
    }
    let top = s.path("top.qcow2");
    let info = cmd("qemu-img")
        .arg("info")
        .arg("--backing-chain")
        .arg(&top)
        .ok();
    assert!(
        info.stdout.contains("base.qcow2"),
        "not a chain: {}",
        info.stdout
    );
    assert!(
        file_size(&top) < file_size(&top_raw) / 2,
        "top.qcow2 should hold only its own clusters"
    );

    assert_matches_qemu(&s, &top, &[]);
    // and the device indeed shows top's data, not one of the lower layers
    let dev = Device::attach(&top, &[]);
    assert_device_equals(&dev.path, &top_raw);
    dev.detach();
}

#[test]
#[ignore = "needs ublk: run by ci/test (in a VM if needed)"]
fn qcow2_over_raw_backing_file() {
    let s = Scratch::new("raw-backing");
    let base = s.path("base.raw");
    write_random(&base, SIZE, 7);
    let overlay = s.path("overlay.qcow2");
    cmd("qemu-img")
        .args(["create", "-q", "-f", "qcow2", "-F", "raw", "-b"])
        .arg(&base)
        .arg(&overlay)
        .ok();
    cmd("qemu-io")
        .args([
            "-f",
            "qcow2",
            "-c",
            "write -P 0x5a 1M 192k",
            "-c",
            "write -z 4M 64k",
        ])
        .arg(&overlay)
        .ok();
    assert_matches_qemu(&s, &overlay, &[]);
}

/// Overwrites `len` bytes at `phase` within every `period` of `path` with random data.
fn overwrite_every(path: &Path, period: u64, phase: u64, len: u64, seed: u64) {
    let size = file_size(path);
    let chunk = s_random(len, seed);
    let file = std::fs::OpenOptions::new().write(true).open(path).unwrap();
    let mut at = phase;
    while at + len <= size {
        std::os::unix::fs::FileExt::write_all_at(&file, &chunk, at).unwrap();
        at += period;
    }
}

fn zero_range(path: &Path, offset: u64, len: u64) {
    let file = std::fs::OpenOptions::new().write(true).open(path).unwrap();
    std::os::unix::fs::FileExt::write_all_at(&file, &vec![0u8; len as usize], offset).unwrap();
}

fn s_random(len: u64, seed: u64) -> Vec<u8> {
    use rand::{RngCore, SeedableRng};
    let mut bytes = vec![0u8; len as usize];
    rand::rngs::SmallRng::seed_from_u64(seed).fill_bytes(&mut bytes);
    bytes
}
