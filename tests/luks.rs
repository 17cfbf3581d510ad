//! LUKS decryption against volumes made by the real `cryptsetup`: offline
//! `reencrypt --encrypt` turns a file of known plaintext into a LUKS volume without
//! dm-crypt, and imgblk must read the same plaintext back. A missing cryptsetup fails the
//! test: install cryptsetup-bin with ci/install-deps.

mod common;

use common::cryptsetup;
use imgblk::error::ErrorKind;
use imgblk::image::io::{fill_from_extents, read_at, write_at};
use imgblk::image::{open_image, DiskImage, OpenOptions, TransformRead};
use imgblk::layout::luks::LuksVolume;
use imgblk::layout::{discover, ContentKind};
use rand::{rngs::SmallRng, RngCore, SeedableRng};
use std::path::Path;
use std::process::Command;
use std::sync::Arc;

const MIB: usize = 1 << 20;
/// What reencrypt takes off the end of the device for the header (and the data moves by).
const REDUCE: usize = 8 * MIB;
const PASS: &[u8] = b"correct horse";

/// Fills a `size`-byte file with random bytes (or `init`), encrypts it in place with
/// `cryptsetup reencrypt --encrypt` and `args`; returns the plaintext the volume holds.
fn encrypted(
    dir: &Path,
    size: usize,
    init: Option<&[u8]>,
    args: &str,
) -> (std::path::PathBuf, Vec<u8>) {
    let path = dir.join("luks.img");
    let mut data = vec![0u8; size];
    match init {
        Some(init) => data[..init.len()].copy_from_slice(init),
        None => SmallRng::seed_from_u64(size as u64).fill_bytes(&mut data),
    }
    std::fs::write(&path, &data).unwrap();
    let key = dir.join("key");
    std::fs::write(&key, PASS).unwrap();
    let reduce = format!("{}M", REDUCE / MIB);
    let mut all = vec!["reencrypt", "--encrypt", "--reduce-device-size", &reduce];
    all.extend(args.split_whitespace());
    all.push(path.to_str().unwrap());
    cryptsetup(&all, &key);
    data.truncate(size - REDUCE);
    (path, data)
}

fn open_raw(path: &Path, writable: bool) -> Arc<dyn DiskImage> {
    let options = OpenOptions {
        writable,
        ..OpenOptions::default()
    };
    Arc::from(open_image(path, &options).unwrap())
}

fn check(args: &str, sector: u64) {
    let dir = tempfile::tempdir().unwrap();
    let (path, plain) = encrypted(dir.path(), 20 * MIB, None, args);
    let volume = LuksVolume::open(open_raw(&path, false), PASS).unwrap();
    assert_eq!(volume.metadata().segment.sector_size as u64, sector);
    let size = volume.virtual_size() as usize;
    assert!(size >= plain.len(), "volume of {size} bytes");
    let mut got = vec![0u8; plain.len()];
    read_at(&volume, &mut got, 0).unwrap();
    if let Some(i) = (0..plain.len()).find(|&i| got[i] != plain[i]) {
        let same = |d: usize| plain.windows(16).position(|w| w == &got[d..d + 16]);
        panic!(
            "{args}: decrypted data differs at {i} (found at {:?})",
            same(i)
        );
    }
    common::random_reads(&volume, &plain, args, 7, 100);
}

#[test]
fn luks2_pbkdf2_xts() {
    let args = "--type luks2 --pbkdf pbkdf2 --pbkdf-force-iterations 1000";
    check(args, 512);
}

#[test]
fn luks2_argon2id_4k_sectors() {
    let args = "--type luks2 --pbkdf argon2id --pbkdf-force-iterations 4 --pbkdf-memory 32768 --pbkdf-parallel 2 --sector-size 4096";
    check(args, 4096);
}

#[test]
fn luks2_argon2i_aes128_sha512() {
    let args = "--type luks2 --pbkdf argon2i --pbkdf-force-iterations 4 --pbkdf-memory 8192 --key-size 256 --hash sha512";
    check(args, 512);
}

