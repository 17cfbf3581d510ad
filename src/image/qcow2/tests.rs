//! Image-level tests on hand-built qcow2 files, most of them hostile.

use super::*;
use crate::image::{io, open_image, Codec};
use rand::{Rng, SeedableRng};

const CLUSTER: usize = 4096;
const L1_AT: usize = CLUSTER;
const L2_AT: usize = 2 * CLUSTER;
const DATA_A: u64 = 3 * CLUSTER as u64;
const DATA_B: u64 = 4 * CLUSTER as u64;
const SIZE: u64 = 1 << 20;

fn put32(buf: &mut [u8], off: usize, v: u32) {
    buf[off..off + 4].copy_from_slice(&v.to_be_bytes());
}

fn put64(buf: &mut [u8], off: usize, v: u64) {
    buf[off..off + 8].copy_from_slice(&v.to_be_bytes());
}

/// A valid v3 image, 4 KiB clusters, 1 MiB virtual: cluster 0 and 1 are stored
/// contiguously (0xAA, 0xBB), cluster 2 is a zero cluster, cluster 3 is unallocated,
/// cluster 4 maps to the same host cluster as cluster 0, the rest is unallocated.
fn valid_image() -> Vec<u8> {
    let mut f = vec![0u8; 5 * CLUSTER];
    f[..4].copy_from_slice(b"QFI\xfb");
    put32(&mut f, 4, 3);
    put32(&mut f, 20, 12);
    put64(&mut f, 24, SIZE);
    put32(&mut f, 36, 1);
    put64(&mut f, 40, L1_AT as u64);
    put32(&mut f, 96, 4);
    put32(&mut f, 100, 104);
    put64(&mut f, L1_AT, (1 << 63) | L2_AT as u64);
    put64(&mut f, L2_AT, (1 << 63) | DATA_A);
    put64(&mut f, L2_AT + 8, (1 << 63) | DATA_B);
    put64(&mut f, L2_AT + 16, 1);
    put64(&mut f, L2_AT + 32, DATA_A);
    f[DATA_A as usize..DATA_B as usize].fill(0xAA);
    f[DATA_B as usize..].fill(0xBB);
    f
}

/// Writes `bytes` as `name` in a new temporary directory.
fn write_file(name: &str, bytes: &[u8]) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(name);
    std::fs::write(&path, bytes).unwrap();
    (dir, path)
}

fn open_bytes(bytes: &[u8]) -> (tempfile::TempDir, Result<Qcow2Image>) {
    let (dir, path) = write_file("t.qcow2", bytes);
    let file = ImageFile::open(&path, false, false).unwrap();
    (dir, Qcow2Image::open(file, &OpenOptions::default(), 0))
}

/// Opening `bytes` fails with `kind` and a message that contains `needle` and the path.
fn assert_open_fails(bytes: &[u8], kind: ErrorKind, needle: &str) {
    let (dir, result) = open_bytes(bytes);
    let err = result.err().expect("hostile image opened");
    let msg = err.to_string();
    assert_eq!(err.kind(), kind, "{msg}");
    assert!(msg.contains(needle), "{msg:?} does not mention {needle:?}");
    assert!(
        msg.contains(&dir.path().display().to_string()),
        "{msg} does not name the file"
    );
}

/// Mapping all of the image made of `bytes` fails with a message containing `needle`.
fn assert_map_fails(bytes: &[u8], needle: &str) {
    let (_dir, result) = open_bytes(bytes);
    let img = result.unwrap();
    let mut out = Vec::new();
    let msg = img.map(0, SIZE, &mut out).unwrap_err().to_string();
    assert!(msg.contains(needle), "{msg:?} does not mention {needle:?}");
    assert!(msg.contains("t.qcow2"), "{msg} does not name the file");
}

