//! qcow2 writes checked against QEMU: random writes (and zeroings) go through imgblk and
//! into a raw mirror; `qemu-img check` must find no corruption and `qemu-img compare` no
//! difference. A crash test kills a writer with SIGKILL at random moments and checks that
//! the image is consistent and keeps everything flushed.
//!
//! Needs qemu-utils (`qemu-img`, `qemu-io`); without them the tests fail, saying so.

use imgblk::image::qcow2::entry::{L1_OFFSET_MASK, L2_OFFSET_MASK, L2_ZERO};
use imgblk::image::qcow2::write::COPIED;
use imgblk::image::qcow2::Qcow2Image;
use imgblk::image::{io, DiskImage, ImageFile, OpenOptions};
use rand::rngs::SmallRng;
use rand::{Rng, RngCore, SeedableRng};
use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::process::{Command, Stdio};

const KIB: u64 = 1 << 10;
const MIB: u64 = 1 << 20;

fn s(p: &Path) -> &str {
    p.to_str().expect("test paths are UTF-8")
}

/// Runs `tool args`; returns (exit code, stdout + stderr). Fails if the tool is missing.
fn run_status(tool: &str, args: &[&str]) -> (i32, String) {
    let out = Command::new(tool).args(args).output().unwrap_or_else(|e| {
        panic!("cannot run `{tool}` ({e}): these tests need qemu-utils (qemu-img, qemu-io)")
    });
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.code().unwrap_or(-1), text)
}

fn run(tool: &str, args: &[&str]) -> String {
    let (code, text) = run_status(tool, args);
    assert_eq!(code, 0, "`{tool} {}` failed: {text}", args.join(" "));
    text
}

fn create(path: &Path, options: &[&str], size: u64) {
    let size = size.to_string();
    let mut args = vec!["create", "-q", "-f", "qcow2"];
    args.extend(options);
    args.extend([s(path), size.as_str()]);
    run("qemu-img", &args);
}

/// `qemu-img check`: no corruption allowed; leaks only when `leaks_ok`. Returns the output.
fn check(path: &Path, leaks_ok: bool) -> String {
    let (code, text) = run_status("qemu-img", &["check", "-f", "qcow2", s(path)]);
    let ok = code == 0 || (leaks_ok && code == 3);
    assert!(
        ok,
        "qemu-img check {} exited {code}: {text}",
        path.display()
    );
    if code == 3 {
        let summary: Vec<&str> = text
            .lines()
            .filter(|l| l.contains("leaked clusters"))
            .collect();
        eprintln!("  leaks (allowed after a crash): {}", summary.join("; "));
    }
    text
}

fn open_rw(path: &Path) -> Qcow2Image {
    let file = ImageFile::open(path, true, false).expect("open image read-write");
    let options = OpenOptions {
        writable: true,
        ..OpenOptions::default()
    };
    Qcow2Image::open(file, &options, 0).expect("open qcow2 writable")
}

/// The error a writable open of `path` must give.
fn open_rw_err(path: &Path) -> imgblk::Error {
    let file = ImageFile::open(path, true, false).expect("open image read-write");
    let options = OpenOptions {
        writable: true,
        ..OpenOptions::default()
    };
    match Qcow2Image::open(file, &options, 0) {
        Ok(_) => panic!("{} opened writable, an error was expected", path.display()),
        Err(e) => e,
    }
}

fn open_ro(path: &Path) -> Qcow2Image {
    let file = ImageFile::open(path, false, false).expect("open image");
    Qcow2Image::open(file, &OpenOptions::default(), 0).expect("open qcow2")
}

/// Reads the whole image through imgblk and compares it with `want`.
fn compare_read(image: &dyn DiskImage, want: &[u8], what: &str) {
    let mut got = vec![0u8; 4 * MIB as usize];
    for (i, expect) in want.chunks(got.len()).enumerate() {
        let buf = &mut got[..expect.len()];
        io::read_at(image, buf, (i * 4 * MIB as usize) as u64).expect("read back");
        if buf != expect {
            let at = buf
                .iter()
                .zip(expect)
                .position(|(a, b)| a != b)
                .unwrap_or(0);
            panic!("{what}: byte {} differs", i as u64 * 4 * MIB + at as u64);
        }
    }
}

/// Random guest offset: anywhere, or near a cluster or an L2-table boundary.
fn pick_offset(rng: &mut SmallRng, size: u64, cluster: u64) -> u64 {
    let l2_span = cluster * (cluster / 8);
    let off = match rng.gen_range(0..10) {
        0 | 1 => {
            let b = rng.gen_range(0..=size / cluster) * cluster;
            b.saturating_sub(rng.gen_range(0..4) * 512)
        }
        2 | 3 => {
            let b = rng.gen_range(0..=size / l2_span) * l2_span;
            b.saturating_sub(rng.gen_range(0..128) * 512)
        }
        _ => rng.gen_range(0..size / 512) * 512,
    };
    off.min(size - 512)
}