/// LUKS1 needs dm-crypt to reencrypt, so these volumes are made empty with `luksFormat`:
/// opening proves key derivation, AF merge and the digest (checked against the master
/// key); a write then a read through a fresh open checks the data path (the VM test
/// `kernel::luks` checks it against dm-crypt).
fn check_luks1(args: &str) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("luks1.img");
    std::fs::write(&path, vec![0u8; 8 * MIB]).unwrap();
    let key = dir.path().join("key");
    std::fs::write(&key, PASS).unwrap();
    let mut all = vec![
        "luksFormat",
        "--type",
        "luks1",
        "--pbkdf-force-iterations",
        "1000",
    ];
    all.extend(args.split_whitespace());
    all.push(path.to_str().unwrap());
    cryptsetup(&all, &key);
    let volume = LuksVolume::open(open_raw(&path, true), PASS).unwrap();
    let offset = volume.metadata().segment.offset;
    assert_eq!(volume.virtual_size(), 8 * MIB as u64 - offset);
    let mut data = vec![0u8; 100_000];
    SmallRng::seed_from_u64(5).fill_bytes(&mut data);
    write_at(&volume, &data, 777).unwrap();
    drop(volume);
    let raw = std::fs::read(&path).unwrap();
    assert!(
        raw[offset as usize + 777..][..1000] != data[..1000],
        "stored in clear"
    );
    let volume = LuksVolume::open(open_raw(&path, false), PASS).unwrap();
    common::random_reads(
        &volume,
        &{
            let mut want = vec![0u8; volume.virtual_size() as usize];
            let mut head = vec![0u8; 777];
            read_at(&volume, &mut head, 0).unwrap();
            want[..777].copy_from_slice(&head);
            want[777..777 + data.len()].copy_from_slice(&data);
            let tail = want.len() - 777 - data.len();
            read_at(
                &volume,
                &mut want[777 + data.len()..],
                (777 + data.len()) as u64,
            )
            .unwrap();
            assert_eq!(tail, want.len() - 777 - data.len());
            want
        },
        "luks1",
        9,
        50,
    );
    assert_eq!(
        LuksVolume::open(open_raw(&path, false), b"nope")
            .err()
            .unwrap()
            .kind(),
        ErrorKind::Permission
    );
}

#[test]
fn luks1_pbkdf2_xts() {
    check_luks1("--cipher aes-xts-plain64");
}

#[test]
fn luks1_cbc_essiv_sha1() {
    check_luks1("--cipher aes-cbc-essiv:sha256 --key-size 256 --hash sha1");
}

#[test]
fn wrong_key_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let args = "--type luks2 --pbkdf pbkdf2 --pbkdf-force-iterations 1000";
    let (path, _) = encrypted(dir.path(), 12 * MIB, None, args);
    let before = std::fs::read(&path).unwrap();
    let err = LuksVolume::open(open_raw(&path, false), b"wrong")
        .err()
        .unwrap();
    assert_eq!(err.kind(), ErrorKind::Permission);
    assert!(err.to_string().contains("no key slot matches"), "{err}");
    assert!(std::fs::read(&path).unwrap() == before, "the image changed");
}

#[test]
fn a_wrong_key_file_is_named_and_exits_as_an_unusable_input() {
    let dir = tempfile::tempdir().unwrap();
    let args = "--type luks2 --pbkdf pbkdf2 --pbkdf-force-iterations 1000";
    let (path, _) = encrypted(dir.path(), 12 * MIB, None, args);
    let wrong = dir.path().join("wrong.key");
    std::fs::write(&wrong, b"wrong").unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_imgblk"))
        .args(["cat", "--luks", "--key-file"])
        .arg(&wrong)
        .arg(&path)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "{err}");
    assert!(err.contains(&*wrong.to_string_lossy()), "{err}");
}

