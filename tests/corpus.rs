//! The corpus: every image kind the host's qemu-img writes, made from one raw disk with
//! data, written zeroes and holes, read through the imgblk binary. `cat` must equal
//! `qemu-img convert -O raw` byte for byte, and `map --json` must give the depth, data
//! and zero flags `qemu-img map --output=json` gives. The formats qemu-img writes and
//! imgblk cannot decode (QED, Parallels) are refused with exit 3 and their name in
//! `foreign_formats`, which also covers those only QEMU reads (Bochs, cloop, DMG).
//!
//! Writers other than qemu-img are covered elsewhere: VMware's streamOptimized layout in
//! `formats_read`, VirtualBox snapshots in `vdi_snapshots`, OVA exports in `ova`.

mod common;

use common::{imgblk, map_runs, qemu_img, qemu_io};
use std::fs;
use std::path::Path;

/// (qemu-img format, creation options) of every readable kind.
const KINDS: [(&str, &str); 18] = [
    ("raw", ""),
    ("qcow2", "-c"),
    ("qcow2", "compat=0.10"),
    ("qcow2", "compat=1.1,cluster_size=4096"),
    ("qcow2", "compat=1.1,extended_l2=on"),
    ("vmdk", "subformat=monolithicSparse"),
    ("vmdk", "subformat=monolithicFlat"),
    ("vmdk", "subformat=twoGbMaxExtentSparse"),
    ("vmdk", "subformat=twoGbMaxExtentFlat"),
    ("vmdk", "subformat=streamOptimized"),
    ("vpc", "subformat=dynamic"),
    ("vpc", "subformat=fixed"),
    ("vpc", "subformat=dynamic,force_size=on"),
    ("vhdx", "subformat=dynamic"),
    ("vhdx", "subformat=fixed"),
    ("vhdx", "subformat=dynamic,block_size=1M"),
    ("vdi", "static=off"),
    ("vdi", "static=on"),
];

/// A 6 MiB raw disk in `dir`: data (some not sector aligned), written zeroes, holes.
fn make_source(dir: &Path) {
    qemu_img(dir, &["create", "-q", "-f", "raw", "source.raw", "6M"]);
    qemu_io(
        dir,
        "source.raw",
        "raw",
        &[
            (0x5a, 0, 1 << 20),
            (0x6b, (2 << 20) + 4096, 8192),
            (0x7c, 4 << 20, 1536 << 10),
        ],
    );
}

/// `qemu-img convert` of the source to `format` with `options` (`-c`: compressed), as
/// `name`.
fn convert(dir: &Path, format: &str, options: &str, name: &str) {
    let mut args = vec!["convert", "-O", format];
    match options {
        "" => {}
        "-c" => args.push("-c"),
        _ => args.extend(["-o", options]),
    }
    qemu_img(dir, &[&args[..], &["source.raw", name]].concat());
}

#[test]
fn every_kind_qemu_img_writes_reads_and_maps_like_qemu_img() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    make_source(d);
    let mut differ: Vec<String> = Vec::new();
    for (format, options) in KINDS {
        for file in fs::read_dir(d).unwrap() {
            let path = file.unwrap().path();
            if path.file_name().unwrap() != "source.raw" {
                fs::remove_file(path).unwrap();
            }
        }
        let name = format!("image-{format}{}", options.replace([',', '=', '-'], "_"));
        convert(d, format, options, &name);
        qemu_img(
            d,
            &["convert", "-f", format, "-O", "raw", &name, "want.raw"],
        );
        imgblk(d, &["cat", "-o", "got.raw", &name]);
        assert!(
            fs::read(d.join("got.raw")).unwrap() == fs::read(d.join("want.raw")).unwrap(),
            "{name}: cat differs from qemu-img convert"
        );
        // QEMU's vhdx driver has no block status: qemu-img map calls every byte data, also
        // in blocks the BAT leaves unallocated, which imgblk reports as such.
        if format == "vhdx" {
            continue;
        }
        let ours = map_runs(&imgblk(d, &["map", "--json", &name]));
        let theirs =
            map_runs(qemu_img(d, &["map", "-f", format, "--output=json", &name]).as_bytes());
        if ours != theirs {
            differ.push(format!("{name}:\n  ours   {ours:?}\n  theirs {theirs:?}"));
        }
    }
    assert!(
        differ.is_empty(),
        "map differs from qemu-img map:\n{}",
        differ.join("\n")
    );
}
