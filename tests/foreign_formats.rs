//! Files in container formats imgblk cannot decode are refused by `info`, `map` and `cat`
//! with exit 3 and the format's name, instead of being served as raw disks; `--format
//! raw` still serves their bytes.

mod common;

use common::qemu_img;
use std::fs;
use std::path::Path;
use std::process::{Command, Output};

fn imgblk(args: &[&str], dir: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_imgblk"))
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap()
}

/// Writes `head` at the start of a 64 KiB file and `tail` at its last bytes.
fn write_file(path: &Path, head: &[u8], tail: &[u8]) {
    let mut bytes = vec![0u8; 64 << 10];
    bytes[..head.len()].copy_from_slice(head);
    let at = bytes.len() - tail.len();
    bytes[at..].copy_from_slice(tail);
    fs::write(path, bytes).unwrap();
}

/// The foreign files of `dir`, each with the name the refusal must give.
fn make_foreign_files(dir: &Path) -> Vec<(&'static str, &'static str)> {
    qemu_img(dir, &["create", "-q", "-f", "qed", "disk.qed", "1M"]);
    qemu_img(dir, &["create", "-q", "-f", "parallels", "disk.hdd", "1M"]);
    qemu_img(dir, &["create", "-q", "-f", "qcow", "disk.qcow", "1M"]);
    let mut bochs = b"Bochs Virtual HD Image\0".to_vec();
    bochs.resize(32, 0);
    bochs.extend_from_slice(b"Redolog\0\0\0\0\0\0\0\0\0Growing\0");
    write_file(&dir.join("disk.bochs"), &bochs, &[]);
    let cloop =
        b"#!/bin/sh\n#V2.0 Format\nmodprobe cloop file=$0 && mount -r -t iso9660 /dev/cloop $1\n";
    write_file(&dir.join("disk.cloop"), cloop, &[]);
    let mut koly = vec![0u8; 512];
    koly[..4].copy_from_slice(b"koly");
    koly[4..8].copy_from_slice(&4u32.to_be_bytes());
    koly[8..12].copy_from_slice(&512u32.to_be_bytes());
    write_file(&dir.join("disk.dmg"), &[], &koly);
    vec![
        ("disk.qed", "QED"),
        ("disk.hdd", "Parallels"),
        ("disk.qcow", "qcow version 1"),
        ("disk.bochs", "Bochs"),
        ("disk.cloop", "cloop"),
        ("disk.dmg", "Apple DMG"),
    ]
}

#[test]
fn unreadable_formats_are_refused_with_exit_3_naming_them() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    for (file, name) in make_foreign_files(d) {
        for command in [
            &["info", file][..],
            &["map", "--json", file],
            &["cat", "-o", "out.raw", file],
        ] {
            let out = imgblk(command, d);
            let stderr = String::from_utf8_lossy(&out.stderr);
            assert_eq!(out.status.code(), Some(3), "imgblk {command:?}: {stderr}");
            assert!(
                stderr.contains(name) && stderr.contains(file),
                "imgblk {command:?}: {stderr}"
            );
            assert!(out.stdout.is_empty(), "imgblk {command:?} printed output");
        }
    }
}

#[test]
fn format_raw_still_serves_the_bytes_of_a_foreign_file() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    for (file, _) in make_foreign_files(d) {
        if file == "disk.qcow" {
            continue; // qcow v1 is refused by the qcow2 reader, not by detection.
        }
        let out = imgblk(&["cat", "--format", "raw", "-o", "out.raw", file], d);
        assert!(
            out.status.success(),
            "{file}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(
            fs::read(d.join("out.raw")).unwrap(),
            fs::read(d.join(file)).unwrap()
        );
    }
}