#[test]
fn ext4_inside_is_discovered_and_writes_round_trip() {
    let dir = tempfile::tempdir().unwrap();
    let fs = dir.path().join("fs.img");
    std::fs::write(&fs, vec![0u8; 12 * MIB]).unwrap();
    let out = Command::new("mkfs.ext4")
        .args(["-q", "-L", "secret"])
        .arg(&fs)
        .output()
        .expect("mkfs.ext4");
    assert!(out.status.success());
    let init = std::fs::read(&fs).unwrap();
    let args = "--type luks2 --pbkdf pbkdf2 --pbkdf-force-iterations 1000";
    let (path, _) = encrypted(dir.path(), 20 * MIB, Some(&init), args);
    {
        let outer = discover(&[open_raw(&path, false)]);
        let node = &outer.disks[0];
        assert_eq!(node.content.as_ref().unwrap().kind, ContentKind::Luks);
        let unlocked = imgblk::layout::luks::unlock_node(node, PASS).unwrap();
        let inner = discover(&[unlocked]);
        assert_eq!(inner.disks[0].label(), Some("secret"));
    }

    // The command line: inspect shows what is inside, a wrong key fails cleanly.
    let key = dir.path().join("key");
    let inspect = Command::new(env!("CARGO_BIN_EXE_imgblk"))
        .args(["inspect", "--key-file"])
        .arg(&key)
        .arg(&path)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&inspect.stdout);
    assert!(inspect.status.success(), "{text}");
    assert!(
        text.contains("luks-disk0") && text.contains("secret"),
        "{text}"
    );
    // map describes the decrypted volume: its runs cover it exactly.
    let size = LuksVolume::open(open_raw(&path, false), PASS)
        .unwrap()
        .virtual_size();
    let map = Command::new(env!("CARGO_BIN_EXE_imgblk"))
        .args(["map", "--json", "--luks", "--key-file"])
        .arg(&key)
        .arg(&path)
        .output()
        .unwrap();
    assert!(
        map.status.success(),
        "{}",
        String::from_utf8_lossy(&map.stderr)
    );
    let runs: Vec<serde_json::Value> = serde_json::from_slice(&map.stdout).unwrap();
    let covered: u64 = runs.iter().map(|r| r["length"].as_u64().unwrap()).sum();
    assert_eq!(covered, size, "{runs:?}");
    assert!(
        size < 20 * MIB as u64 - 4096,
        "not the decrypted volume: {size}"
    );
    // Asked for an LV without a key, the error points at the locked volume.
    let locked = Command::new(env!("CARGO_BIN_EXE_imgblk"))
        .args(["cat", "--lv", "vg/root"])
        .arg(&path)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&locked.stderr);
    assert_eq!(locked.status.code(), Some(3), "{err}");
    assert!(err.contains("still locked: disk0; --key-file"), "{err}");
    let bad = dir.path().join("bad");
    std::fs::write(&bad, b"nope").unwrap();
    let cat = Command::new(env!("CARGO_BIN_EXE_imgblk"))
        .args(["cat", "--luks", "--key-file"])
        .arg(&bad)
        .arg(&path)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&cat.stderr);
    assert!(!cat.status.success() && cat.stdout.is_empty(), "{err}");
    assert!(err.contains("no key slot matches"), "{err}");

    // Encrypt a write, then decrypt it again through a fresh open.
    let volume = LuksVolume::open(open_raw(&path, true), PASS).unwrap();
    let mut data = vec![0u8; 70_000];
    SmallRng::seed_from_u64(3).fill_bytes(&mut data);
    write_at(&volume, &data, 12_345).unwrap();
    drop(volume);
    let volume = LuksVolume::open(open_raw(&path, false), PASS).unwrap();
    let mut got = vec![0u8; data.len() + 2000];
    read_at(&volume, &mut got, 11_345).unwrap();
    assert!(got[1000..1000 + data.len()] == data[..]);
    assert!(got[..1000] == init[11_345..12_345]);
}

/// An empty LUKS2 volume with `sector`-byte encryption sectors, made with `luksFormat`
/// on a sparse 20 MiB file (16 MiB of header, 4 MiB of data), opened writable.
fn formatted(dir: &Path, sector: u64) -> LuksVolume {
    let sector = sector.to_string();
    let args = ["--type", "luks2", "--sector-size", &sector];
    let path = luks_format(dir, "luks2.img", 20, &args);
    LuksVolume::open(open_raw(&path, true), PASS).unwrap()
}