#[test]
fn maps_and_reads_hand_built_image() {
    let (_dir, img) = open_bytes(&valid_image());
    let img = img.unwrap();
    let mut out = Vec::new();
    img.map(0, SIZE, &mut out).unwrap();
    let kinds: Vec<(u64, Source<'_>)> = out.iter().map(|e| (e.len, e.source)).collect();
    let data = |offset| Source::Data {
        file: &img.file,
        offset,
    };
    assert_eq!(
        kinds,
        vec![
            (8192, data(DATA_A)),
            (4096, Source::Zero),
            (4096, Source::Unallocated),
            (4096, data(DATA_A)),
            (SIZE - 5 * 4096, Source::Unallocated),
        ]
    );
    let mut buf = vec![0u8; 3 * 4096];
    io::read_at(&img, &mut buf, 2048).unwrap();
    assert!(buf[..2048].iter().all(|&b| b == 0xAA));
    assert!(buf[2048..6144].iter().all(|&b| b == 0xBB));
    assert!(buf[6144..].iter().all(|&b| b == 0));
    assert_eq!(img.chain().len(), 1);
    assert!(
        img.map(SIZE - 1, 2, &mut out).is_err(),
        "range past the end accepted"
    );
}

#[test]
fn bad_magic_and_versions() {
    let mut f = valid_image();
    f[3] = 0xfa;
    assert_open_fails(&f, ErrorKind::Corrupt, "magic");
    let mut f = valid_image();
    put32(&mut f, 4, 1);
    assert_open_fails(&f, ErrorKind::Unsupported, "version 1");
    put32(&mut f, 4, 4);
    assert_open_fails(&f, ErrorKind::Unsupported, "version 4");
    assert_open_fails(&f[..40], ErrorKind::Corrupt, "too short");
}

#[test]
fn hostile_header_fields() {
    let cases: [(usize, u64, bool, &str); 9] = [
        (20, 40, false, "cluster_bits is 40"),
        (20, 8, false, "cluster_bits is 8"),
        (36, 0xffff_ffff, false, "l1_size is 4294967295"),
        (24, 1 << 40, true, "needs at least 524288 entries"),
        (24, u64::MAX, true, "size is"),
        (40, 1 << 30, true, "l1_table_offset"),
        (40, 4096 + 8, true, "must be cluster aligned"),
        (96, 7, false, "refcount_order is 7"),
        (100, 108, false, "header_length is 108"),
    ];
    for (off, value, wide, needle) in cases {
        let mut f = valid_image();
        if wide {
            put64(&mut f, off, value);
        } else {
            put32(&mut f, off, value as u32);
        }
        assert_open_fails(&f, ErrorKind::Corrupt, needle);
    }
    let mut f = valid_image();
    put32(&mut f, 32, 2);
    assert_open_fails(&f, ErrorKind::Unsupported, "encrypted");
}

#[test]
fn backing_name_and_extensions_are_bounds_checked() {
    let mut f = valid_image();
    put64(&mut f, 8, 200);
    put32(&mut f, 16, 2000);
    assert_open_fails(&f, ErrorKind::Corrupt, "backing_file_size is 2000");
    put64(&mut f, 8, 4000);
    put32(&mut f, 16, 1000);
    assert_open_fails(&f, ErrorKind::Corrupt, "backing_file_offset");
    put64(&mut f, 8, 50);
    put32(&mut f, 16, 4);
    assert_open_fails(&f, ErrorKind::Corrupt, "after the header");
    let mut f = valid_image();
    put32(&mut f, 104, 0x1234_5678);
    put32(&mut f, 108, 10_000);
    assert_open_fails(&f, ErrorKind::Corrupt, "overruns");
    let mut f = valid_image();
    put32(&mut f, 104, 0xe279_2aca);
    put32(&mut f, 108, 4);
    f[112..116].copy_from_slice(b"qedx");
    assert_open_fails(&f, ErrorKind::Unsupported, "'qedx'");
}

/// Adds a feature name table naming incompatible bit 5 "frobnicate".
fn with_feature_table(mut f: Vec<u8>) -> Vec<u8> {
    put32(&mut f, 104, 0x6803_f857);
    put32(&mut f, 108, 48);
    f[112] = 0;
    f[113] = 5;
    f[114..124].copy_from_slice(b"frobnicate");
    f
}

/// `f` with incompatible feature `bit` set as well.
fn with_incompatible(mut f: Vec<u8>, bit: u32) -> Vec<u8> {
    let old = u64::from_be_bytes(f[72..80].try_into().unwrap());
    put64(&mut f, 72, old | (1 << bit));
    f
}

#[test]
fn incompatible_features() {
    let cases = [
        (5, ErrorKind::Unsupported, "feature bit 5"),
        (9, ErrorKind::Unsupported, "feature bit 9"),
        (1, ErrorKind::Corrupt, "marked corrupt"),
        (2, ErrorKind::Corrupt, "no header extension naming it"),
        (4, ErrorKind::Corrupt, "at least 14 with extended L2"), // 4 KiB clusters
        (3, ErrorKind::Corrupt, "compression_type is 0"),
    ];
    for (bit, kind, needle) in cases {
        assert_open_fails(&with_incompatible(valid_image(), bit), kind, needle);
    }
    let named = with_incompatible(with_feature_table(valid_image()), 5);
    assert_open_fails(&named, ErrorKind::Unsupported, "'frobnicate' (bit 5)");
    let dirty = with_incompatible(valid_image(), 0);
    assert!(
        open_bytes(&dirty).1.is_ok(),
        "dirty image refused for reading"
    );
}

#[test]
fn zstd_images_map_to_zstd_clusters() {
    let mut f = valid_image();
    put64(&mut f, 72, 1 << 3);
    put32(&mut f, 100, 112);
    f[104] = 1;
    put64(&mut f, L2_AT + 5 * 8, (1 << 62) | (2 << 58) | DATA_B);
    let (_dir, img) = open_bytes(&f);
    let img = img.unwrap();
    let mut out = Vec::new();
    img.map(5 * 4096 + 100, 10, &mut out).unwrap();
    let Source::Compressed(c) = out[0].source else {
        panic!("{out:?}")
    };
    assert_eq!(
        (c.codec, c.offset, c.stored_len, c.skip),
        (Codec::Zstd, DATA_B, 3 * 512, 100)
    );
    // The bytes there are no zstd frame: an error naming the file and the offset.
    let err = io::read_at(&img, &mut [0u8; 10], 5 * 4096 + 100).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Corrupt);
    assert!(
        err.to_string().contains(&format!("offset {DATA_B:#x}")),
        "{err}"
    );
    assert!(
        err.path().is_some() && err.to_string().contains("zstd"),
        "{err}"
    );
}