/// Applies `rounds` random writes and zeroings to `img` and `mirror`, reopening once.
fn random_writes(path: &Path, mirror: &mut [u8], seed: u64, rounds: usize) {
    eprintln!("seed {seed:#x} for {}", path.display());
    let mut rng = SmallRng::seed_from_u64(seed);
    let size = mirror.len() as u64;
    let mut image = open_rw(path);
    let cluster = image.cluster_size();
    let mut data = vec![0u8; 300 * KIB as usize];
    for round in 0..rounds {
        if round == rounds / 2 {
            drop(image);
            check(path, false);
            image = open_rw(path);
        }
        let off = pick_offset(&mut rng, size, cluster);
        let mut len = rng.gen_range(1..=600u64) * 512;
        let unaligned = rng.gen_range(0..20) == 0;
        let (off, len) = if unaligned {
            let o = (off + rng.gen_range(0..512)).min(size - 1);
            (o, rng.gen_range(1..=3 * cluster).min(size - o))
        } else {
            len = len.min(size - off);
            (off, len)
        };
        let range = off as usize..(off + len) as usize;
        match rng.gen_range(0..20) {
            0 | 1 => {
                image
                    .writer()
                    .unwrap()
                    .write_zeroes(off, len)
                    .expect("write_zeroes");
                mirror[range].fill(0);
            }
            2 => image.writer().unwrap().flush().expect("flush"),
            _ => {
                let buf = &mut data[..len as usize];
                rng.fill_bytes(buf);
                io::write_at(&image, buf, off).expect("write_at");
                mirror[range].copy_from_slice(buf);
            }
        }
    }
    compare_read(&image, mirror, "read back while open");
    drop(image);
}

/// Checks `path` with qemu-img against `mirror` and reads it back read-only.
fn verify(dir: &Path, path: &Path, mirror: &[u8]) {
    let out = check(path, false);
    assert!(!out.contains("ERROR"), "{out}");
    let raw = dir.join("mirror.raw");
    std::fs::write(&raw, mirror).expect("write mirror");
    run(
        "qemu-img",
        &["compare", "-f", "raw", "-F", "qcow2", s(&raw), s(path)],
    );
    compare_read(&open_ro(path), mirror, "read back after reopen");
}

fn fresh(options: &[&str], size: u64, seed: u64, rounds: usize) {
    let dir = tempfile::tempdir().expect("tempdir");
    let img = dir.path().join("img.qcow2");
    create(&img, options, size);
    let mut mirror = vec![0u8; size as usize];
    random_writes(&img, &mut mirror, seed, rounds);
    verify(dir.path(), &img, &mirror);
}

#[test]
fn random_writes_v3_64k() {
    fresh(&["-o", "compat=1.1"], 64 * MIB, 0x5eed_0001, 1500);
}

#[test]
fn random_writes_v2() {
    fresh(&["-o", "compat=0.10"], 48 * MIB, 0x5eed_0002, 1500);
}

#[test]
fn random_writes_512_byte_clusters() {
    fresh(
        &["-o", "cluster_size=512"],
        12 * MIB + 1536,
        0x5eed_0003,
        800,
    );
}

#[test]
fn random_writes_refcount_order_1_and_64() {
    fresh(
        &["-o", "cluster_size=4096,refcount_bits=2"],
        16 * MIB,
        0x5eed_0004,
        500,
    );
    fresh(
        &["-o", "cluster_size=4096,refcount_bits=64"],
        16 * MIB,
        0x5eed_0005,
        500,
    );
}

/// Random data in a raw file of `size` bytes, half of it left zero.
fn random_raw(path: &Path, size: u64, seed: u64) -> Vec<u8> {
    let mut rng = SmallRng::seed_from_u64(seed);
    let mut data = vec![0u8; size as usize];
    for chunk in data.chunks_mut(64 * KIB as usize) {
        if rng.gen_bool(0.5) {
            rng.fill_bytes(chunk);
            let n = 4096.min(chunk.len());
            chunk[..n].fill(0x5a); // compressible part
        }
    }
    std::fs::write(path, &data).expect("write raw");
    data
}

/// A qcow2 image at `qcow2` made by `qemu-img convert` (with `extra` options) from random
/// raw data of `size` bytes; returns that data.
fn converted(dir: &Path, qcow2: &Path, extra: &[&str], size: u64, seed: u64) -> Vec<u8> {
    let raw = dir.join("src.raw");
    let data = random_raw(&raw, size, seed);
    let mut args = vec!["convert", "-q", "-f", "raw", "-O", "qcow2"];
    args.extend(extra);
    args.extend([s(&raw), s(qcow2)]);
    run("qemu-img", &args);
    data
}

