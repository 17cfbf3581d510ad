//! Reads VMDK, VHD, VHDX and VDI images qemu-img made from a known raw disk and compares
//! them byte for byte; checks `map` against `qemu-img map`.

mod common;

use common::{check_data_runs, compare, make_raw, open, qemu_img, qemu_virtual_size, random_reads};
use imgblk::image::{Format, Source};
use std::path::Path;

const SEED: u64 = 0x5eed_1234;

/// Converts `raw` to `format` with `options` and checks the result against `data`.
fn check_conversion(
    dir: &Path,
    raw: &Path,
    data: &[u8],
    format: &str,
    options: &[&str],
    want: Format,
) {
    let name = format!(
        "{format}-{}.img",
        options.join("-").replace(['=', ','], "_")
    );
    let out = dir.join(&name);
    let mut args = vec!["convert", "-O", format];
    for opt in options {
        args.extend(["-o", opt]);
    }
    args.extend([raw.to_str().unwrap(), out.to_str().unwrap()]);
    qemu_img(dir, &args);
    let image = open(&out);
    assert_eq!(image.format(), want, "{name}: detected format");
    assert_eq!(
        image.virtual_size(),
        qemu_virtual_size(&out, format),
        "{name}: virtual size differs from qemu-img info"
    );
    println!("{name}: comparing with seed {SEED:#x}");
    compare(image.as_ref(), data, &name, SEED);
    // Every format but the compressed one answers the read hot path without an extent
    // list for most 4 KiB reads of its data.
    if !options.iter().any(|o| o.contains("streamOptimized")) {
        let hits = check_data_runs(image.as_ref(), &name, SEED ^ 1, 300);
        assert!(
            hits > 0,
            "{name}: data_run found no data run in 300 lookups"
        );
    }
}

#[test]
fn vmdk_subformats_read_like_the_raw_disk() {
    let dir = tempfile::tempdir().unwrap();
    let raw = dir.path().join("disk.raw");
    let data = make_raw(&raw, SEED);
    for sub in [
        "monolithicSparse",
        "monolithicFlat",
        "twoGbMaxExtentSparse",
        "twoGbMaxExtentFlat",
        "streamOptimized",
    ] {
        check_conversion(
            dir.path(),
            &raw,
            &data,
            "vmdk",
            &[&format!("subformat={sub}")],
            Format::Vmdk,
        );
    }
}

#[test]
fn vpc_vhdx_vdi_read_like_the_raw_disk() {
    let dir = tempfile::tempdir().unwrap();
    let raw = dir.path().join("disk.raw");
    let data = make_raw(&raw, SEED);
    let cases = [
        ("vpc", "subformat=dynamic", Format::Vpc),
        ("vpc", "subformat=fixed", Format::Vpc),
        ("vpc", "subformat=dynamic,force_size=on", Format::Vpc),
        ("vhdx", "subformat=dynamic", Format::Vhdx),
        ("vhdx", "subformat=fixed", Format::Vhdx),
        ("vhdx", "subformat=dynamic,block_size=1M", Format::Vhdx),
        ("vdi", "static=on", Format::Vdi),
        ("vdi", "static=off", Format::Vdi),
    ];
    for (format, options, want) in cases {
        check_conversion(dir.path(), &raw, &data, format, &[options], want);
    }
}

/// (start, length, data?) runs, adjacent runs of the same kind merged.
fn merge(runs: impl IntoIterator<Item = (u64, u64, bool)>) -> Vec<(u64, u64, bool)> {
    let mut out: Vec<(u64, u64, bool)> = Vec::new();
    for (start, len, data) in runs {
        match out.last_mut() {
            Some(last) if last.2 == data && last.0 + last.1 == start => last.1 += len,
            _ => out.push((start, len, data)),
        }
    }
    out
}

#[test]
fn sparse_vmdk_map_classifies_like_qemu_img_map() {
    let dir = tempfile::tempdir().unwrap();
    let raw = dir.path().join("disk.raw");
    make_raw(&raw, SEED);
    let vmdk = dir.path().join("map.vmdk");
    qemu_img(
        dir.path(),
        &[
            "convert",
            "-O",
            "vmdk",
            "-o",
            "subformat=monolithicSparse",
            "disk.raw",
            "map.vmdk",
        ],
    );
    let json = qemu_img(dir.path(), &["map", "--output=json", "map.vmdk"]);
    let theirs: Vec<serde_json::Value> = serde_json::from_str(&json).unwrap();
    let theirs = merge(theirs.iter().map(|e| {
        (
            e["start"].as_u64().unwrap(),
            e["length"].as_u64().unwrap(),
            e["data"].as_bool().unwrap(),
        )
    }));

    let image = open(&vmdk);
    let mut extents = Vec::new();
    image.map(0, image.virtual_size(), &mut extents).unwrap();
    let mut pos = 0;
    let ours = merge(extents.iter().map(|e| {
        let data = matches!(e.source, Source::Data { .. } | Source::Compressed(_));
        let run = (pos, e.len, data);
        pos += e.len;
        run
    }));
    assert_eq!(ours, theirs, "data/zero runs differ from qemu-img map");
    assert!(
        ours.iter().any(|r| r.2) && ours.iter().any(|r| !r.2),
        "{ours:?}"
    );
}

