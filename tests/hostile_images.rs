//! Hostile images: real images of every format, made by `qemu-img`, with random bytes of
//! their headers and tables corrupted (proptest), are opened, mapped end to end and read.
//! Each case must end in data or a clean error — never a panic, a hang or a runaway
//! allocation. This is the fuzzing harness of the format parsers (cargo-fuzz needs a
//! nightly toolchain; this runs on stable).
//!
//! Default: 64 cases per format in `cargo test`. Long runs (the README's developer
//! section): `PROPTEST_CASES=1000000 cargo test --release --test hostile_images`.

mod common;

use common::{make_raw, qemu, qemu_img};
use imgblk::image::{io, open_image, status::walk_status, OpenOptions};
use proptest::prelude::*;
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::sync::OnceLock;
use std::time::Duration;

/// A seed image: format name, path, bytes.
type Seed = (&'static str, PathBuf, Vec<u8>);

/// The seed images, made once.
fn seeds() -> &'static Vec<Seed> {
    static SEEDS: OnceLock<(tempfile::TempDir, Vec<Seed>)> = OnceLock::new();
    &SEEDS
        .get_or_init(|| {
            let dir = tempfile::tempdir().unwrap();
            let raw = dir.path().join("seed.raw");
            make_raw(&raw, 99);
            let raw_name = raw.to_str().unwrap();
            let mut seeds = Vec::new();
            for (name, args) in [
                ("qcow2", &["-O", "qcow2", "-o", "cluster_size=4096"][..]),
                (
                    "qcow2-compressed",
                    &["-c", "-O", "qcow2", "-o", "cluster_size=4096"][..],
                ),
                (
                    "qcow2-v2",
                    &["-O", "qcow2", "-o", "compat=0.10,cluster_size=4096"][..],
                ),
                ("vmdk-sparse", &["-O", "vmdk"][..]),
                (
                    "vmdk-stream",
                    &["-O", "vmdk", "-o", "subformat=streamOptimized"][..],
                ),
                ("vpc", &["-O", "vpc"][..]),
                ("vhdx", &["-O", "vhdx", "-o", "block_size=1M"][..]),
                ("vdi", &["-O", "vdi"][..]),
                (
                    "qcow2-zstd",
                    &[
                        "-c",
                        "-O",
                        "qcow2",
                        "-o",
                        "cluster_size=4096,compression_type=zstd",
                    ][..],
                ),
                // Gets a snapshot and changes after it, below.
                (
                    "qcow2-snapshot",
                    &["-O", "qcow2", "-o", "cluster_size=4096"][..],
                ),
                (
                    "qcow2-extended-l2",
                    &["-O", "qcow2", "-o", "extended_l2=on,cluster_size=16k"][..],
                ),
            ] {
                let out = dir.path().join(format!("seed.{name}"));
                let mut full: Vec<&str> = vec!["convert"];
                full.extend_from_slice(args);
                full.push(raw_name);
                full.push(out.to_str().unwrap());
                qemu_img(dir.path(), &full);
                if name == "qcow2-snapshot" {
                    add_snapshot(&out);
                }
                let bytes = std::fs::read(&out).unwrap();
                seeds.push((name, out, bytes));
            }
            (dir, seeds)
        })
        .1
}

/// Number of seed images.
const SEEDS: usize = 11;

/// Takes snapshot `s1` of the qcow2 at `path`, then overwrites some of its data.
fn add_snapshot(path: &Path) {
    let dir = path.parent().unwrap();
    let name = path.to_str().unwrap();
    qemu_img(dir, &["snapshot", "-c", "s1", name]);
    qemu(
        "qemu-io",
        dir,
        &["-f", "qcow2", "-c", "write -P 0x5a 64k 200k", name],
    );
}

/// Opens, maps and reads `path` on a worker thread; panics if that panics or takes more
/// than 20 seconds (a hang).
fn exercise(path: &Path) {
    let path = path.to_path_buf();
    let (done, wait) = mpsc::channel();
    let worker = std::thread::spawn(move || {
        let outcome = std::panic::catch_unwind(|| {
            let Ok(image) = open_image(&path, &OpenOptions::default()) else {
                return;
            };
            let size = image.virtual_size();
            let mut total = 0u64;
            if walk_status(&*image, 1 << 22, |run| {
                total += run.length;
                Ok(())
            })
            .is_ok()
            {
                assert_eq!(total, size, "map does not cover the image");
            }
            let mut buf = vec![0u8; 256 << 10];
            for offset in [0, size / 3, size.saturating_sub(buf.len() as u64)] {
                let len = (buf.len() as u64).min(size - offset.min(size)) as usize;
                let _ = io::read_at(&*image, &mut buf[..len], offset);
            }
        });
        let _ = done.send(outcome.is_ok());
    });
    match wait.recv_timeout(Duration::from_secs(20)) {
        Ok(true) => {
            let _ = worker.join();
        }
        Ok(false) => panic!("panic on a corrupted image"),
        Err(_) => panic!("a corrupted image hung the reader for 20 s"),
    }
}

fn mutate(bytes: &[u8], edits: &[(usize, u8)], region: usize) -> Vec<u8> {
    let mut out = bytes.to_vec();
    let span = region.min(out.len()).max(1);
    for &(pos, value) in edits {
        let at = pos % span;
        out[at] = value;
    }
    out
}

