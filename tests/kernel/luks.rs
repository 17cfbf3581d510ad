//! LUKS volumes written through the kernel's dm-crypt (`cryptsetup open`), read back by
//! imgblk's own decryption: `cat --luks` must give the plaintext byte for byte, and an
//! ext4 inside must check clean through `attach --luks`.

use crate::harness::*;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// An opened dm-crypt mapping, closed on drop.
struct Mapping {
    name: String,
}

impl Mapping {
    fn open(image: &Path, key: &Path, name: &str) -> Mapping {
        let _ = cmd("modprobe")
            .args(["-a", "dm-crypt", "xts", "essiv"])
            .output();
        cmd("cryptsetup")
            .args(["open", "--batch-mode", "--key-file"])
            .arg(key)
            .arg(image)
            .arg(name)
            .ok();
        Mapping { name: name.into() }
    }

    fn path(&self) -> PathBuf {
        PathBuf::from(format!("/dev/mapper/{}", self.name))
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        let _ = cmd("cryptsetup").arg("close").arg(&self.name).output();
    }
}

/// A 32 MiB file formatted with `format` args; returns it and its key file.
fn format(s: &Scratch, format: &str) -> (PathBuf, PathBuf) {
    let image = s.path("luks.img");
    std::fs::File::create(&image)
        .unwrap()
        .set_len(32 * MIB)
        .unwrap();
    let key = s.path("key");
    std::fs::write(&key, b"kernel test passphrase\n").unwrap();
    cmd("cryptsetup")
        .args(["luksFormat", "--batch-mode", "--key-file"])
        .arg(&key)
        .args(format.split_whitespace())
        .arg(&image)
        .ok();
    (image, key)
}

/// Fills the LUKS volume `image` with seeded random bytes through dm-crypt (mapping
/// `name`); returns a file holding them.
fn written_through_dm_crypt(
    s: &Scratch,
    image: &Path,
    key: &Path,
    name: &str,
    seed: u64,
) -> PathBuf {
    let plain = s.path("plain.bin");
    let map = Mapping::open(image, key, name);
    write_random(&plain, block_size(&map.path()), seed);
    cmd("dd")
        .arg(format!("if={}", plain.display()))
        .arg(format!("of={}", map.path().display()))
        .args(["bs=1M", "oflag=direct", "status=none"])
        .ok();
    plain
}

fn cat_matches_dm_crypt(test: &str, args: &str) {
    require_ublk();
    let s = Scratch::new(test);
    let (image, key) = format(&s, args);
    let payload = written_through_dm_crypt(&s, &image, &key, test, 41);
    let out = s.path("out.bin");
    // decrypting the whole volume in a debug build under emulation takes its time
    imgblk()
        .args(["cat", "--luks", "--key-file"])
        .arg(&key)
        .arg("-o")
        .arg(&out)
        .arg(&image)
        .timeout(Duration::from_secs(400))
        .ok();
    assert_eq!(file_size(&out), file_size(&payload));
    assert_same_bytes(&out, 0, &payload, 0, file_size(&payload));

    let bad = s.path("bad-key");
    std::fs::write(&bad, b"not it").unwrap();
    let failed = imgblk()
        .args(["cat", "--luks", "--key-file"])
        .arg(&bad)
        .arg(&image)
        .fails();
    assert!(
        failed.stderr.contains("no key slot matches"),
        "{}",
        failed.describe()
    );
}

#[test]
#[ignore = "needs ublk and dm-crypt: run by ci/test (in a VM if needed)"]
fn luks1_pbkdf2_cat_matches_dm_crypt() {
    cat_matches_dm_crypt(
        "luks1",
        "--type luks1 --cipher aes-xts-plain64 --pbkdf-force-iterations 1000",
    );
}

#[test]
#[ignore = "needs ublk and dm-crypt: run by ci/test (in a VM if needed)"]
fn luks1_cbc_essiv_cat_matches_dm_crypt() {
    cat_matches_dm_crypt(
        "luks1-essiv",
        "--type luks1 --cipher aes-cbc-essiv:sha256 --key-size 256 --pbkdf-force-iterations 1000",
    );
}

#[test]
#[ignore = "needs ublk and dm-crypt: run by ci/test (in a VM if needed)"]
fn luks2_argon2id_cat_matches_dm_crypt() {
    cat_matches_dm_crypt(
        "luks2",
        "--type luks2 --pbkdf argon2id --pbkdf-force-iterations 4 --pbkdf-memory 16384 --pbkdf-parallel 1",
    );
}

#[test]
#[ignore = "needs ublk and dm-crypt: run by ci/test (in a VM if needed)"]
fn luks2_4k_sectors_cat_matches_dm_crypt() {
    cat_matches_dm_crypt(
        "luks2-4k",
        "--type luks2 --pbkdf pbkdf2 --pbkdf-force-iterations 1000 --sector-size 4096",
    );
}

#[test]
#[ignore = "needs ublk and dm-crypt: run by ci/test (in a VM if needed)"]
fn luks2_ext4_checks_clean_through_attach() {
    require_ublk();
    let s = Scratch::new("luks-ext4");
    let args = "--type luks2 --pbkdf pbkdf2 --pbkdf-force-iterations 1000";
    let (image, key) = format(&s, args);
    {
        let map = Mapping::open(&image, &key, "luks-ext4");
        cmd("mkfs.ext4")
            .args(["-q", "-F", "-L", "inside"])
            .arg(map.path())
            .ok();
    }
    let key_arg = key.to_str().unwrap();
    let dev = Device::attach(&image, &["--luks", "--key-file", key_arg]);
    cmd("e2fsck").arg("-fn").arg(&dev.path).ok();
    let label = cmd("blkid")
        .args(["-p", "-s", "LABEL", "-o", "value"])
        .arg(&dev.path)
        .ok();
    assert_eq!(label.stdout.trim(), "inside", "{}", label.describe());
}