#[test]
fn cold_tables_mapped_from_many_threads() {
    let dir = tempfile::tempdir().unwrap();
    let raw = dir.path().join("disk.raw");
    let data = make_raw(&raw, SEED);
    for (format, option) in [
        ("vmdk", "subformat=monolithicSparse"),
        ("vmdk", "subformat=streamOptimized"),
        ("vpc", "subformat=dynamic,force_size=on"),
        ("vhdx", "subformat=dynamic"),
    ] {
        let out = dir.path().join(format!("mt-{format}.img"));
        qemu_img(
            dir.path(),
            &[
                "convert",
                "-O",
                format,
                "-o",
                option,
                "disk.raw",
                out.to_str().unwrap(),
            ],
        );
        let image = open(&out);
        std::thread::scope(|s| {
            for t in 0..4u64 {
                let (image, data) = (image.as_ref(), &data);
                s.spawn(move || random_reads(image, data, format, SEED + t, 60));
            }
        });
    }
}

/// A streamOptimized VMDK as qemu-img writes it (the grain directory offset in the
/// header), rewritten the ways VMware writes and copies them: `gd_at_end` moves the offset
/// into a footer (marker with `val` 1, header copy, end-of-stream marker), `padding` zero
/// sectors follow.
fn vmware_stream(qemu_file: &[u8], gd_at_end: bool, padding: usize) -> Vec<u8> {
    let mut out = qemu_file.to_vec();
    assert_eq!(out.len() % 512, 0);
    let header = qemu_file[..512].to_vec();
    if gd_at_end {
        out[56..64].copy_from_slice(&u64::MAX.to_le_bytes());
    }
    let mut marker = [0u8; 512];
    marker[..8].copy_from_slice(&1u64.to_le_bytes());
    marker[12..16].copy_from_slice(&3u32.to_le_bytes());
    out.extend_from_slice(&marker);
    out.extend_from_slice(&header);
    out.resize(out.len() + 512 * (1 + padding), 0);
    out
}

#[test]
fn stream_optimized_vmdks_as_vmware_writes_them_read_like_the_raw_disk() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let raw = d.join("disk.raw");
    let data = make_raw(&raw, SEED);
    qemu_img(
        d,
        &[
            "convert",
            "-O",
            "vmdk",
            "-o",
            "subformat=streamOptimized",
            "disk.raw",
            "q.vmdk",
        ],
    );
    let qemu_file = std::fs::read(d.join("q.vmdk")).unwrap();
    // (name, footer directory, zero sectors after the end-of-stream marker, QEMU reads it)
    let cases = [
        ("footer.vmdk", true, 0, true),
        ("header-and-footer.vmdk", false, 0, true),
        ("padded.vmdk", true, 31, false),
        ("padded-header.vmdk", false, 127, true),
    ];
    for (name, gd_at_end, padding, qemu_reads) in cases {
        let path = d.join(name);
        std::fs::write(&path, vmware_stream(&qemu_file, gd_at_end, padding)).unwrap();
        if qemu_reads {
            qemu_img(d, &["convert", "-O", "raw", name, "ref.raw"]);
            assert!(
                std::fs::read(d.join("ref.raw")).unwrap() == data,
                "{name}: qemu-img"
            );
        }
        compare(open(&path).as_ref(), &data, name, SEED);
    }

    // More zeroes after the stream than the bound: a clear error, not a search of the file.
    let path = d.join("too-padded.vmdk");
    std::fs::write(&path, vmware_stream(&qemu_file, true, 4096)).unwrap();
    let err = common::open_err(&path);
    assert_eq!(err.kind(), imgblk::ErrorKind::Corrupt, "{err}");
    assert!(
        err.to_string().contains("GD_AT_END") && err.to_string().contains("too-padded.vmdk"),
        "{err}"
    );
}