fn run_format(index: usize, edits: Vec<(usize, u8)>, whole_file: bool) {
    let (name, _, bytes) = &seeds()[index];
    let region = if whole_file { bytes.len() } else { 64 << 10 };
    let corrupted = mutate(bytes, &edits, region);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(format!("hostile.{name}"));
    std::fs::write(&path, corrupted).unwrap();
    exercise(&path);
}

fn edits() -> impl Strategy<Value = Vec<(usize, u8)>> {
    prop::collection::vec(
        (
            any::<usize>(),
            prop_oneof![Just(0u8), Just(0xff), any::<u8>()],
        ),
        1..16,
    )
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn corrupted_headers_and_tables_fail_cleanly(index in 0usize..SEEDS, edits in edits()) {
        run_format(index, edits, false);
    }

    #[test]
    fn corruption_anywhere_fails_cleanly(index in 0usize..SEEDS, edits in edits()) {
        run_format(index, edits, true);
    }
}

#[test]
fn truncated_images_fail_cleanly() {
    for (name, _, bytes) in seeds() {
        for cut in [0usize, 1, 511, 512, 4096, bytes.len() / 2, bytes.len() - 1] {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join(format!("cut.{name}"));
            std::fs::write(&path, &bytes[..cut.min(bytes.len())]).unwrap();
            exercise(&path);
        }
    }
}

/// Offset of the first snapshot table entry of the qcow2 at `bytes`.
fn snapshots_offset(bytes: &[u8]) -> usize {
    u64::from_be_bytes(bytes[64..72].try_into().unwrap()) as usize
}

/// One corrupted field of the snapshot table (or the header fields locating it) must fail
/// the open with an error naming the file and the field.
#[test]
fn snapshot_table_fields_name_file_and_field() {
    let (_, _, bytes) = seeds()
        .iter()
        .find(|(name, _, _)| *name == "qcow2-snapshot")
        .unwrap();
    let table = snapshots_offset(bytes);
    let len = bytes.len();
    let be32 = |v: u32| v.to_be_bytes().to_vec();
    let be64 = |v: u64| v.to_be_bytes().to_vec();
    let cases: Vec<(&str, usize, Vec<u8>)> = vec![
        ("nb_snapshots", 60, be32(1 << 20)),
        ("snapshots_offset", 64, be64(len as u64 * 2)),
        ("snapshots_offset", 64, be64(table as u64 + 8)),
        ("l1_table_offset", table, be64(0x1234)),
        ("l1_table_offset", table, be64(1 << 60)),
        ("l1_table_offset", table + 8, be32(u32::MAX)),
        ("extra_data_size", table + 36, be32(1 << 20)),
        ("past the end", table + 12, vec![0xff, 0xff, 0xff, 0xff]),
        ("past the end", 60, be32(1000)), // more entries than the file holds
    ];
    for (field, at, value) in cases {
        let mut corrupted = bytes.clone();
        corrupted[at..at + value.len()].copy_from_slice(&value);
        if field == "past the end" {
            corrupted.truncate(table + 4096); // the table's cluster is the last one
        }
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bad-snapshots.qcow2");
        std::fs::write(&path, corrupted).unwrap();
        let err = match open_image(&path, &OpenOptions::default()) {
            Ok(_) => panic!("{field} at {at:#x} = {value:02x?}: opened"),
            Err(e) => e.to_string(),
        };
        assert!(
            err.contains(field) && err.contains("bad-snapshots.qcow2"),
            "{field} at {at:#x}: {err}"
        );
        exercise(&path);
    }
    // A file cut inside the table.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("cut.qcow2");
    std::fs::write(&path, &bytes[..table + 20]).unwrap();
    let err = open_image(&path, &OpenOptions::default())
        .err()
        .expect("cut table");
    assert!(err.to_string().contains("snapshot"), "{err}");
}

/// A subcluster bitmap that marks a subcluster both allocated and zero, and one that
/// allocates subclusters of a compressed cluster: reads fail naming the file and the rule.
#[test]
fn extended_l2_bitmaps_name_file_and_rule() {
    let (_, _, bytes) = seeds()
        .iter()
        .find(|(name, _, _)| *name == "qcow2-extended-l2")
        .unwrap();
    let be64 = |at: usize| u64::from_be_bytes(bytes[at..at + 8].try_into().unwrap());
    let l1 = be64(40) as usize;
    let l2 = (be64(l1) & 0x00ff_ffff_ffff_fe00) as usize;
    assert!(
        be64(l2) & 0x00ff_ffff_ffff_fe00 != 0,
        "cluster 0 of the seed is allocated"
    );
    let cases: [(u64, u64, &str); 2] = [
        (be64(l2), 1 | (1 << 32), "both allocated and zero"),
        (
            (1 << 62) | 0x10_0000,
            1,
            "compressed but has subcluster bits",
        ),
    ];
    for (entry, bitmap, rule) in cases {
        let mut corrupted = bytes.clone();
        corrupted[l2..l2 + 8].copy_from_slice(&entry.to_be_bytes());
        corrupted[l2 + 8..l2 + 16].copy_from_slice(&bitmap.to_be_bytes());
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bad-bitmap.qcow2");
        std::fs::write(&path, corrupted).unwrap();
        let image = open_image(&path, &OpenOptions::default()).unwrap();
        let err = io::read_at(&*image, &mut [0u8; 4096], 0)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains(rule) && err.contains("bad-bitmap.qcow2"),
            "{err}"
        );
        exercise(&path);
    }
}