#[test]
fn hostile_tables_fail_at_map_time() {
    let f = valid_image();
    assert_map_fails(&f[..L2_AT + 100], "lies past the end");
    let mut f = valid_image();
    put64(&mut f, L2_AT + 8, DATA_B + 512);
    assert_map_fails(&f, "guest offset 0x1000");
    let mut f = valid_image();
    put64(&mut f, L1_AT, L2_AT as u64 + 1024);
    assert_map_fails(&f, "L1 entry 0");
}

/// The valid image naming `backing` as its backing file.
fn with_backing(backing: &str) -> Vec<u8> {
    let mut f = valid_image();
    put64(&mut f, 8, 200);
    put32(&mut f, 16, backing.len() as u32);
    f[200..200 + backing.len()].copy_from_slice(backing.as_bytes());
    f
}

/// Opening, through the generic opener, the valid image naming `backing` fails.
fn open_with_backing(backing: &str) -> (tempfile::TempDir, Error) {
    let (dir, path) = write_file("t.qcow2", &with_backing(backing));
    let result = open_image(&path, &OpenOptions::default());
    (
        dir,
        result.err().expect("image with a bad backing file opened"),
    )
}

#[test]
fn backing_loop_is_an_error_not_a_stack_overflow() {
    let (_dir, err) = open_with_backing("t.qcow2");
    assert!(err.to_string().contains("the backing chain loops"), "{err}");
}

#[test]
fn missing_backing_file_names_tried_path() {
    let (dir, err) = open_with_backing("sub/base.raw");
    assert_eq!(err.kind(), ErrorKind::NotFound);
    let tried = dir.path().join("sub/base.raw");
    assert!(
        err.to_string().contains(&tried.display().to_string()),
        "{err}"
    );
}

fn open_rw(path: &Path) -> Result<Box<dyn DiskImage>> {
    let options = OpenOptions {
        writable: true,
        ..OpenOptions::default()
    };
    open_image(path, &options)
}

#[test]
fn writing_needs_a_refcount_table() {
    let (_dir, path) = write_file("t.qcow2", &valid_image());
    let err = open_rw(&path).err().expect("opened for writing");
    assert_eq!(err.kind(), ErrorKind::Corrupt);
    assert!(err.to_string().contains("refcount table"), "{err}");
}