/// `img.qcow2` in `dir` over a backing `base.qcow2` of random data, created with the
/// extra `options`; returns its path and the data it reads as.
fn over_backing(dir: &Path, size: u64, options: &[&str]) -> (std::path::PathBuf, Vec<u8>) {
    let img = dir.join("img.qcow2");
    let mirror = converted(dir, &dir.join("base.qcow2"), &[], size, 0xba5e);
    let mut all = vec!["-b", "base.qcow2", "-F", "qcow2"];
    all.extend(options);
    create(&img, &all, size);
    (img, mirror)
}

#[test]
fn random_writes_over_qcow2_backing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (img, mut mirror) = over_backing(dir.path(), 40 * MIB, &[]);
    random_writes(&img, &mut mirror, 0x5eed_0006, 1500);
    verify(dir.path(), &img, &mirror);
}

#[test]
fn random_writes_over_compressed_clusters() {
    let dir = tempfile::tempdir().expect("tempdir");
    let img = dir.path().join("img.qcow2");
    let mut mirror = converted(dir.path(), &img, &["-c"], 24 * MIB, 0xc0c0);
    random_writes(&img, &mut mirror, 0x5eed_0007, 1000);
    verify(dir.path(), &img, &mirror);
}

#[test]
fn random_writes_over_zstd_compressed_clusters() {
    // Copy-on-write of a partly overwritten zstd cluster decompresses it first.
    let dir = tempfile::tempdir().expect("tempdir");
    let img = dir.path().join("img.qcow2");
    let options = ["-c", "-o", "compression_type=zstd,cluster_size=16k"];
    let mut mirror = converted(dir.path(), &img, &options, 8 * MIB, 0x2575);
    random_writes(&img, &mut mirror, 0x5eed_0017, 400);
    verify(dir.path(), &img, &mirror);
}

/// Threads writing disjoint stripes that share clusters and L2 tables, while others read:
/// copy-on-write under the lock must never lose a neighbour's in-place write.
#[test]
fn concurrent_writers_share_clusters() {
    let dir = tempfile::tempdir().expect("tempdir");
    let img = dir.path().join("img.qcow2");
    let size = 8 * MIB;
    create(&img, &["-o", "cluster_size=16384"], size);
    const STRIPE: u64 = 6 * KIB;
    const THREADS: u64 = 4;
    let image = open_rw(&img);
    std::thread::scope(|scope| {
        for t in 0..THREADS {
            let image = &image;
            scope.spawn(move || {
                let mut rng = SmallRng::seed_from_u64(0xc0_0000 + t);
                let mut buf = vec![0u8; STRIPE as usize];
                for round in 0..3u64 {
                    for stripe in (t..size / STRIPE).step_by(THREADS as usize) {
                        let off = stripe * STRIPE;
                        fill_pattern(&mut buf, round + 1, off);
                        io::write_at(image, &buf, off).expect("write");
                        if rng.gen_range(0..50) == 0 {
                            image.writer().unwrap().flush().expect("flush");
                        }
                    }
                }
            });
        }
        let image = &image;
        scope.spawn(move || {
            let mut buf = vec![0u8; 64 * KIB as usize];
            for i in 0..200u64 {
                io::read_at(image, &mut buf, (i * 40 * KIB) % (size - 64 * KIB)).expect("read");
            }
        });
    });
    drop(image);
    let mut mirror = vec![0u8; size as usize];
    let written = (size / STRIPE * STRIPE) as usize;
    fill_pattern(&mut mirror[..written], 3, 0);
    verify(dir.path(), &img, &mirror);
}

#[test]
fn refcount_table_grows() {
    let dir = tempfile::tempdir().expect("tempdir");
    let img = dir.path().join("img.qcow2");
    let size = 48 * MIB;
    create(&img, &["-o", "cluster_size=512"], size);
    let before = open_ro(&img).header().refcount_table_offset;
    let mut mirror = vec![0u8; size as usize];
    let mut rng = SmallRng::seed_from_u64(0x9409);
    {
        let image = open_rw(&img);
        let mut buf = vec![0u8; 3 * MIB as usize];
        for i in 0..6u64 {
            rng.fill_bytes(&mut buf);
            let off = i * 7 * MIB + 512 * i;
            io::write_at(&image, &buf, off).expect("write");
            mirror[off as usize..off as usize + buf.len()].copy_from_slice(&buf);
            if i == 0 {
                // Later growths happen between two flushes: the table moves twice.
                image.writer().unwrap().flush().expect("flush");
            }
        }
    }
    let after = open_ro(&img);
    assert_ne!(
        after.header().refcount_table_offset,
        before,
        "the refcount table did not move"
    );
    verify(dir.path(), &img, &mirror);
}

#[test]
fn refuses_writes_read_only_and_with_snapshots() {
    let dir = tempfile::tempdir().expect("tempdir");
    let img = dir.path().join("img.qcow2");
    create(&img, &[], 4 * MIB);
    let ro = open_ro(&img);
    assert!(ro.writer().is_none());
    assert!(io::write_at(&ro, &[1u8; 512], 0).is_err());
    drop(ro);
    assert!(open_rw(&img).writer().is_some());
    run("qemu-img", &["snapshot", "-c", "snap", s(&img)]);
    let err = open_rw_err(&img);
    assert!(err.to_string().contains("snapshots"), "{err}");
}