/// `luksFormat` (PBKDF2, 1000 iterations, and `args`) of a new sparse file `name` of
/// `mib` MiB in `dir`, with the key [`PASS`] in `dir/key`; returns the file.
fn luks_format(dir: &Path, name: &str, mib: usize, args: &[&str]) -> std::path::PathBuf {
    let path = dir.join(name);
    std::fs::File::create(&path)
        .unwrap()
        .set_len((mib * MIB) as u64)
        .unwrap();
    let key = dir.join("key");
    std::fs::write(&key, PASS).unwrap();
    let common = [
        "luksFormat",
        "--pbkdf",
        "pbkdf2",
        "--pbkdf-force-iterations",
        "1000",
    ];
    cryptsetup(
        &[&common[..], args, &[path.to_str().unwrap()]].concat(),
        &key,
    );
    path
}

/// The volume's logical block is its encryption sector, which the ublk device takes as
/// its own logical block size (as dm-crypt does).
#[test]
fn logical_block_size_is_the_encryption_sector() {
    for sector in [512, 4096] {
        let dir = tempfile::tempdir().unwrap();
        let volume = formatted(dir.path(), sector);
        assert_eq!(u64::from(volume.logical_block_size()), sector);
        assert_eq!(volume.virtual_size() % sector, 0);
    }
}

/// Two threads write 512 bytes each into every 4 KiB sector at the same time, one at its
/// start, the other at its end, round after round: each write decrypts, patches and encrypts the whole sector, and
/// without a lock one thread's read-modify-write could put back the old half the other
/// had just written (issue 26). Every sector must end up holding both halves.
#[test]
fn concurrent_writes_to_halves_of_a_sector_both_survive() {
    const SS: usize = 4096;
    const SECTORS: usize = 64;
    const ROUNDS: usize = 40;
    let dir = tempfile::tempdir().unwrap();
    let volume = formatted(dir.path(), SS as u64);
    let barrier = std::sync::Barrier::new(2);
    let mut lost = Vec::new();
    for round in 0..ROUNDS {
        let fill = |half: usize| {
            let mut data = vec![0u8; 512];
            SmallRng::seed_from_u64((round * 2 + half) as u64).fill_bytes(&mut data);
            data
        };
        let halves = [fill(0), fill(1)];
        std::thread::scope(|scope| {
            for (half, data) in halves.iter().enumerate() {
                let (volume, barrier) = (&volume, &barrier);
                scope.spawn(move || {
                    barrier.wait();
                    for sector in 0..SECTORS {
                        let at = (sector * SS + half * (SS - 512)) as u64;
                        write_at(volume, data, at).unwrap();
                    }
                });
            }
        });
        let mut got = vec![0u8; SECTORS * SS];
        read_at(&volume, &mut got, 0).unwrap();
        for (sector, bytes) in got.chunks(SS).enumerate() {
            if bytes[..512] != halves[0][..] || bytes[SS - 512..] != halves[1][..] {
                lost.push((round, sector));
            }
        }
    }
    assert!(lost.is_empty(), "writes lost (round, sector): {lost:?}");
}

/// A LUKS volume of `kind` (`luks1` or `luks2`) with `sector`-byte sectors in a sparse
/// 24 MiB raw file, written through imgblk with random data except one stretch left as
/// it was (zero ciphertext, which the qcow2 copies leave unallocated); returns the file
/// and the volume's plaintext.
fn written(dir: &Path, kind: &str, sector: u64) -> (std::path::PathBuf, Vec<u8>) {
    let sector_arg = sector.to_string();
    let mut args = vec!["--type", kind];
    if kind == "luks2" {
        // a small header, so that most of the file is data
        args.extend([
            "--luks2-metadata-size",
            "16k",
            "--luks2-keyslots-size",
            "1m",
        ]);
        args.extend(["--sector-size", &sector_arg]);
    }
    let path = luks_format(dir, &format!("{kind}-{sector}.img"), 24, &args);
    let volume = LuksVolume::open(open_raw(&path, true), PASS).unwrap();
    let size = volume.virtual_size() as usize;
    let mut plain = vec![0u8; size];
    SmallRng::seed_from_u64(sector).fill_bytes(&mut plain);
    let hole = size / 2..size / 2 + MIB;
    write_at(&volume, &plain[..hole.start], 0).unwrap();
    write_at(&volume, &plain[hole.end..], hole.end as u64).unwrap();
    read_at(&volume, &mut plain[hole.clone()], hole.start as u64).unwrap();
    (path, plain)
}

