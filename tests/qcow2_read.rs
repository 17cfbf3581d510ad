//! qcow2 reads checked byte for byte against QEMU: every image is made by `qemu-img` /
//! `qemu-io`, converted to raw by `qemu-img convert`, and read back through imgblk. The
//! extent maps are checked against `qemu-img map --output=json`.
//!
//! Needs qemu-utils (`qemu-img`, `qemu-io`); without them the tests fail, saying so.

mod common;

use imgblk::image::qcow2::Qcow2Image;
use imgblk::image::{io, open_image, DiskImage, ImageFile, OpenOptions, Source};
use imgblk::layout::SliceView;
use imgblk::ErrorKind;
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, PoisonError, RwLock};

const SEED: u64 = 0x1d6b_0c0f_2024;
const MIB: u64 = 1 << 20;

/// Runs `tool args`, failing the test with its stderr if it cannot run or fails.
///
/// A tool that finds its image locked is run again a few times: another test thread's
/// child, between its fork and its exec, may still hold the descriptor (and so the
/// QEMU-style lock) of an image this thread has just closed.
fn run(tool: &str, args: &[&str]) -> Vec<u8> {
    let _running = CHILDREN.read().unwrap_or_else(PoisonError::into_inner);
    let mut tries = 0;
    loop {
        let out = Command::new(tool).args(args).output().unwrap_or_else(|e| {
            panic!("cannot run `{tool}` ({e}): these tests need qemu-utils (qemu-img, qemu-io); see ci/install-deps")
        });
        let locked = String::from_utf8_lossy(&out.stderr).contains("Failed to get");
        if locked && tries < 5 {
            tries += 1;
            std::thread::sleep(std::time::Duration::from_millis(100));
            continue;
        }
        assert!(
            out.status.success(),
            "`{tool} {}` failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        );
        return out.stdout;
    }
}

/// Held shared while a qemu tool runs, and alone by [`open_writable`]. A child that one
/// test thread forks holds every descriptor of this process until it execs, and with
/// them the (QEMU-style, per open file) image locks of the other threads' images: a
/// writable open that races such a fork fails on the child's copy of a read lock.
static CHILDREN: RwLock<()> = RwLock::new(());

/// `open_image` with `options` that open for writing, never while a child process runs.
fn open_writable(path: &Path, options: &OpenOptions) -> imgblk::Result<Box<dyn DiskImage>> {
    let _alone = CHILDREN.write().unwrap_or_else(PoisonError::into_inner);
    open_image(path, options)
}

fn qemu_img(args: &[&str]) {
    run("qemu-img", args);
}

/// Runs each of `commands` (qemu-io syntax) on `image` of format `fmt`.
fn qemu_io<C: AsRef<str>>(image: &Path, fmt: &str, commands: &[C]) {
    let mut args = vec!["-f", fmt];
    for c in commands {
        args.extend(["-c", c.as_ref()]);
    }
    let image = image.to_str().unwrap();
    args.push(image);
    run("qemu-io", &args);
}

/// `qemu-img create -f qcow2` with `options` (such as `-o cluster_size=512`).
fn create(path: &Path, options: &[&str], size: &str) {
    let mut args = vec!["create", "-q", "-f", "qcow2"];
    args.extend(options);
    args.extend([s(path), size]);
    qemu_img(&args);
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// Writes a raw file of `size` bytes. Compressible data is a mix of zero, repeated-byte,
/// low-entropy and random 4 KiB blocks; otherwise it is all random.
fn random_raw(path: &Path, size: u64, compressible: bool, rng: &mut SmallRng) {
    let mut data = vec![0u8; size as usize];
    for block in data.chunks_mut(4096) {
        match if compressible { rng.gen_range(0..4) } else { 3 } {
            0 => {}
            1 => block.fill(rng.gen()),
            2 => block
                .iter_mut()
                .for_each(|b| *b = b"qcow2 "[rng.gen_range(0..6)]),
            _ => rng.fill(block),
        }
    }
    std::fs::write(path, data).unwrap();
}

/// The first place `got` and `want` differ, for a readable failure (memcmp first: the
/// element-wise search is slow in debug builds).
fn first_difference(got: &[u8], want: &[u8]) -> Option<usize> {
    if got == want {
        return None;
    }
    got.iter()
        .zip(want)
        .position(|(a, b)| a != b)
        .or(Some(got.len().min(want.len())))
}

/// Reads `image` fully and at 300 random places, comparing with QEMU's raw conversion
/// of the file at `path`.
fn assert_reads_like_qemu(image: &dyn DiskImage, path: &Path) {
    assert_reads_like_qemu_convert(image, path, &[]);
}

/// [`assert_reads_like_qemu`] against `qemu-img convert` with `extra` options (`-l` for
/// a snapshot). `qemu-img convert -l` keeps the image's current size, where a snapshot
/// taken before a resize is its own (smaller) size: QEMU's output must then be zero past
/// ours.
fn assert_reads_like_qemu_convert(image: &dyn DiskImage, path: &Path, extra: &[&str]) {
    let raw = path.with_extension(format!("expected{}.raw", extra.join("").replace('=', "")));
    let mut args = vec!["convert", "-O", "raw"];
    args.extend(extra);
    args.extend([s(path), s(&raw)]);
    qemu_img(&args);
    let mut want = std::fs::read(&raw).unwrap();
    let size = image.virtual_size();
    if !extra.is_empty() && size < want.len() as u64 {
        assert!(
            want[size as usize..].iter().all(|&b| b == 0),
            "{}: qemu reads data past the snapshot's size",
            path.display()
        );
        want.truncate(size as usize);
    }
    assert_eq!(size, want.len() as u64, "{}: virtual size", path.display());
    let mut got = vec![0u8; want.len()];
    io::read_at(image, &mut got, 0).unwrap();
    if let Some(at) = first_difference(&got, &want) {
        panic!(
            "{}: full read differs from qemu at byte {at:#x}",
            path.display()
        );
    }
    let mut rng = SmallRng::seed_from_u64(SEED);
    for i in 0..300 {
        let max = match i % 3 {
            0 => 4096,
            1 => 256 << 10,
            _ => 1 << 20,
        }
        .min(size);
        let len = rng.gen_range(1..=max);
        let offset = rng.gen_range(0..=size - len);
        let mut buf = vec![0u8; len as usize];
        io::read_at(image, &mut buf, offset).unwrap_or_else(|e| {
            panic!(
                "{}: read {offset:#x}+{len} (seed {SEED:#x}, read {i}): {e}",
                path.display()
            )
        });
        let want = &want[offset as usize..(offset + len) as usize];
        if let Some(at) = first_difference(&buf, want) {
            panic!(
                "{}: read {offset:#x}+{len} (seed {SEED:#x}, read {i}) differs from qemu at byte {:#x}",
                path.display(),
                offset + at as u64
            );
        }
    }
}

/// How one 512-byte sector is classified by a map.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Class {
    Data { depth: u32, offset: u64 },
    Compressed { depth: u32 },
    Zero { depth: u32 },
    Unallocated { depth: u32 },
}

/// Per-sector classification from imgblk's map.
fn our_classes(image: &dyn DiskImage) -> Vec<Class> {
    let mut extents = Vec::new();
    image.map(0, image.virtual_size(), &mut extents).unwrap();
    let mut classes = Vec::new();
    for e in &extents {
        assert!(e.len % 512 == 0, "extent {e:?} is not whole sectors");
        for sector in 0..e.len / 512 {
            let depth = e.depth;
            classes.push(match e.source {
                Source::Data { offset, .. } => Class::Data {
                    depth,
                    offset: offset + sector * 512,
                },
                Source::Compressed(_) => Class::Compressed { depth },
                Source::Zero => Class::Zero { depth },
                Source::Unallocated => Class::Unallocated { depth },
                Source::Transformed { .. } => panic!("qcow2 made a transformed extent: {e:?}"),
            });
        }
    }
    classes
}

/// Per-sector classification from `qemu-img map --output=json`.
fn qemu_classes(path: &Path) -> Vec<Class> {
    let json = run("qemu-img", &["map", "--output=json", s(path)]);
    let entries: Vec<serde_json::Value> = serde_json::from_slice(&json).unwrap();
    let mut classes = Vec::new();
    for e in &entries {
        let field = |name: &str| {
            e.get(name)
                .unwrap_or_else(|| panic!("qemu map entry lacks {name}: {e}"))
        };
        let num = |name: &str| field(name).as_u64().unwrap();
        let flag = |name: &str| field(name).as_bool().unwrap();
        let depth = num("depth") as u32;
        for sector in 0..num("length") / 512 {
            classes.push(if !flag("present") {
                Class::Unallocated { depth }
            } else if flag("compressed") {
                Class::Compressed { depth }
            } else if flag("data") {
                Class::Data {
                    depth,
                    offset: num("offset") + sector * 512,
                }
            } else {
                Class::Zero { depth }
            });
        }
    }
    classes
}

/// imgblk's extent map says, sector by sector, what `qemu-img map` says.
fn assert_maps_like_qemu(image: &dyn DiskImage, path: &Path) {
    let ours = our_classes(image);
    let theirs = qemu_classes(path);
    assert_eq!(
        ours.len(),
        theirs.len(),
        "{}: sectors mapped",
        path.display()
    );
    if let Some(i) = ours.iter().zip(&theirs).position(|(a, b)| a != b) {
        panic!(
            "{}: sector {i} (byte {:#x}) mapped as {:?}, qemu says {:?}",
            path.display(),
            i * 512,
            ours[i],
            theirs[i]
        );
    }
}

/// Opens `path` with default options and checks reads and map against QEMU.
fn check(path: &Path) -> Box<dyn DiskImage> {
    let image = open_image(path, &OpenOptions::default()).unwrap();
    assert_reads_like_qemu(&*image, path);
    assert_maps_like_qemu(&*image, path);
    common::check_data_runs(&*image, &path.display().to_string(), SEED, 400);
    image
}

/// Opens the qcow2 at `path` itself, with an L2 cache of `cache_bytes`.
fn open_qcow2(path: &Path, cache_bytes: u64) -> Qcow2Image {
    let options = OpenOptions {
        l2_cache_bytes: Some(cache_bytes),
        ..OpenOptions::default()
    };
    Qcow2Image::open(ImageFile::open(path, false, false).unwrap(), &options, 0).unwrap()
}

/// qemu-io writes of patterns at the start, middle (unaligned) and end of a `size` image.
fn pattern_writes(size: u64) -> Vec<String> {
    vec![
        "write -P 0xab 0 100k".into(),
        "write -P 0xcd 1049088 300000".into(), // 1 MiB + 512, unaligned length
        format!("write -P 0xef {} 70000", size / 2 - 3000),
        format!("write -P 0x11 {} 4096", size - 4096),
    ]
}

#[test]
fn v3_pattern_and_converted_images() {
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("pattern.qcow2");
    create(&img, &[], "32M");
    qemu_io(&img, "qcow2", &pattern_writes(32 * MIB));
    check(&img);

    let converted = converted(dir.path(), 8 * MIB, false, SEED, &[]);
    let image = check(&converted);
    assert!(common::check_data_runs(&*image, "converted", SEED, 400) > 0);
    // Clusters converted in order are contiguous: a 1 MiB read is a single extent.
    let mut extents = Vec::new();
    image.map(MIB, MIB, &mut extents).unwrap();
    assert_eq!(extents.len(), 1, "{extents:?}");
    assert!(
        matches!(extents[0].source, Source::Data { .. }),
        "{extents:?}"
    );
    assert_eq!((extents[0].len, extents[0].depth), (MIB, 0));
}

/// Converts a new random raw file of `size` bytes to qcow2 with `qemu-img convert`
/// and `extra` options; returns the qcow2's path.
fn converted(dir: &Path, size: u64, compressible: bool, seed: u64, extra: &[&str]) -> PathBuf {
    let mut rng = SmallRng::seed_from_u64(seed);
    let raw = dir.join(format!("source-{seed:x}.raw"));
    random_raw(&raw, size, compressible, &mut rng);
    let img = dir.join(format!("converted-{seed:x}.qcow2"));
    let mut args = vec!["convert", "-O", "qcow2"];
    args.extend(extra);
    args.extend([s(&raw), s(&img)]);
    qemu_img(&args);
    img
}

#[test]
fn v2_image() {
    let dir = tempfile::tempdir().unwrap();
    let img = converted(dir.path(), 6 * MIB, true, SEED ^ 2, &["-o", "compat=0.10"]);
    qemu_io(&img, "qcow2", &pattern_writes(6 * MIB));
    let image = check(&img);
    let q = open_qcow2(&img, 1 << 20);
    assert_eq!(q.header().version, 2);
    assert_eq!(image.chain().len(), 1);
}

#[test]
fn compressed_image() {
    let dir = tempfile::tempdir().unwrap();
    let img = converted(
        dir.path(),
        8 * MIB,
        true,
        SEED ^ 3,
        &["-c", "-o", "cluster_size=16k"],
    );
    let image = check(&img);
    let mut extents = Vec::new();
    image.map(0, 8 * MIB, &mut extents).unwrap();
    let compressed = extents
        .iter()
        .filter(|e| matches!(e.source, Source::Compressed(_)))
        .count();
    assert!(
        compressed > 10,
        "only {compressed} compressed extents: {extents:?}"
    );
}

#[test]
fn zstd_compressed_images() {
    let dir = tempfile::tempdir().unwrap();
    for (seed, cluster) in [(5u64, "16k"), (6, "64k"), (7, "2M")] {
        let options = format!("compression_type=zstd,cluster_size={cluster}");
        let img = converted(
            dir.path(),
            8 * MIB,
            true,
            SEED ^ seed,
            &["-c", "-o", &options],
        );
        let q = open_qcow2(&img, 1 << 20);
        assert_eq!(q.header().codec, imgblk::image::Codec::Zstd, "{options}");
        let image = check(&img);
        let mut extents = Vec::new();
        image.map(0, 8 * MIB, &mut extents).unwrap();
        assert!(
            extents
                .iter()
                .any(|e| matches!(e.source, Source::Compressed(_))),
            "{options}: no compressed extents: {extents:?}"
        );
    }
}

/// A compressed cluster read for the first time is decoded only as far as the read
/// reaches, and kept so; a read past what is kept decodes the whole cluster.
#[test]
fn compressed_clusters_decode_as_far_as_reads_reach() {
    let dir = tempfile::tempdir().unwrap();
    for codec in ["zlib", "zstd"] {
        let options = format!("compression_type={codec},cluster_size=64k");
        let img = converted(dir.path(), 4 * MIB, true, SEED ^ 9, &["-c", "-o", &options]);
        let want = std::fs::read(dir.path().join(format!("source-{:x}.raw", SEED ^ 9))).unwrap();
        let image = open_qcow2(&img, 1 << 20);
        let mut extents = Vec::new();
        image.map(0, 4 * MIB, &mut extents).unwrap();
        let mut guest = 0;
        let mut stored = None;
        for extent in &extents {
            if let Source::Compressed(cluster) = extent.source {
                if cluster.skip == 0 && extent.len == 65536 {
                    stored = Some(cluster.offset);
                    break;
                }
            }
            guest += extent.len;
        }
        let stored = stored.unwrap_or_else(|| panic!("{codec}: no whole compressed cluster"));
        let kept = || {
            let cached = image.data_file().decoded_clusters().get(stored);
            cached.map_or(0, |decoded| decoded.len())
        };
        let read = |at: u64, len: usize| {
            let mut buf = vec![0u8; len];
            io::read_at(&image, &mut buf, guest + at).unwrap();
            let at = (guest + at) as usize;
            assert!(buf == want[at..at + len], "{codec}: bytes at {at:#x}");
        };
        read(8192, 4096);
        assert_eq!(kept(), 12288, "{codec}: a first read decodes up to its end");
        read(0, 4096);
        assert_eq!(
            kept(),
            12288,
            "{codec}: a read inside what is kept decodes nothing"
        );
        read(32768, 4096);
        assert_eq!(
            kept(),
            65536,
            "{codec}: a read past it decodes the whole cluster"
        );
    }
}

/// Creates a qcow2 overlay at `path` of `size` on `backing` (as named, relative to the
/// overlay) and runs the qemu-io `writes` on it.
fn overlay(path: &Path, backing: &str, backing_fmt: &str, size: &str, writes: &[&str]) {
    create(path, &["-b", backing, "-F", backing_fmt], size);
    qemu_io(path, "qcow2", writes);
}

/// base (raw, in another directory) <- mid (qcow2, smaller than top) <- top, all named by
/// relative paths.
fn make_chain(dir: &Path) -> PathBuf {
    let bases = dir.join("bases");
    let images = dir.join("images");
    std::fs::create_dir_all(&bases).unwrap();
    std::fs::create_dir_all(&images).unwrap();
    let mut rng = SmallRng::seed_from_u64(SEED ^ 4);
    random_raw(&bases.join("base.raw"), 12 * MIB, false, &mut rng);
    let mid = images.join("mid.qcow2");
    let top = images.join("top.qcow2");
    overlay(
        &mid,
        "../bases/base.raw",
        "raw",
        "20M",
        &[
            "write -P 0x22 512k 512k",
            "write -z 2M 128k",
            "write -P 0x23 11M 2M", // across the end of base
            "write -z -u 15M 64k",
        ],
    );
    overlay(
        &top,
        "mid.qcow2",
        "qcow2",
        "24M",
        &[
            "write -P 0x33 768k 64k",
            "write -P 0x34 1000000 5000",
            "write -z 3M 1M",
            "write -P 0x35 21M 100k",
        ],
    );
    top
}

#[test]
fn backing_chain() {
    let dir = tempfile::tempdir().unwrap();
    let top = make_chain(dir.path());
    let image = check(&top);
    assert!(common::check_data_runs(&*image, "chain", SEED, 400) > 0);
    let chain = image.chain();
    let names: Vec<_> = chain
        .iter()
        .map(|c| c.path.file_name().unwrap().to_owned())
        .collect();
    assert_eq!(names, ["top.qcow2", "mid.qcow2", "base.raw"]);
    assert_eq!(
        chain.iter().map(|c| c.virtual_size).collect::<Vec<_>>(),
        [24 * MIB, 20 * MIB, 12 * MIB]
    );
}

#[test]
fn tiny_l2_cache_and_concurrent_readers() {
    let dir = tempfile::tempdir().unwrap();
    let top = make_chain(dir.path());
    // One L2 table per image: every other lookup evicts.
    let image = open_qcow2(&top, 1);
    assert_reads_like_qemu(&image, &top);
    assert!(image.l2_cache().resident() <= image.l2_cache().capacity());

    let img = dir.path().join("small-clusters.qcow2");
    create(&img, &["-o", "cluster_size=512"], "4M");
    qemu_io(&img, "qcow2", &pattern_writes(4 * MIB));
    let want = {
        let raw = img.with_extension("raw");
        qemu_img(&["convert", "-O", "raw", s(&img), s(&raw)]);
        std::fs::read(raw).unwrap()
    };
    let image = open_qcow2(&img, 2 * 512);
    std::thread::scope(|scope| {
        for t in 0..4u64 {
            let (image, want) = (&image, &want);
            scope.spawn(move || {
                let mut rng = SmallRng::seed_from_u64(SEED + t);
                for i in 0..200 {
                    let len = rng.gen_range(1..=64 << 10);
                    let offset = rng.gen_range(0..=4 * MIB - len);
                    let mut buf = vec![0u8; len as usize];
                    io::read_at(image, &mut buf, offset).unwrap();
                    let want = &want[offset as usize..(offset + len) as usize];
                    assert!(
                        buf == want,
                        "thread {t} read {i} at {offset:#x}+{len} (seed {:#x})",
                        SEED + t
                    );
                }
            });
        }
    });
}

#[test]
fn zero_clusters() {
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("zero.qcow2");
    create(&img, &[], "16M");
    qemu_io(
        &img,
        "qcow2",
        &[
            "write -P 0x5a 0 6M",
            "write -z 1M 512k",
            "write -z -u 3M 1M",
            "write -z 8M 2M",
        ],
    );
    let image = check(&img);
    let mut extents = Vec::new();
    image.map(MIB, MIB / 2, &mut extents).unwrap();
    assert_eq!(extents.len(), 1, "{extents:?}");
    assert_eq!(extents[0].source, Source::Zero);
}

#[test]
fn small_and_large_clusters_with_odd_size() {
    let dir = tempfile::tempdir().unwrap();
    let size = 5 * MIB + 1536;
    for cluster in ["512", "2M"] {
        let img = dir.path().join(format!("odd-{cluster}.qcow2"));
        let opt = format!("cluster_size={cluster}");
        create(&img, &["-o", &opt], &size.to_string());
        qemu_io(&img, "qcow2", &pattern_writes(size));
        qemu_io(
            &img,
            "qcow2",
            &[format!("write -P 0x77 {} 1536", size - 1536)],
        );
        check(&img);
    }
}

#[test]
fn missing_backing_file_names_the_tried_path() {
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("orphan.qcow2");
    create(
        &img,
        &["-u", "-b", "nope/missing.qcow2", "-F", "qcow2"],
        "1M",
    );
    let err = open_image(&img, &OpenOptions::default())
        .err()
        .expect("orphan opened");
    assert_eq!(err.kind(), ErrorKind::NotFound);
    let tried = dir.path().join("nope/missing.qcow2");
    let msg = err.to_string();
    assert!(msg.contains(&tried.display().to_string()), "{msg}");
    assert!(msg.contains(s(&img)), "{msg}");
}

/// Opens `path` at snapshot `name` (read-only).
fn open_snapshot(path: &Path, name: &str) -> imgblk::Result<Box<dyn DiskImage>> {
    let options = OpenOptions {
        snapshot: Some(name.into()),
        ..OpenOptions::default()
    };
    open_image(path, &options)
}

#[test]
fn internal_snapshots() {
    let dir = tempfile::tempdir().unwrap();
    // A backing file under the image, so snapshots also read through to it.
    let mut rng = SmallRng::seed_from_u64(SEED ^ 9);
    let base = dir.path().join("base.raw");
    random_raw(&base, 6 * MIB, true, &mut rng);
    let img = dir.path().join("snap.qcow2");
    overlay(
        &img,
        "base.raw",
        "raw",
        "8M",
        &["write -P 0x11 0 1M", "write -z 3M 64k"],
    );
    qemu_img(&["snapshot", "-c", "one", s(&img)]);
    qemu_io(
        &img,
        "qcow2",
        &["write -P 0x22 512k 1M", "write -P 0x23 7M 300k"],
    );
    qemu_img(&["snapshot", "-c", "two", s(&img)]);
    qemu_img(&["resize", "-q", s(&img), "12M"]);
    qemu_io(
        &img,
        "qcow2",
        &["write -P 0x33 100k 1M", "write -P 0x34 11M 1M"],
    );
    qemu_img(&["snapshot", "-c", "3", s(&img)]); // named like its own id
    qemu_io(&img, "qcow2", &["write -P 0x44 0 64k"]);

    let active = check(&img);
    let listed = imgblk::image::qcow2::snapshot::list(&img).unwrap();
    let names: Vec<(&str, &str, u64)> = listed
        .iter()
        .map(|s| (s.id.as_str(), s.name.as_str(), s.disk_size))
        .collect();
    assert_eq!(
        names,
        [
            ("1", "one", 8 * MIB),
            ("2", "two", 8 * MIB),
            ("3", "3", 12 * MIB)
        ]
    );
    assert!(listed
        .iter()
        .all(|s| s.date_sec > 1_600_000_000 && s.vm_state_size == 0));
    for name in ["one", "two", "3"] {
        let snap = open_snapshot(&img, name).unwrap();
        assert!(snap.writer().is_none());
        let option = format!("snapshot.name={name}");
        assert_reads_like_qemu_convert(&*snap, &img, &["-l", &option]);
    }
    // By id, when no snapshot has that name.
    let by_id = open_snapshot(&img, "2").unwrap();
    assert_eq!(by_id.virtual_size(), 8 * MIB);
    assert_reads_like_qemu_convert(&*by_id, &img, &["-l", "snapshot.id=2"]);

    let err = open_snapshot(&img, "nope").err().expect("unknown snapshot");
    assert_eq!(err.kind(), ErrorKind::NotFound);
    let msg = err.to_string();
    assert!(
        msg.contains("'two' (id 2)") && msg.contains("snap.qcow2"),
        "{msg}"
    );
    drop((active, by_id));
    let writable = OpenOptions {
        snapshot: Some("one".into()),
        writable: true,
        ..OpenOptions::default()
    };
    let msg = open_writable(&img, &writable)
        .err()
        .expect("writable")
        .to_string();
    assert!(msg.contains("read-only"), "{msg}");
    let msg = open_snapshot(&base, "one").err().expect("raw").to_string();
    assert!(msg.contains("only qcow2"), "{msg}");
}

/// qemu-io writes that leave clusters of `cluster` bytes partly allocated at subcluster
/// granularity: data subclusters, zero subclusters over a backing file, and whole zero
/// and data clusters.
fn subcluster_writes(cluster: u64) -> Vec<String> {
    let sub = cluster / 32;
    vec![
        format!("write -P 0x51 {} {}", sub * 3, sub * 2),
        format!("write -P 0x52 {} {}", cluster + sub * 31, sub + 100),
        format!("write -z {} {}", cluster * 3 + sub * 5, sub * 4),
        format!("write -z {} {}", cluster * 5, cluster),
        format!("write -P 0x53 {} {}", cluster * 6 + 700, cluster * 2),
        format!("write -P 0x54 {} {}", cluster * 9, sub),
        format!("write -z {} {}", cluster * 9 + sub * 2, sub),
    ]
}

#[test]
fn extended_l2_subclusters() {
    let dir = tempfile::tempdir().unwrap();
    let mut rng = SmallRng::seed_from_u64(SEED ^ 10);
    let base = dir.path().join("base.raw");
    random_raw(&base, 24 * MIB, false, &mut rng);
    for (cluster, name) in [(16u64 << 10, "16k"), (64 << 10, "64k"), (2 << 20, "2M")] {
        let img = dir.path().join(format!("sub-{name}.qcow2"));
        let options = format!("extended_l2=on,cluster_size={name}");
        create(
            &img,
            &["-b", "base.raw", "-F", "raw", "-o", &options],
            "24M",
        );
        qemu_io(&img, "qcow2", &subcluster_writes(cluster));
        let image = check(&img);
        let q = open_qcow2(&img, 1 << 20);
        assert!(q.header().extended_l2(), "{options}");
        // A cluster split into pieces: backing, data, backing (cluster 0).
        let mut extents = Vec::new();
        image.map(0, cluster, &mut extents).unwrap();
        let depths: Vec<u32> = extents.iter().map(|e| e.depth).collect();
        assert_eq!(depths, [1, 0, 1], "{options}: {extents:?}");
        // No backing file: unallocated subclusters read as zeroes.
        let plain = dir.path().join(format!("plain-{name}.qcow2"));
        create(&plain, &["-o", &options], "24M");
        qemu_io(&plain, "qcow2", &subcluster_writes(cluster));
        check(&plain);
    }
    // zstd-compressed clusters with extended L2 entries (16 KiB clusters).
    let img = converted(
        dir.path(),
        4 * MIB,
        true,
        SEED ^ 11,
        &[
            "-c",
            "-o",
            "extended_l2=on,cluster_size=16k,compression_type=zstd",
        ],
    );
    qemu_io(&img, "qcow2", &subcluster_writes(16 << 10));
    check(&img);
    // Writing is refused, naming the feature.
    let options = OpenOptions {
        writable: true,
        ..OpenOptions::default()
    };
    let msg = open_writable(&img, &options).err().expect("rw").to_string();
    assert!(msg.contains("extended L2"), "{msg}");
}

#[test]
fn external_data_files() {
    let dir = tempfile::tempdir().unwrap();
    let images = dir.path().join("images");
    std::fs::create_dir_all(&images).unwrap();
    let mut rng = SmallRng::seed_from_u64(SEED ^ 12);
    let base = dir.path().join("base.raw");
    random_raw(&base, 8 * MIB, false, &mut rng);
    for (name, raw_external) in [("plain", false), ("raw", true)] {
        let img = images.join(format!("{name}.qcow2"));
        let data = images.join(format!("{name}.data"));
        let mut options = format!("data_file={}", s(&data));
        if raw_external {
            options.push_str(",data_file_raw=on");
        }
        // QEMU allows no backing file with data_file_raw.
        let backing: &[&str] = if raw_external {
            &[]
        } else {
            &["-b", s(&base), "-F", "raw"]
        };
        create(
            &img,
            &[&["-o", options.as_str()][..], backing].concat(),
            "8M",
        );
        qemu_io(&img, "qcow2", &pattern_writes(8 * MIB));
        qemu_io(&img, "qcow2", &["write -z 2M 128k"]);
        let image = check(&img);
        let q = open_qcow2(&img, 1 << 20);
        assert_eq!(q.header().data_file.as_deref(), Some(s(&data)));
        assert_eq!(q.data_file().path(), data);
        drop((image, q));

        // A relative name is relative to the image's folder (QEMU takes it relative to
        // its working directory; we do not depend on ours).
        let relative = format!("data_file={name}.data");
        qemu_img(&["amend", "-f", "qcow2", "-o", &relative, s(&img)]);
        let want = std::fs::read(img.with_extension("expected.raw")).unwrap();
        let image = open_image(&img, &OpenOptions::default()).unwrap();
        let mut got = vec![0u8; want.len()];
        io::read_at(&*image, &mut got, 0).unwrap();
        assert!(
            got == want,
            "{name}: read with a relative data file name differs"
        );
        drop(image);

        let writable = OpenOptions {
            writable: true,
            ..OpenOptions::default()
        };
        let msg = open_writable(&img, &writable)
            .err()
            .expect("rw")
            .to_string();
        assert!(msg.contains("external data file"), "{msg}");
        std::fs::rename(&data, images.join("moved")).unwrap();
        let err = open_image(&img, &OpenOptions::default())
            .err()
            .expect("no data file");
        assert_eq!(err.kind(), ErrorKind::NotFound);
        assert!(err.to_string().contains(&format!("{name}.data")), "{err}");
    }
}

#[test]
fn persistent_bitmaps_are_ignored_safely() {
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("bitmaps.qcow2");
    create(&img, &[], "8M");
    qemu_img(&["bitmap", "--add", s(&img), "b0"]);
    qemu_io(&img, "qcow2", &pattern_writes(8 * MIB));
    let q = open_qcow2(&img, 1 << 20);
    assert!(
        q.header().autoclear_features & 1 != 0,
        "bitmaps autoclear bit set"
    );
    drop(q);
    check(&img);
    // A writable open clears the autoclear bits: QEMU then ignores the stale bitmaps.
    let writable = OpenOptions {
        writable: true,
        ..OpenOptions::default()
    };
    let image = open_writable(&img, &writable).unwrap();
    io::write_at(&*image, &[7u8; 4096], 0).unwrap();
    drop(image);
    assert_eq!(open_qcow2(&img, 1 << 20).header().autoclear_features, 0);
    // The bitmaps' clusters are leaks now (QEMU's rule for stale bitmaps), never errors.
    let out = Command::new("qemu-img")
        .args(["check", s(&img)])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        matches!(out.status.code(), Some(0 | 3)) && !text.contains("ERROR"),
        "qemu-img check: {text}"
    );
    check(&img);
}

