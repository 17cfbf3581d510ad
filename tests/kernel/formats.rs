//! What the device shows equals what qemu-img says the image holds: raw, qcow2 (plain,
//! compressed, with a backing chain, over a raw backing file).

use crate::harness::*;
use std::io::Write as _;
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
    // base.qcow2 <- mid.qcow2 <- top.qcow2, backing files named relative to the overlay
    // (qemu-img create -b's usual form). Each overlay gets writes through qemu-io:
    // whole clusters, a partial cluster (copied up from below), zeroes and a compressed
    // cluster. `expected` gets the same writes, as a check on the fixture itself.
    let s = Scratch::new("chain");
    let expected = s.path("expected.raw");
    write_mixed(&expected, SIZE, 4);
    cmd("qemu-img")
        .args(["convert", "-f", "raw", "-O", "qcow2"])
        .arg(&expected)
        .arg(s.path("base.qcow2"))
        .ok();

    let random = s.path("random.bin");
    write_random(&random, MIB, 5);
    let text = s.path("text.bin");
    std::fs::write(&text, "compressible text ".repeat(4096)).unwrap();

    // mid: every 3rd MiB replaced
    let mid_writes: Vec<Write> = (0..SIZE / MIB)
        .step_by(3)
        .map(|m| Write::Data(&random, m * MIB, MIB))
        .collect();
    make_overlay(&s, "mid.qcow2", "base.qcow2", &mid_writes);
    // top: the 2nd half of every 5th MiB, 4 KiB inside a cluster, zeroes, a compressed
    // cluster
    let mut top_writes: Vec<Write> = (0..SIZE / MIB)
        .step_by(5)
        .map(|m| Write::Data(&random, m * MIB + MIB / 2, MIB / 2))
        .collect();
    top_writes.push(Write::Data(&random, 9 * MIB + 4096, 4096));
    top_writes.push(Write::Zero(7 * MIB, 256 * KIB));
    top_writes.push(Write::Compressed(&text, 10 * MIB, 64 * KIB));
    make_overlay(&s, "top.qcow2", "mid.qcow2", &top_writes);
    for write in mid_writes.iter().chain(&top_writes) {
        write.apply(&expected);
    }

    let top = s.path("top.qcow2");
    let info = cmd("qemu-img")
        .args(["info", "--backing-chain"])
        .arg(&top)
        .ok();
    assert!(
        info.stdout.contains("base.qcow2") && info.stdout.contains("mid.qcow2"),
        "not a chain: {}",
        info.stdout
    );
    let reference = reference_raw(&top, &s.path("top.reference.raw"));
    assert_same_bytes(&reference, 0, &expected, 0, SIZE); // the fixture is what we think

    assert_matches_qemu(&s, &top, &[]);
}

/// One write into an overlay (with qemu-io) and into the expected raw image.
enum Write<'a> {
    /// `len` bytes from the start of a file, at an offset.
    Data(&'a Path, u64, u64),
    /// Zeroes.
    Zero(u64, u64),
    /// Like Data, stored as a compressed cluster.
    Compressed(&'a Path, u64, u64),
}

impl Write<'_> {
    fn qemu_io_command(&self) -> String {
        match *self {
            Write::Data(src, offset, len) => {
                format!("write -q -s {} {offset} {len}", src.display())
            }
            Write::Zero(offset, len) => format!("write -q -z {offset} {len}"),
            Write::Compressed(src, offset, len) => {
                format!("write -q -c -s {} {offset} {len}", src.display())
            }
        }
    }

    fn apply(&self, raw: &Path) {
        let file = std::fs::OpenOptions::new().write(true).open(raw).unwrap();
        let (bytes, offset) = match *self {
            Write::Data(src, offset, len) | Write::Compressed(src, offset, len) => {
                (std::fs::read(src).unwrap()[..len as usize].to_vec(), offset)
            }
            Write::Zero(offset, len) => (vec![0u8; len as usize], offset),
        };
        std::os::unix::fs::FileExt::write_all_at(&file, &bytes, offset).unwrap();
    }
}

/// Creates overlay `name` over `backing` (both in the scratch folder, the backing named
/// relatively) and applies `writes` to it.
fn make_overlay(s: &Scratch, name: &str, backing: &str, writes: &[Write]) {
    cmd("qemu-img")
        .current_dir(s.path(""))
        .args([
            "create", "-q", "-f", "qcow2", "-F", "qcow2", "-b", backing, name,
        ])
        .ok();
    let mut io = cmd("qemu-io").args(["-f", "qcow2"]);
    for write in writes {
        io = io.arg("-c").arg(write.qemu_io_command());
    }
    io.arg(s.path(name)).ok();
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

/// Runs the qemu-io `commands` on the qcow2 `image`.
fn qemu_io(image: &Path, commands: &[&str]) {
    let mut io = cmd("qemu-io").args(["-f", "qcow2"]);
    for command in commands {
        io = io.arg("-c").arg(command);
    }
    io.arg(image).ok();
}

#[test]
#[ignore = "needs ublk: run by ci/test (in a VM if needed)"]
fn qcow2_zstd_subclusters_and_snapshot_match_qemu_img() {
    let s = Scratch::new("qcow2-features");
    let raw = s.path("source.raw");
    write_mixed(&raw, SIZE, 11);
    // zstd-compressed clusters with extended L2 entries, then subcluster-sized writes:
    // data, zero subclusters, partly written compressed clusters.
    let image = s.path("zstd-subclusters.qcow2");
    cmd("qemu-img")
        .args(["convert", "-c", "-f", "raw", "-O", "qcow2", "-o"])
        .arg("compression_type=zstd,extended_l2=on,cluster_size=64k")
        .arg(&raw)
        .arg(&image)
        .ok();
    qemu_io(
        &image,
        &[
            "write -P 0x61 6k 4k",
            "write -z 130k 8k",
            "write -P 0x62 1M 70k",
        ],
    );
    assert_matches_qemu(&s, &image, &[]);

    // An internal snapshot, with data changed after it.
    let snapped = s.path("snapped.qcow2");
    cmd("qemu-img")
        .args(["convert", "-f", "raw", "-O", "qcow2"])
        .arg(&raw)
        .arg(&snapped)
        .ok();
    cmd("qemu-img")
        .args(["snapshot", "-c", "before"])
        .arg(&snapped)
        .ok();
    qemu_io(&snapped, &["write -P 0x71 0 1M", "write -z 5M 256k"]);
    let reference = s.path("before.reference.raw");
    cmd("qemu-img")
        .args(["convert", "-l", "snapshot.name=before", "-O", "raw"])
        .arg(&snapped)
        .arg(&reference)
        .ok();
    let dev = Device::attach(&snapped, &["--snapshot", "before"]);
    assert_eq!(dev.info["snapshot"], "before", "{}", dev.info);
    assert_eq!(dev.info["writable"], false, "{}", dev.info);
    assert_device_equals(&dev.path, &reference);
    dev.detach();
    let out = imgblk()
        .args(["attach", "--rw", "--snapshot", "before"])
        .arg(&snapped)
        .fails();
    assert!(out.describe().contains("--snapshot"), "{}", out.describe());
}