// ---- crash test ----

const CRASH_SIZE: u64 = 24 * MIB;
const WRITES_PER_EPOCH: usize = 12;

/// One write of a crash-test epoch: offset, length, zeroing or pattern.
fn epoch_ops(seed: u64, epoch: u64, cluster: u64) -> Vec<(u64, u64, bool)> {
    let mut rng = SmallRng::seed_from_u64(seed ^ epoch.wrapping_mul(0x9e37_79b9_7f4a_7c15));
    (0..WRITES_PER_EPOCH)
        .map(|_| {
            let off = pick_offset(&mut rng, CRASH_SIZE, cluster);
            let len = (rng.gen_range(1..=300u64) * 512).min(CRASH_SIZE - off);
            (off, len, rng.gen_range(0..8) == 0)
        })
        .collect()
}

/// The pattern a crash-test write of `epoch` leaves at guest `offset` (8-byte aligned).
fn pattern(epoch: u64, offset: u64) -> [u8; 8] {
    ((epoch << 40) ^ offset ^ 0xa5a5_0000_0000_0000).to_le_bytes()
}

fn fill_pattern(buf: &mut [u8], epoch: u64, offset: u64) {
    for (i, chunk) in buf.chunks_mut(8).enumerate() {
        let p = pattern(epoch, offset + 8 * i as u64);
        chunk.copy_from_slice(&p[..chunk.len()]);
    }
}

fn apply(mirror: &mut [u8], seed: u64, epoch: u64, cluster: u64) {
    for (off, len, zero) in epoch_ops(seed, epoch, cluster) {
        let part = &mut mirror[off as usize..(off + len) as usize];
        if zero {
            part.fill(0);
        } else {
            fill_pattern(part, epoch, off);
        }
    }
}