/// Reading ahead as a device starts (`DiskImage::prefetch_metadata`): every uncached L2
/// table of the range, down the chain, in the budget; through a view, only the tables of
/// its window; none that is cached already.
#[test]
fn prefetch_asks_for_every_uncached_table_within_the_budget() {
    let dir = tempfile::tempdir().unwrap();
    let (base, top) = (dir.path().join("base.qcow2"), dir.path().join("top.qcow2"));
    // 4 KiB clusters: an L2 table covers 2 MiB, so the 16 MiB disk has 8 of them.
    create(&base, &["-o", "cluster_size=4096"], "16M");
    qemu_io(&base, "qcow2", &["write -P 0x41 0 16M"]);
    create(
        &top,
        &["-o", "cluster_size=4096", "-b", s(&base), "-F", "qcow2"],
        "16M",
    );
    // The top has tables 0, 3 and 4.
    qemu_io(
        &top,
        "qcow2",
        &[
            "write -P 0x42 1M 12k",
            "write -P 0x43 6M 2M",
            "write -z 9M 4k",
        ],
    );
    let prefetched = |image: &dyn DiskImage, offset: u64, len: u64, budget: u64| {
        let mut left = budget;
        image.prefetch_metadata(offset, len, &mut left).unwrap();
        budget - left
    };
    let image = open_image(&top, &OpenOptions::default()).unwrap();
    assert_eq!(prefetched(&*image, 0, 16 * MIB, u64::MAX), 11 * 4096);
    assert_eq!(prefetched(&*image, 0, 16 * MIB, 5 * 4096 + 100), 5 * 4096);
    let mut buf = vec![0u8; 4096];
    io::read_at(&*image, &mut buf, MIB).unwrap();
    assert_eq!(
        prefetched(&*image, 0, 2 * MIB, u64::MAX),
        4096,
        "the top's table 0 is cached now, the base's is not"
    );
    let window = SliceView::new(Arc::from(image), 2 * MIB, 4 * MIB).unwrap();
    assert_eq!(
        prefetched(&window, 0, 4 * MIB, u64::MAX),
        2 * 4096,
        "base tables 1 and 2"
    );
}