/// A staged read, as a ublk queue does it: the ciphertext mapped with `map_stored`, read
/// through the inner image's extents, decrypted with `transform_in_place` in `pieces`
/// pieces of whole sectors.
fn staged_read(volume: &LuksVolume, offset: u64, buf: &mut [u8], pieces: usize) {
    let mut extents = Vec::new();
    let unit = volume
        .map_stored(offset, buf.len() as u64, &mut extents)
        .unwrap()
        .expect("whole sectors are staged");
    assert_eq!(unit, u64::from(volume.logical_block_size()));
    assert_eq!(extents.iter().map(|e| e.len).sum::<u64>(), buf.len() as u64);
    fill_from_extents(&extents, buf).unwrap();
    let units = buf.len() / unit as usize;
    let piece = units.div_ceil(pieces).max(1) * unit as usize;
    for (i, chunk) in buf.chunks_mut(piece).enumerate() {
        volume
            .transform_in_place(offset + (i * piece) as u64, chunk)
            .unwrap();
    }
}

/// Staged reads give what `read_transformed` gives, and the plaintext written, for LUKS1
/// and LUKS2, 512- and 4096-byte sectors, over a raw image and over qcow2 copies of it
/// (4 KiB clusters, so that a range maps to many extents; and compressed); ranges that
/// are not whole sectors are not staged.
#[test]
fn staged_reads_equal_read_transformed() {
    for (kind, sector) in [("luks1", 512u64), ("luks2", 512), ("luks2", 4096)] {
        let dir = tempfile::tempdir().unwrap();
        let (raw, plain) = written(dir.path(), kind, sector);
        let raw_arg = raw.to_str().unwrap();
        let small = dir.path().join("small.qcow2");
        let packed = dir.path().join("packed.qcow2");
        let convert = ["convert", "-f", "raw", "-O", "qcow2"];
        let small_args = ["-o", "cluster_size=4096", raw_arg, small.to_str().unwrap()];
        common::qemu_img(dir.path(), &[&convert[..], &small_args].concat());
        let packed_args = ["-c", raw_arg, packed.to_str().unwrap()];
        common::qemu_img(dir.path(), &[&convert[..], &packed_args].concat());
        for inner in [&raw, &small, &packed] {
            let what = format!("{kind} {sector} over {}", inner.display());
            let volume = LuksVolume::open(open_raw(inner, false), PASS).unwrap();
            let size = volume.virtual_size();
            assert_eq!(size as usize, plain.len(), "{what}");
            let mut rng = SmallRng::seed_from_u64(sector);
            let mut ranges = vec![(0, size), (size - sector, sector)];
            for _ in 0..40 {
                let len = (rng.next_u64() % (2 * MIB as u64 / sector) + 1) * sector;
                let len = len.min(size);
                let offset = rng.next_u64() % ((size - len) / sector + 1) * sector;
                ranges.push((offset, len));
            }
            for (i, (offset, len)) in ranges.into_iter().enumerate() {
                let mut want = vec![0u8; len as usize];
                volume.read_transformed(offset, &mut want).unwrap();
                let start = offset as usize;
                assert!(
                    want == plain[start..][..len as usize],
                    "{what}: {offset}+{len}"
                );
                let mut got = vec![0u8; len as usize];
                staged_read(&volume, offset, &mut got, 1 + i % 4);
                assert!(got == want, "{what}: staged {offset}+{len}");
            }
            let mut none = Vec::new();
            for (offset, len) in [(1, sector), (0, sector + 1), (sector / 2, 3 * sector)] {
                let staged = volume.map_stored(offset, len, &mut none).unwrap();
                assert_eq!(staged, None, "{what}: {offset}+{len}");
            }
            assert!(none.is_empty());
            let mut buf = vec![0u8; sector as usize];
            assert!(volume.transform_in_place(sector / 2, &mut buf).is_err());
        }
    }
}