/// `valid_image` plus a refcount table (cluster 5) and block (cluster 6) counting 0..=6.
fn writable_image() -> Vec<u8> {
    let mut f = valid_image();
    f.resize(7 * CLUSTER, 0);
    put64(&mut f, 48, 5 * CLUSTER as u64);
    put32(&mut f, 56, 1);
    put64(&mut f, 5 * CLUSTER, 6 * CLUSTER as u64);
    for c in 0..7 {
        f[6 * CLUSTER + 2 * c + 1] = 1;
    }
    f
}

#[test]
fn writes_allocate_and_flush_in_order() {
    let (_dir, path) = write_file("t.qcow2", &writable_image());
    let img = open_rw(&path).unwrap();
    assert!(img.writer().is_some());
    let mut extents = Vec::new();
    assert_eq!(
        img.writer()
            .unwrap()
            .map_write(100, 200, &mut extents)
            .unwrap(),
        WritePlan::Mapped
    );
    assert_eq!(extents.len(), 1);
    io::write_at(&*img, &[0x11; 200], 100).unwrap();
    extents.clear();
    let at = 3 * CLUSTER as u64 + 10;
    assert_eq!(
        img.writer()
            .unwrap()
            .map_write(at, 5, &mut extents)
            .unwrap(),
        WritePlan::Synchronous
    );
    assert!(extents.is_empty());
    io::write_at(&*img, b"hello", at).unwrap();
    img.writer()
        .unwrap()
        .write_zeroes(CLUSTER as u64, CLUSTER as u64)
        .unwrap();
    let mut buf = vec![0u8; 3 * CLUSTER];
    io::read_at(&*img, &mut buf, 0).unwrap();
    assert!(buf[100..300].iter().all(|&b| b == 0x11));
    assert!(buf[CLUSTER..].iter().all(|&b| b == 0));
    img.writer().unwrap().flush().unwrap();
    drop(img);
    let f = std::fs::read(&path).unwrap();
    let l2 = |i: usize| u64::from_be_bytes(f[L2_AT + 8 * i..L2_AT + 8 * i + 8].try_into().unwrap());
    assert_eq!(l2(3), (1 << 63) | (7 * CLUSTER as u64), "new cluster");
    assert_eq!(l2(1), (1 << 63) | DATA_B | 1, "preallocated zero cluster");
    assert_eq!(f[6 * CLUSTER + 2 * 7 + 1], 1, "refcount of the new cluster");
    assert_eq!(&f[7 * CLUSTER + 10..7 * CLUSTER + 15], b"hello");
    let img = open_image(&path, &OpenOptions::default()).unwrap();
    let mut got = [0u8; 5];
    io::read_at(&*img, &mut got, at).unwrap();
    assert_eq!(&got, b"hello");
}

#[test]
fn refuses_to_write_dirty_images() {
    let mut f = writable_image();
    put64(&mut f, 72, 1);
    let (_dir, path) = write_file("t.qcow2", &f);
    let err = open_rw(&path)
        .err()
        .expect("dirty image opened for writing");
    assert!(err.to_string().contains("dirty"), "{err}");
}

#[test]
fn random_corruption_never_panics() {
    let seed = 0x5eed_0002_u64;
    let mut rng = rand::rngs::SmallRng::seed_from_u64(seed);
    let pristine = valid_image();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("fuzz.qcow2");
    for round in 0..400 {
        let mut f = pristine.clone();
        for _ in 0..rng.gen_range(1..8) {
            let at = rng.gen_range(0..3 * CLUSTER);
            f[at] = rng.gen();
        }
        std::fs::write(&path, &f).unwrap();
        let file = ImageFile::open(&path, false, false).unwrap();
        let Ok(img) = Qcow2Image::open(file, &OpenOptions::default(), 0) else {
            continue;
        };
        let size = img.virtual_size().min(1 << 22);
        let mut buf = vec![0u8; size as usize];
        // Errors are fine; panics are not. The seed and round identify a failing case.
        let _ = io::read_at(&img, &mut buf, 0).map_err(|e| (seed, round, e));
    }
}