/// The child side of the crash test: runs only when spawned by `crash_kill9`.
#[test]
fn crash_child() {
    let Ok(path) = std::env::var("IMGBLK_CRASH_IMAGE") else {
        return;
    };
    let seed: u64 = std::env::var("IMGBLK_CRASH_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .expect("seed");
    let image = open_rw(Path::new(&path));
    let cluster = image.cluster_size();
    let mut out = std::io::stdout();
    let mut buf = vec![0u8; 300 * KIB as usize];
    for epoch in 1.. {
        for (off, len, zero) in epoch_ops(seed, epoch, cluster) {
            if zero {
                image
                    .writer()
                    .unwrap()
                    .write_zeroes(off, len)
                    .expect("write_zeroes");
            } else {
                let part = &mut buf[..len as usize];
                fill_pattern(part, epoch, off);
                io::write_at(&image, part, off).expect("write");
            }
        }
        image.writer().unwrap().flush().expect("flush");
        writeln!(out, "flushed {epoch}").expect("pipe");
        out.flush().expect("pipe");
    }
}

#[test]
fn crash_kill9() {
    let exe = std::env::current_exe().expect("test binary");
    let mut rng = SmallRng::seed_from_u64(0xc4a5);
    for round in 0..24u64 {
        let dir = tempfile::tempdir().expect("tempdir");
        let img = dir.path().join("img.qcow2");
        let (options, cluster): (&[&str], u64) = match round % 4 {
            0 => (&["-o", "compat=1.1"], 64 * KIB),
            1 => (&["-o", "compat=0.10,cluster_size=4096"], 4096),
            2 => (&["-o", "cluster_size=512"], 512),
            _ => (&["-b", "base.qcow2", "-F", "qcow2"], 64 * KIB),
        };
        // Over a backing file, what the image starts with is the backing file's data.
        let base = if round % 4 == 3 {
            converted(
                dir.path(),
                &dir.path().join("base.qcow2"),
                &["-c"],
                CRASH_SIZE,
                round,
            )
        } else {
            vec![0u8; CRASH_SIZE as usize]
        };
        create(&img, options, CRASH_SIZE);
        let seed = rng.gen::<u64>();
        eprintln!("crash round {round}: seed {seed:#x}");
        let mut child = Command::new(&exe)
            .args(["crash_child", "--exact", "--nocapture", "--test-threads=1"])
            .env("IMGBLK_CRASH_IMAGE", &img)
            .env("IMGBLK_CRASH_SEED", seed.to_string())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn child");
        let stdout = child.stdout.take().expect("child stdout");
        let reader = std::thread::spawn(move || {
            let mut last = 0u64;
            for line in BufReader::new(stdout).lines().map_while(|l| l.ok()) {
                // libtest may print "test crash_child ... " on the same line first.
                if let Some((_, n)) = line.split_once("flushed ") {
                    last = n.trim().parse().unwrap_or(last);
                }
            }
            last
        });
        std::thread::sleep(std::time::Duration::from_millis(rng.gen_range(30..600)));
        child.kill().expect("kill -9");
        child.wait().expect("wait");
        let last = reader.join().expect("reader");
        eprintln!("  killed after epoch {last}");
        check(&img, true);
        // Everything up to `last` must be there; what epoch last+1 touched may be either.
        let mut want = base;
        for epoch in 1..=last {
            apply(&mut want, seed, epoch, cluster);
        }
        let mut maybe = vec![false; CRASH_SIZE as usize];
        for (off, len, _) in epoch_ops(seed, last + 1, cluster) {
            maybe[off as usize..(off + len) as usize].fill(true);
        }
        let image = open_ro(&img);
        let mut got = vec![0u8; CRASH_SIZE as usize];
        io::read_at(&image, &mut got, 0).expect("read");
        if let Some(bad) = (0..got.len()).find(|&i| !maybe[i] && got[i] != want[i]) {
            panic!("round {round} (seed {seed:#x}): byte {bad} lost after epoch {last}");
        }
    }
}

/// Random discards mixed with writes and flushes. A discard drops the whole clusters in
/// its range (they read as zeroes, even over a backing file), except over a backing file
/// in a version 2 image (`keeps_backed`), which has no zero flag: those stay as they were.
fn random_discards(path: &Path, mirror: &mut [u8], seed: u64, keeps_backed: bool) {
    let mut rng = SmallRng::seed_from_u64(seed);
    let size = mirror.len() as u64;
    let image = open_rw(path);
    let cluster = image.cluster_size();
    for _ in 0..400 {
        let off = pick_offset(&mut rng, size, cluster);
        let len = rng.gen_range(1..=4 * cluster).min(size - off);
        let range = off as usize..(off + len) as usize;
        match rng.gen_range(0..10) {
            0..=5 => {
                image.writer().unwrap().discard(off, len).expect("discard");
                let first = off.div_ceil(cluster) * cluster;
                let last = ((off + len) / cluster * cluster).max(first);
                let whole_end = if off + len == size { size } else { last };
                if !keeps_backed && whole_end > first {
                    mirror[first as usize..whole_end as usize].fill(0);
                }
            }
            6 => image.writer().unwrap().flush().expect("flush"),
            _ => {
                let mut buf = vec![0u8; len as usize];
                rng.fill_bytes(&mut buf);
                io::write_at(&image, &buf, off).expect("write_at");
                mirror[range].copy_from_slice(&buf);
            }
        }
    }
    compare_read(&image, mirror, "read back after discards");
}

/// Bytes the file takes on disk.
fn allocated(path: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(path).expect("stat").blocks() * 512
}

#[test]
fn discard_frees_clusters_without_leaks() {
    let dir = tempfile::tempdir().expect("tempdir");
    let img = dir.path().join("img.qcow2");
    let size = 24 * MIB;
    create(&img, &[], size);
    let mut mirror = vec![0u8; size as usize];
    {
        let image = open_rw(&img);
        let mut rng = SmallRng::seed_from_u64(0xd15c);
        rng.fill_bytes(&mut mirror);
        io::write_at(&image, &mirror, 0).expect("fill");
    }
    let full = allocated(&img);
    random_discards(&img, &mut mirror, 0xd15c_0001, false);
    verify(dir.path(), &img, &mirror);
    {
        // Everything gone: the data clusters' space is back with the file system.
        let image = open_rw(&img);
        image
            .writer()
            .unwrap()
            .discard(0, size)
            .expect("discard all");
    }
    mirror.fill(0);
    verify(dir.path(), &img, &mirror);
    let left = allocated(&img);
    assert!(
        left < full / 4,
        "{left} bytes still allocated after discarding all of {full}"
    );
}

#[test]
fn discard_over_backing_reads_zero_in_v3_and_keeps_data_in_v2() {
    for (compat, keeps_backed) in [("1.1", false), ("0.10", true)] {
        let dir = tempfile::tempdir().expect("tempdir");
        let compat = format!("compat={compat}");
        let (img, mut mirror) = over_backing(dir.path(), 16 * MIB, &["-o", &compat]);
        random_discards(&img, &mut mirror, 0xd15c_0002, keeps_backed);
        verify(dir.path(), &img, &mirror);
    }
}

#[test]
fn overlay_files_take_writes_and_leave_the_base_alone() {
    use imgblk::image::qcow2::create::create_overlay;
    use imgblk::image::Format;
    for (format, name) in [
        (Format::Raw, "base.raw"),
        (Format::Qcow2, "base.qcow2"),
        (Format::Vmdk, "base.vmdk"),
    ] {
        let dir = tempfile::tempdir().expect("tempdir");
        let size = 12 * MIB + 4096; // not a whole number of clusters
        let raw = dir.path().join("data.raw");
        let mut mirror = random_raw(&raw, size, 0x0e01);
        let base = dir.path().join(name);
        if format != Format::Raw {
            let fmt = format.to_string();
            run(
                "qemu-img",
                &["convert", "-q", "-f", "raw", "-O", &fmt, s(&raw), s(&base)],
            );
        } else {
            std::fs::rename(&raw, &base).expect("rename");
        }
        let base_bytes = std::fs::read(&base).expect("read base");
        let overlay = dir.path().join("overlay.qcow2");
        create_overlay(&overlay, &base, format, size).expect("create overlay");
        let info = run("qemu-img", &["info", s(&overlay)]);
        assert!(info.contains(s(&base)), "{info}");
        check(&overlay, false);
        random_writes(&overlay, &mut mirror, 0x0e02, 600);
        verify(dir.path(), &overlay, &mirror);
        assert!(
            std::fs::read(&base).expect("read base") == base_bytes,
            "{format}: the base changed"
        );
    }
}

/// The image file at `path`, open read-write to patch its metadata by hand.
fn patch_file(path: &Path) -> std::fs::File {
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .unwrap()
}

/// The big-endian `u64` at byte `at` of `file`.
fn be64_at(file: &std::fs::File, at: u64) -> u64 {
    let mut b = [0u8; 8];
    file.read_exact_at(&mut b, at).unwrap();
    u64::from_be_bytes(b)
}

/// A 1 MiB image (64 KiB clusters) with guest clusters 0 and 1 written by QEMU (0x11, 0x22),
/// then its first L2 entry pointed at `target(l1_offset, file_len)` with the COPIED bit,
/// as a corrupt image might have it. Returns the image's path and its L1 table's offset.
fn corrupt_first_entry(dir: &Path, target: impl Fn(u64, u64) -> u64) -> (std::path::PathBuf, u64) {
    let img = dir.join("corrupt.qcow2");
    create(&img, &["-o", "cluster_size=65536"], MIB);
    run(
        "qemu-io",
        &[
            "-f",
            "qcow2",
            "-c",
            "write -P 0x11 0 64k",
            "-c",
            "write -P 0x22 64k 64k",
            s(&img),
        ],
    );
    let file = patch_file(&img);
    let l1 = be64_at(&file, 40);
    let l2 = be64_at(&file, l1) & L1_OFFSET_MASK;
    let entry = target(l1, file.metadata().unwrap().len()) & L2_OFFSET_MASK | COPIED;
    file.write_all_at(&entry.to_be_bytes(), l2).unwrap();
    (img, l1)
}

/// The bytes of the cluster at `offset` of `path`.
fn cluster_bytes(path: &Path, offset: u64) -> Vec<u8> {
    let mut buf = vec![0u8; 64 * KIB as usize];
    std::fs::File::open(path)
        .unwrap()
        .read_exact_at(&mut buf, offset)
        .unwrap();
    buf
}

#[test]
fn writes_and_discards_keep_off_metadata_a_corrupt_entry_names() {
    // QEMU refuses such a write ("Preventing invalid write on metadata"); imgblk copies on
    // write into a new cluster, and a discard leaves the named cluster alone.
    for discard in [false, true] {
        let dir = tempfile::tempdir().unwrap();
        let (img, l1) = corrupt_first_entry(dir.path(), |l1, _| l1);
        let l1_before = cluster_bytes(&img, l1);
        {
            let image = open_rw(&img);
            if discard {
                image
                    .writer()
                    .unwrap()
                    .discard(0, 64 * KIB)
                    .expect("discard");
            } else {
                io::write_at(&image, &[0x5a; 64 * KIB as usize], 0).expect("write");
            }
            image.writer().unwrap().flush().expect("flush");
        }
        assert!(
            cluster_bytes(&img, l1) == l1_before,
            "discard {discard}: the L1 table changed"
        );
        // The data cluster the entry lost is leaked; nothing is corrupt.
        check(&img, true);
        let image = open_ro(&img);
        let mut got = vec![0u8; 128 * KIB as usize];
        io::read_at(&image, &mut got, 0).unwrap();
        let first = if discard { 0 } else { 0x5a };
        assert!(
            got[..64 * KIB as usize].iter().all(|&b| b == first),
            "discard {discard}"
        );
        assert!(
            got[64 * KIB as usize..].iter().all(|&b| b == 0x22),
            "discard {discard}"
        );
    }
}

#[test]
fn writes_to_a_cluster_past_the_end_of_the_file_are_copied_on_write() {
    // The named cluster lies where the allocator places new clusters: written in place,
    // it would be shared with the next cluster allocated.
    let dir = tempfile::tempdir().unwrap();
    let (img, _) = corrupt_first_entry(dir.path(), |_, len| len.div_ceil(64 * KIB) * 64 * KIB);
    {
        let image = open_rw(&img);
        io::write_at(&image, &[0x5a; 64 * KIB as usize], 0).unwrap();
        io::write_at(&image, &[0x33; 64 * KIB as usize], 256 * KIB).unwrap();
        image.writer().unwrap().flush().unwrap();
    }
    check(&img, true);
    let image = open_ro(&img);
    for (offset, byte) in [(0, 0x5a), (64 * KIB, 0x22), (256 * KIB, 0x33)] {
        let mut got = vec![0u8; 64 * KIB as usize];
        io::read_at(&image, &mut got, offset).unwrap();
        assert!(got.iter().all(|&b| b == byte), "guest offset {offset}");
    }
}

/// A 1 MiB image `name` in `dir` (64 KiB clusters) with its first guest cluster written by
/// QEMU (0x11), and its file open to patch.
fn one_cluster_image(dir: &Path, name: &str) -> (std::path::PathBuf, std::fs::File) {
    let img = dir.join(name);
    create(&img, &["-o", "cluster_size=65536"], MIB);
    run(
        "qemu-io",
        &["-f", "qcow2", "-c", "write -P 0x11 0 64k", s(&img)],
    );
    let file = patch_file(&img);
    (img, file)
}

#[test]
fn an_l2_table_in_the_refcount_table_refuses_a_writable_open() {
    let dir = tempfile::tempdir().unwrap();
    let (img, file) = one_cluster_image(dir.path(), "clash.qcow2");
    let l1 = be64_at(&file, 40);
    let refcount_table = be64_at(&file, 48);
    file.write_all_at(&(refcount_table | COPIED).to_be_bytes(), l1)
        .unwrap();
    let err = open_rw_err(&img);
    assert_eq!(err.path(), Some(img.as_path()), "{err}");
    let text = err.to_string();
    assert!(
        text.contains("an L2 table and the refcount table share host cluster"),
        "{text}"
    );
    open_ro(&img);
    // An empty L1 table has no cluster: QEMU puts one of size 0 at offset 0, the header's.
    let empty = dir.path().join("empty.qcow2");
    create(&empty, &[], 0);
    assert_eq!(open_rw(&empty).virtual_size(), 0);
}

/// Asserts that `err` is about `path` and names each of `fields`, and that the file still
/// holds `before`.
fn assert_refused(err: &imgblk::Error, path: &Path, fields: &[&str], before: &[u8], what: &str) {
    assert_eq!(err.path(), Some(path), "{what}: {err}");
    let text = err.to_string();
    for field in fields {
        assert!(text.contains(field), "{what}: {field:?} not in {text:?}");
    }
    assert!(
        std::fs::read(path).unwrap() == before,
        "{what}: the image changed"
    );
}

#[test]
fn an_unaligned_l2_entry_fails_writes_and_discards_and_leaves_the_file_alone() {
    // The entry points 512 bytes into the L1 table's cluster: the guard used to look the
    // offset up exactly and miss it, so a write went over the L1 table and a discard
    // punched a hole in it. QEMU marks the image corrupt ("Data cluster offset 0x30200
    // unaligned"); imgblk fails the request, naming the entry and the offset.
    type Op = fn(&Qcow2Image) -> imgblk::Result<()>;
    let ops: [(&str, Op); 4] = [
        ("write", |image| {
            io::write_at(image, &[0x5a; 64 * KIB as usize], 0)
        }),
        ("partial write", |image| {
            io::write_at(image, &[0x5a; 4096], 512)
        }),
        ("discard", |image| {
            image.writer().unwrap().discard(0, 64 * KIB)
        }),
        ("write_zeroes", |image| {
            image.writer().unwrap().write_zeroes(0, 64 * KIB)
        }),
    ];
    for zero_flag in [false, true] {
        for (name, op) in ops {
            let what = format!("{name} (zero flag {zero_flag})");
            let dir = tempfile::tempdir().unwrap();
            let (img, l1) = corrupt_first_entry(dir.path(), |l1, _| l1 + 512);
            if zero_flag {
                // A "preallocated zero cluster": QEMU checks its offset too.
                let file = patch_file(&img);
                let l2 = be64_at(&file, l1) & L1_OFFSET_MASK;
                let entry = be64_at(&file, l2) | L2_ZERO;
                file.write_all_at(&entry.to_be_bytes(), l2).unwrap();
            }
            let before = std::fs::read(&img).unwrap();
            let unaligned = format!("{:#x}", l1 + 512);
            {
                let image = open_rw(&img);
                let err = op(&image).expect_err(&what);
                let fields = [
                    "L1 entry 0",
                    "L2 entry 0",
                    unaligned.as_str(),
                    "not cluster aligned",
                ];
                assert_refused(&err, &img, &fields, &before, &what);
                image.writer().unwrap().flush().expect("flush");
            }
            assert!(
                std::fs::read(&img).unwrap() == before,
                "{what}: the image changed on close"
            );
        }
    }
}

#[test]
fn a_refcount_table_entry_with_reserved_bits_refuses_a_writable_open() {
    // QEMU masks bits 0..=8 of a refcount table entry and `qemu-img check` reports "refcount
    // table entry 0 has reserved bits set" as an error. imgblk read the entry masked but
    // wrote the refcount block back at the unmasked offset, one byte off, over refcounts
    // and the first L1 entry.
    // With a persistent bitmap, the refused open must not clear the autoclear bit either.
    for (bits, bitmap) in [(1u64, false), (0x100, true)] {
        let dir = tempfile::tempdir().unwrap();
        let (img, file) = one_cluster_image(dir.path(), "reft.qcow2");
        if bitmap {
            run("qemu-img", &["bitmap", "--add", s(&img), "b0"]);
        }
        let table = be64_at(&file, 48);
        let entry = be64_at(&file, table) | bits;
        file.write_all_at(&entry.to_be_bytes(), table).unwrap();
        let before = std::fs::read(&img).unwrap();
        let (code, text) = run_status("qemu-img", &["check", "-f", "qcow2", s(&img)]);
        assert_eq!(code, 2, "qemu-img check sees no corruption: {text}");
        assert!(
            text.contains("refcount table entry 0 has reserved bits set"),
            "{text}"
        );
        let err = open_rw_err(&img);
        let fields = ["refcount table entry 0", "reserved bits"];
        assert_refused(&err, &img, &fields, &before, &format!("bits {bits:#x}"));
        let image = open_ro(&img);
        let mut got = vec![0u8; 64 * KIB as usize];
        io::read_at(&image, &mut got, 0).unwrap();
        assert!(got.iter().all(|&b| b == 0x11));
    }
}

#[test]
fn a_corrupt_l1_entry_refuses_a_writable_open() {
    // An L2 table offset that is not cluster aligned (QEMU: "L2 table offset ... unaligned")
    // or reserved bits set (`qemu-img check`: "L1 entry with reserved bits set").
    for (what, change) in [
        ("not cluster aligned", 512u64),
        ("reserved bits", 2),
        ("reserved bits", 1 << 56),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let (img, file) = one_cluster_image(dir.path(), "l1.qcow2");
        let l1 = be64_at(&file, 40);
        let entry = be64_at(&file, l1) + change;
        file.write_all_at(&entry.to_be_bytes(), l1).unwrap();
        let before = std::fs::read(&img).unwrap();
        let (code, text) = run_status("qemu-img", &["check", "-f", "qcow2", s(&img)]);
        assert_ne!(code, 0, "{what}: qemu-img check sees nothing wrong: {text}");
        let err = open_rw_err(&img);
        assert_refused(&err, &img, &["L1 entry 0", what], &before, what);
    }
}

/// A 4 KiB write into a cluster that reads as zeroes writes only those 4 KiB: the rest of
/// the new host cluster is a hole (or past the old end of the file), still reading as
/// zeroes, and the file ends on a cluster boundary. Into a preallocated zero cluster
/// whose host bytes are stale, the stale bytes must not show through.
#[test]
fn partial_writes_into_zero_clusters_write_only_the_part() {
    let dir = tempfile::tempdir().expect("tempdir");
    let img = dir.path().join("img.qcow2");
    let cluster = 64 * KIB;
    create(&img, &["-o", "compat=1.1,cluster_size=65536"], 8 * MIB);
    let mut mirror = vec![0u8; 8 * MIB as usize];
    {
        let image = open_rw(&img);
        let writer = image.writer().expect("writer");
        // Cluster 3: a whole cluster of 0xAA, then zeroed (stays allocated, flagged zero).
        writer
            .write_sync(3 * cluster, &vec![0xaa; cluster as usize])
            .expect("fill");
        writer.write_zeroes(3 * cluster, cluster).expect("zero");
        // Fresh cluster 5 and the preallocated zero cluster 3, 4 KiB each, mid-cluster.
        for (off, byte) in [
            (5 * cluster + 8 * KIB, 0x55u8),
            (3 * cluster + 12 * KIB, 0x66),
        ] {
            writer
                .write_sync(off, &vec![byte; 4096])
                .expect("partial write");
            mirror[off as usize..off as usize + 4096].fill(byte);
        }
        compare_read(&image, &mirror, "before flush");
        writer.flush().expect("flush");
    }
    let len = std::fs::metadata(&img).expect("stat").len();
    assert_eq!(len % cluster, 0, "the file ({len} bytes) ends mid-cluster");
    // The fresh cluster's host bytes: only the 4 KiB written hold data (the file system
    // shows the rest as a hole), so at most 4 KiB of data were written for it.
    let image = open_ro(&img);
    let mut ext = Vec::new();
    image.map(5 * cluster, cluster, &mut ext).expect("map");
    let host = match ext.first().map(|e| &e.source) {
        Some(imgblk::image::Source::Data { offset, .. }) => *offset,
        _ => panic!("cluster 5 is not one run of data"),
    };
    let file = ImageFile::open(&img, false, false).expect("open");
    let (data, _) = file.allocation_at(host).expect("seek");
    assert!(
        !data,
        "the start of the fresh cluster was written (expected a hole)"
    );
    verify(dir.path(), &img, &mirror);
}