/// LUKS2 with 4 KiB sectors served by two queues (issue 26): the device's logical block
/// is the encryption sector, as dm-crypt's, so the kernel refuses a 512-byte direct write
/// instead of sending one that imgblk would have to read, patch and write back; fio's
/// verified random writes from two jobs all read back; and after kill -9 of the daemon,
/// `recover` unlocks the volume again with the key file recorded at attach, and fio
/// finds every block it wrote intact.
#[test]
#[ignore = "needs ublk: run by ci/test (in a VM if needed)"]
fn luks2_4k_sectors_two_queues_verify_and_recover() {
    require_ublk();
    let s = Scratch::new("luks2-4k-rw");
    let args = "--type luks2 --pbkdf pbkdf2 --pbkdf-force-iterations 1000 --sector-size 4096";
    let (image, key) = format(&s, args);
    let key_arg = key.to_str().unwrap();
    let options = ["--rw", "--queues", "2", "--luks", "--key-file", key_arg];
    let dev = Device::attach(&image, &options);
    let recorded = std::fs::canonicalize(&key).unwrap();
    assert_eq!(
        dev.info["key_file"].as_str(),
        recorded.to_str(),
        "{}",
        dev.info
    );
    let ss = cmd("blockdev").arg("--getss").arg(&dev.path).ok();
    assert_eq!(ss.stdout.trim(), "4096", "{}", ss.describe());
    let partial = cmd("dd")
        .args([
            "if=/dev/zero",
            "bs=512",
            "count=1",
            "oflag=direct",
            "status=none",
        ])
        .arg(format!("of={}", dev.path.display()))
        .fails();
    assert!(
        partial.stderr.contains("Invalid argument"),
        "{}",
        partial.describe()
    );

    fio_verify(&dev.path, "--do_verify=1");
    dev.kill_and_recover();
    fio_verify(&dev.path, "--verify_only=1");
    dev.detach();
}

/// Reads all of `dev` with `readers` concurrent `dd iflag=direct` of block sizes from
/// `sizes` (in turn), each into its own file, and checks each against `plain`.
fn concurrent_reads_match(s: &Scratch, dev: &Path, plain: &Path, sizes: &[&str], readers: usize) {
    let len = file_size(plain);
    let outs: Vec<PathBuf> = (0..readers)
        .map(|i| s.path(&format!("read{i}.bin")))
        .collect();
    std::thread::scope(|scope| {
        for (i, out) in outs.iter().enumerate() {
            let bs = sizes[i % sizes.len()];
            scope.spawn(move || {
                cmd("dd")
                    .arg(format!("if={}", dev.display()))
                    .arg(format!("of={}", out.display()))
                    .arg(format!("bs={bs}"))
                    .args(["iflag=direct", "status=none"])
                    .timeout(Duration::from_secs(400))
                    .ok()
            });
        }
    });
    for out in &outs {
        assert_eq!(file_size(out), len, "{}", out.display());
        assert_same_bytes(out, 0, plain, 0, len);
    }
}

/// A LUKS2 volume written through dm-crypt, copied into a qcow2 (`qemu-img convert`),
/// attached with `--luks` on two queues, and read by eight concurrent readers with block
/// sizes from 4 KiB (decrypted on the queue thread) to 1 MiB (ciphertext read on the
/// queue's ring, decrypted in pieces by the worker pool): every reader gets dm-crypt's
/// plaintext. Copy mode on 6.12, zero copy (decrypted in a daemon buffer, then copied into
/// the request's pages) on 6.18.
fn luks_in_qcow2_concurrent_reads(test: &str, args: &str) {
    require_ublk();
    let s = Scratch::new(test);
    let (image, key) = format(&s, args);
    let plain = written_through_dm_crypt(&s, &image, &key, test, 43);
    let qcow2 = s.path("luks.qcow2");
    let convert = [
        "convert",
        "-f",
        "raw",
        "-O",
        "qcow2",
        "-o",
        "cluster_size=65536",
    ];
    qemu_img(convert.iter().map(Path::new).chain([&*image, &*qcow2]));
    let key_arg = key.to_str().unwrap();
    let dev = Device::attach(&qcow2, &["--queues", "2", "--luks", "--key-file", key_arg]);
    assert_eq!(
        dev.info["zero_copy"].as_bool(),
        Some(kernel_has_zero_copy()),
        "{}",
        dev.info
    );
    let sizes = ["1M", "4k", "256k", "64k", "1M", "12k", "512k", "32k"];
    concurrent_reads_match(&s, &dev.path, &plain, &sizes, 8);
    dev.detach();
}

#[test]
#[ignore = "needs ublk and dm-crypt: run by ci/test (in a VM if needed)"]
fn luks2_in_qcow2_concurrent_reads_match_dm_crypt() {
    luks_in_qcow2_concurrent_reads(
        "luks2-qcow2-reads",
        "--type luks2 --pbkdf pbkdf2 --pbkdf-force-iterations 1000",
    );
}

#[test]
#[ignore = "needs ublk and dm-crypt: run by ci/test (in a VM if needed)"]
fn luks2_4k_in_qcow2_concurrent_reads_match_dm_crypt() {
    luks_in_qcow2_concurrent_reads(
        "luks2-4k-qcow2-reads",
        "--type luks2 --pbkdf pbkdf2 --pbkdf-force-iterations 1000 --sector-size 4096",
    );
}
