//! Backup and restore without a kernel: `imgblk cat` restores that read back exactly as
//! `qemu-img convert -O raw` does, sparse where the image is zero; progress lines in logs.

mod common;

use common::{cryptsetup, imgblk, make_raw, qemu, qemu_img};
use std::fs::{self, File};
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::Path;
use std::process::{Command, Stdio};

/// Images with zero runs (holes, zeroed clusters, a compressed base under them), each with
/// `qemu-img convert -O raw` of it as `NAME.ref`.
fn images_with_zero_runs(d: &Path) -> Vec<&'static str> {
    common::compressed_chain(d, 7);
    qemu_img(d, &["convert", "-O", "vmdk", "top.qcow2", "flat.vmdk"]);
    let images = vec!["top.qcow2", "base.qcow2", "flat.vmdk"];
    for image in &images {
        qemu_img(d, &["convert", "-O", "raw", image, &format!("{image}.ref")]);
    }
    images
}

fn filled(path: &Path, len: usize) {
    fs::write(path, vec![0xffu8; len]).unwrap();
}

#[test]
fn restore_into_a_used_file_is_exact_and_sparse() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    for image in images_with_zero_runs(d) {
        let want = fs::read(d.join(format!("{image}.ref"))).unwrap();
        filled(&d.join("out.raw"), want.len() + (1 << 20));
        imgblk(d, &["cat", "--sparse", "-o", "out.raw", image]);
        assert!(
            fs::read(d.join("out.raw")).unwrap() == want,
            "cat -o {image}"
        );
        // qemu-img also finds zeroes inside data clusters: allow for those (1 MiB)
        let qemu_out = fs::metadata(d.join(format!("{image}.ref"))).unwrap();
        let ours = fs::metadata(d.join("out.raw")).unwrap();
        assert!(
            ours.blocks() < want.len() as u64 / 1024 && ours.blocks() <= qemu_out.blocks() + 2048,
            "{image}: {} blocks allocated, qemu-img {}",
            ours.blocks(),
            qemu_out.blocks()
        );

        // a redirected stdout is a file too, and gets holes
        let status = Command::new(env!("CARGO_BIN_EXE_imgblk"))
            .args(["cat", "--sparse", image])
            .current_dir(d)
            .stdout(File::create(d.join("stdout.raw")).unwrap())
            .status()
            .unwrap();
        assert!(status.success(), "cat {image} > file");
        let redirected = fs::metadata(d.join("stdout.raw")).unwrap();
        assert!(
            fs::read(d.join("stdout.raw")).unwrap() == want,
            "cat {image} > file"
        );
        assert_eq!(redirected.blocks(), ours.blocks(), "cat {image} > file");

        // what a script writes next to the same stdout goes around the guest's bytes,
        // which start where the script stood (an unaligned offset)
        let status = Command::new("sh")
            .args(["-c", "printf head; \"$0\" cat --sparse \"$1\"; echo end"])
            .args([env!("CARGO_BIN_EXE_imgblk"), image])
            .current_dir(d)
            .stdout(File::create(d.join("script.out")).unwrap())
            .status()
            .unwrap();
        assert!(status.success());
        let script = fs::read(d.join("script.out")).unwrap();
        assert!(
            script.starts_with(b"head")
                && script.ends_with(b"end\n")
                && script[4..4 + want.len()] == want[..],
            "{image}"
        );

        // without --sparse every byte is written
        imgblk(d, &["cat", "-o", "dense.raw", image]);
        let dense_out = fs::metadata(d.join("dense.raw")).unwrap();
        assert!(
            fs::read(d.join("dense.raw")).unwrap() == want,
            "cat {image}"
        );
        assert!(dense_out.blocks() >= want.len() as u64 / 512, "cat {image}");
    }
}

#[test]
fn progress_goes_to_a_log_as_lines() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    make_raw(&d.join("disk.raw"), 3);
    let run = |flag: &str| {
        let out = Command::new(env!("CARGO_BIN_EXE_imgblk"))
            .args(["cat", flag, "disk.raw"])
            .current_dir(d)
            .stdout(Stdio::null())
            .stderr(File::create(d.join("log")).unwrap())
            .status()
            .unwrap();
        assert!(out.success());
        fs::read_to_string(d.join("log")).unwrap()
    };
    let log = run("--progress");
    let lines: Vec<&str> = log.lines().collect();
    assert!(lines.len() >= 2, "{log}");
    assert!(
        lines[0].starts_with("imgblk: copied ")
            && lines[0].contains(" of 24.0 MiB (")
            && lines[0].contains("/s, ETA "),
        "{log}"
    );
    assert!(
        lines
            .last()
            .unwrap()
            .starts_with("imgblk: copied 24.0 MiB in "),
        "{log}"
    );
    assert_eq!(run("--no-progress"), "");
    assert_eq!(run("--sparse"), "", "no progress by default in a log");
}

/// The guest sectors (512 bytes) that runs of a `map --output=json` array list as
/// changed within the top `n` layers: present at a depth below `n`.
fn changed_sectors(runs: &serde_json::Value, n: u64) -> Vec<u64> {
    let mut sectors = Vec::new();
    for run in runs.as_array().unwrap() {
        if run["present"].as_bool().unwrap() && run["depth"].as_u64().unwrap() < n {
            let start = run["start"].as_u64().unwrap() / 512;
            sectors.extend(start..start + run["length"].as_u64().unwrap() / 512);
        }
    }
    sectors
}

/// A 3-deep chain of `format` (base ← mid ← top), each layer made while it was the top,
/// as a backup agent would see it: returns the layers, bottom first.
fn three_layers(d: &Path, format: &str) -> [String; 3] {
    let names = ["base", "mid", "top"].map(|n| format!("{n}.{format}"));
    make_raw(&d.join("base.raw"), 11);
    qemu_img(d, &["convert", "-O", format, "base.raw", &names[0]]);
    let writes = [
        [
            "write -P 0x11 1M 2M",
            "write -z 4M 1M",
            "write -P 0x12 20M 512k",
        ],
        [
            "write -P 0x21 2M 64k",
            "write -z 10M 2M",
            "write -P 0x22 22M 2M",
        ],
    ];
    for (i, w) in writes.iter().enumerate() {
        let (below, layer) = (&names[i], &names[i + 1]);
        qemu_img(
            d,
            &[
                "create", "-q", "-f", format, "-b", below, "-F", format, layer,
            ],
        );
        let mut args = vec!["-f", format];
        for c in w {
            args.extend(["-c", c]);
        }
        args.push(layer);
        qemu("qemu-io", d, &args);
    }
    names
}

#[test]
fn top_layers_are_what_qemu_img_map_says_and_incrementals_restore_the_image() {
    for format in ["qcow2", "vmdk"] {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let [base, mid, top] = three_layers(d, format);
        let theirs: serde_json::Value =
            serde_json::from_str(&qemu_img(d, &["map", "--output=json", &top])).unwrap();
        for n in [1u64, 2] {
            let ours: serde_json::Value = serde_json::from_slice(&imgblk(
                d,
                &["map", "--json", "--top-layers", &n.to_string(), &top],
            ))
            .unwrap();
            let want = changed_sectors(&theirs, n);
            assert!(
                !want.is_empty(),
                "{format}: nothing changed in {n} layer(s)"
            );
            assert!(
                changed_sectors(&ours, n) == want,
                "{format}: map --top-layers {n} differs from qemu-img map"
            );
            assert!(
                ours.as_array()
                    .unwrap()
                    .iter()
                    .all(|r| r["depth"].as_u64() < Some(n)),
                "{format}: map --top-layers {n} lists deeper runs"
            );
        }
        let since = imgblk(d, &["map", "--json", "--since", &base, &top]);
        assert_eq!(
            since,
            imgblk(d, &["map", "--json", "--top-layers", "2", &top]),
            "{format}: --since {base}"
        );

        // full backup of base, then one incremental per layer, applied in order
        filled(&d.join("restore.raw"), 1 << 20);
        imgblk(d, &["cat", "--sparse", "-o", "restore.raw", &base]);
        for layer in [&mid, &top] {
            imgblk(
                d,
                &[
                    "cat",
                    "--sparse",
                    "--top-layers",
                    "1",
                    "-o",
                    "restore.raw",
                    layer,
                ],
            );
        }
        qemu_img(d, &["convert", "-O", "raw", &top, "final.raw"]);
        assert!(
            fs::read(d.join("restore.raw")).unwrap() == fs::read(d.join("final.raw")).unwrap(),
            "{format}: full + incrementals differ from the final image"
        );

        // the same as qcow2 files, each over the previous backup
        let backups = ["full.qcow2", "incr1.qcow2", "incr2.qcow2"];
        imgblk(d, &["convert", "-o", backups[0], &base]);
        for (i, layer) in [&mid, &top].into_iter().enumerate() {
            imgblk(
                d,
                &[
                    "convert",
                    "--top-layers",
                    "1",
                    "-B",
                    backups[i],
                    "-o",
                    backups[i + 1],
                    layer,
                ],
            );
        }
        for (backup, layer) in backups.iter().zip([&base, &mid, &top]) {
            qemu_img(d, &["check", backup]);
            qemu_img(d, &["compare", backup, layer]);
        }
        imgblk(d, &["convert", "-O", "raw", "-o", "converted.raw", &top]);
        assert!(
            fs::read(d.join("converted.raw")).unwrap() == fs::read(d.join("final.raw")).unwrap(),
            "{format}: convert -O raw"
        );

        // usage errors: a pipe cannot take an incremental, a piece has no layers of its
        // own, and a chain has no more layers than it has
        for (args, says) in [
            (
                &["cat", "--top-layers", "1", &top][..],
                "needs a file or block device",
            ),
            (
                &["map", "--top-layers", "1", "--snapshot", "s1", &top],
                "not with --snapshot",
            ),
            (&["map", "--top-layers", "3", &top], "has 3 layer(s)"),
            (&["map", "--since", &top, &top], "top of the chain"),
            (
                &["convert", "--top-layers", "1", "-o", "x.qcow2", &top],
                "need -B",
            ),
        ] {
            let out = Command::new(env!("CARGO_BIN_EXE_imgblk"))
                .args(args)
                .current_dir(d)
                .stdout(Stdio::piped())
                .output()
                .unwrap();
            let err = String::from_utf8_lossy(&out.stderr);
            assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
            assert!(
                err.contains(says) && out.stdout.is_empty(),
                "{args:?}: {err}"
            );
        }
    }
}

/// Adjacent `(start, end)` ranges joined.
fn merged(ranges: impl IntoIterator<Item = (u64, u64)>) -> Vec<(u64, u64)> {
    let mut out: Vec<(u64, u64)> = Vec::new();
    for (start, end) in ranges {
        match out.last_mut() {
            Some(last) if last.1 == start => last.1 = end,
            _ => out.push((start, end)),
        }
    }
    out
}

/// `(start, end)` of each run of a JSON map whose start is in field `start`.
fn json_ranges<'a>(
    runs: &'a serde_json::Value,
    start: &'a str,
) -> impl Iterator<Item = (u64, u64)> + 'a {
    runs.as_array().unwrap().iter().map(move |run| {
        let s = run[start].as_u64().unwrap();
        (s, s + run["length"].as_u64().unwrap())
    })
}

/// The dirty ranges `map --json --bitmap NAME` lists, merged.
fn dirty(d: &Path, image: &str, name: &str) -> Vec<(u64, u64)> {
    let runs: serde_json::Value = serde_json::from_slice(&imgblk(
        d,
        &["map", "--json", "-U", "--bitmap", name, image],
    ))
    .unwrap();
    merged(json_ranges(&runs, "start"))
}

/// The dirty ranges of bitmap `name` that `qemu-nbd --bitmap` exports and nbdinfo reads
/// (`qemu:dirty-bitmap:NAME`), merged; `None` without nbdinfo (libnbd-bin).
fn nbdinfo_dirty(d: &Path, image: &str, name: &str) -> Option<Vec<(u64, u64)>> {
    let context = format!("--map=qemu:dirty-bitmap:{name}");
    let out = Command::new("nbdinfo")
        .args([
            "--json", &context, "--", "[", "qemu-nbd", "-r", "-f", "qcow2",
        ])
        .args(["-B", name, image, "]"])
        .current_dir(d)
        .output();
    let out = match out {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            eprintln!("nbdinfo not installed (libnbd-bin): not compared with qemu-nbd");
            return None;
        }
        other => other.unwrap(),
    };
    assert!(
        out.status.success(),
        "nbdinfo: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut runs: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    if let Some(list) = runs.as_array_mut() {
        list.retain(|run| run["type"].as_u64().unwrap() & 1 == 1);
    }
    Some(merged(json_ranges(&runs, "offset")))
}

#[test]
fn qcow2_dirty_bitmaps_give_what_qemu_wrote() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    make_raw(&d.join("base.raw"), 5);
    qemu_img(d, &["convert", "-O", "qcow2", "base.raw", "disk.qcow2"]);
    // the full backup, taken when the bitmaps start tracking
    imgblk(d, &["cat", "--sparse", "-o", "restore.raw", "disk.qcow2"]);
    imgblk(d, &["convert", "-o", "full.qcow2", "disk.qcow2"]);
    qemu_img(d, &["bitmap", "--add", "disk.qcow2", "b0"]);
    qemu_img(
        d,
        &["bitmap", "--add", "-g", "256k", "disk.qcow2", "coarse"],
    );
    qemu_img(d, &["bitmap", "--add", "--disable", "disk.qcow2", "off"]);
    qemu(
        "qemu-io",
        d,
        &[
            "-c",
            "write -P 0xaa 1M 64k",
            "-c",
            "write -P 0xbb 5000k 4k",
            "-c",
            "write -z 12M 1M",
            "-c",
            "discard 20M 128k",
            "disk.qcow2",
        ],
    );
    let info = String::from_utf8(imgblk(d, &["info", "disk.qcow2"])).unwrap();
    for line in [
        "  b0  granularity 64.0 KiB  flags [auto]",
        "  coarse  granularity 256.0 KiB  flags [auto]",
        "  off  granularity 64.0 KiB  flags []",
    ] {
        assert!(info.lines().any(|l| l == line), "{line:?} not in:\n{info}");
    }
    // the written ranges, each widened to whole granules of the bitmap
    const K: u64 = 1024;
    let written = [(1024, 64), (5000, 4), (12288, 1024), (20480, 128)].map(|(s, l)| (s * K, l * K));
    for (name, granule) in [("b0", 64 * K), ("coarse", 256 * K)] {
        let want =
            written.map(|(s, l)| (s / granule * granule, (s + l).div_ceil(granule) * granule));
        assert_eq!(dirty(d, "disk.qcow2", name), want, "{name}");
    }
    assert_eq!(dirty(d, "disk.qcow2", "off"), []);
    for name in ["b0", "coarse", "off"] {
        if let Some(theirs) = nbdinfo_dirty(d, "disk.qcow2", name) {
            assert_eq!(dirty(d, "disk.qcow2", name), theirs, "{name} vs nbdinfo");
        }
    }

    // the incremental over the full backup gives the image
    imgblk(
        d,
        &[
            "cat",
            "--sparse",
            "--bitmap",
            "b0",
            "-o",
            "restore.raw",
            "disk.qcow2",
        ],
    );
    qemu_img(d, &["convert", "-O", "raw", "disk.qcow2", "final.raw"]);
    assert!(
        fs::read(d.join("restore.raw")).unwrap() == fs::read(d.join("final.raw")).unwrap(),
        "full + bitmap incremental differ from the image"
    );
    imgblk(
        d,
        &[
            "convert",
            "--bitmap",
            "b0",
            "-B",
            "full.qcow2",
            "-o",
            "incr.qcow2",
            "disk.qcow2",
        ],
    );
    qemu_img(d, &["check", "incr.qcow2"]);
    qemu_img(d, &["compare", "incr.qcow2", "disk.qcow2"]);
    // it holds the dirty ranges, and nothing else
    let mut own: serde_json::Value =
        serde_json::from_str(&qemu_img(d, &["map", "--output=json", "incr.qcow2"])).unwrap();
    if let Some(runs) = own.as_array_mut() {
        runs.retain(|r| r["depth"] == 0 && r["present"] == true);
    }
    assert_eq!(
        merged(json_ranges(&own, "start")),
        dirty(d, "disk.qcow2", "b0")
    );

    // a bitmap that a running (or dead) QEMU holds is in use, and refused
    let mut writer = Command::new("qemu-io")
        .args(["-c", "sleep 60000", "disk.qcow2"])
        .current_dir(d)
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let in_use = (0..100).find_map(|_| {
        std::thread::sleep(std::time::Duration::from_millis(100));
        let out = Command::new(env!("CARGO_BIN_EXE_imgblk"))
            .args(["map", "-U", "--bitmap", "b0", "disk.qcow2"])
            .current_dir(d)
            .output()
            .unwrap();
        // While QEMU opens the image its header passes through a state where the
        // bitmaps extension looks stale (autoclear bit clear): wait for "in use".
        (out.status.code() == Some(5)).then_some(out)
    });
    writer.kill().unwrap();
    writer.wait().unwrap();
    let out = in_use.expect("qemu-io never marked b0 in use");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(5), "{err}");
    assert!(err.contains("bitmap \"b0\" is marked in use"), "{err}");
}

/// The file offset of the bitmap directory of qcow2 v3 `image`, from its bitmaps header
/// extension (and that extension's offset).
fn bitmap_directory(image: &[u8]) -> (usize, usize) {
    let be32 = |at: usize| u32::from_be_bytes(image[at..at + 4].try_into().unwrap());
    let mut pos = be32(100) as usize;
    loop {
        let (kind, len) = (be32(pos), be32(pos + 4) as usize);
        assert_ne!(kind, 0, "no bitmaps extension");
        if kind == 0x2385_2875 {
            let dir = u64::from_be_bytes(image[pos + 24..pos + 32].try_into().unwrap());
            return (dir as usize, pos + 8);
        }
        pos += 8 + len.div_ceil(8) * 8;
    }
}

#[test]
fn damaged_bitmaps_are_named_in_errors_and_never_hinder_reading() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    qemu_img(d, &["create", "-q", "-f", "qcow2", "good.qcow2", "8M"]);
    qemu_img(d, &["bitmap", "--add", "good.qcow2", "b0"]);
    let good = fs::read(d.join("good.qcow2")).unwrap();
    let (directory, extension) = bitmap_directory(&good);
    let damages: [(&str, usize, &[u8]); 6] = [
        ("nb_bitmaps is 0", extension, &[0, 0, 0, 0]),
        ("bitmap_directory_size is", extension + 8, &[0xff; 8]),
        ("\"b0\" granularity_bits is 40", directory + 17, &[40]),
        ("\"b0\" type is 2", directory + 16, &[2]),
        ("name_size/extra_data_size", directory + 18, &[0xff, 0xff]),
        (
            "\"b0\" bitmap_table_size is 9",
            directory + 8,
            &[0, 0, 0, 9],
        ),
    ];
    for (field, at, bytes) in damages {
        let mut bad = good.clone();
        bad[at..at + bytes.len()].copy_from_slice(bytes);
        fs::write(d.join("bad.qcow2"), &bad).unwrap();
        let out = Command::new(env!("CARGO_BIN_EXE_imgblk"))
            .args(["map", "--bitmap", "b0", "bad.qcow2"])
            .current_dir(d)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(3), "{field}: {err}");
        assert!(
            err.contains("bad.qcow2") && err.contains(field),
            "{field}: {err}"
        );
        imgblk(d, &["info", "bad.qcow2"]);
        imgblk(d, &["cat", "-o", "out.raw", "bad.qcow2"]);
    }
}

#[test]
fn compressed_convert_reads_as_the_source_in_qemu() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let [base, mid, top] = three_layers(d, "qcow2");
    // A layer of 4 KiB clusters: its changes cover parts of the output's 64 KiB clusters,
    // which must be completed from the previous backup.
    let small = "small.qcow2";
    let create = format!("create -q -f qcow2 -o cluster_size=4096 -b {top} -F qcow2 {small}");
    qemu_img(d, &create.split(' ').collect::<Vec<_>>());
    qemu(
        "qemu-io",
        d,
        &[
            "-f",
            "qcow2",
            "-c",
            "write -P 0x33 100k 4k",
            "-c",
            "write -z 1500k 4k",
            "-c",
            "write -P 0x34 15M 12k",
            small,
        ],
    );
    // compressed, and plain (the same one-pass writer, without compression)
    for codec in [Some("zlib"), Some("zstd"), None] {
        let name = codec.unwrap_or("plain");
        let backups = ["full", "incr1", "incr2", "incr3"].map(|b| format!("{b}-{name}.qcow2"));
        let compress: Vec<&str> = codec.iter().flat_map(|c| ["-c", c]).collect();
        let compress = &compress[..];
        imgblk(
            d,
            &[&["convert"], compress, &["-o", &backups[0], &base]].concat(),
        );
        for (i, layer) in [&mid, &top, small].into_iter().enumerate() {
            imgblk(
                d,
                &[
                    &["convert"],
                    compress,
                    &[
                        "--top-layers",
                        "1",
                        "-B",
                        &backups[i],
                        "-o",
                        &backups[i + 1],
                        layer,
                    ],
                ]
                .concat(),
            );
        }
        for (backup, layer) in backups.iter().zip([&base, &mid, &top, small]) {
            qemu_img(d, &["check", backup]);
            qemu_img(d, &["compare", backup, layer]);
            let info: serde_json::Value =
                serde_json::from_str(&qemu_img(d, &["info", "--output=json", backup])).unwrap();
            assert_eq!(
                info["format-specific"]["data"]["compression-type"],
                codec.unwrap_or("zlib"),
                "{backup}"
            );
        }
        // Pattern-filled clusters are stored compressed, random ones as they are; nothing
        // is compressed unless asked.
        let mut kinds = Vec::new();
        for backup in &backups {
            let map: serde_json::Value =
                serde_json::from_str(&qemu_img(d, &["map", "--output=json", backup])).unwrap();
            kinds.extend(
                map.as_array()
                    .unwrap()
                    .iter()
                    .filter(|r| r["data"] == true && r["depth"] == 0)
                    .map(|r| r["compressed"].as_bool()),
            );
        }
        assert!(
            kinds.contains(&Some(true)) == codec.is_some() && kinds.contains(&Some(false)),
            "{name}: {kinds:?}"
        );
        // imgblk reads its own output back through the chain.
        qemu_img(d, &["convert", "-O", "raw", small, "final.raw"]);
        let ours = imgblk(d, &["cat", &backups[3]]);
        assert!(ours == fs::read(d.join("final.raw")).unwrap(), "{name}");
    }
    for (args, says) in [
        (
            &["convert", "-c", "zstd", "-O", "raw", "-o", "x.raw", &base][..],
            "-c needs a qcow2",
        ),
        (
            &["convert", "-c", "zlib", "-o", "full-zlib.qcow2", &base],
            "cannot create",
        ),
    ] {
        let out = Command::new(env!("CARGO_BIN_EXE_imgblk"))
            .args(args)
            .current_dir(d)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success() && err.contains(says),
            "{args:?}: {err}"
        );
    }
}

/// The changed ranges `map --json ARGS` lists, merged.
fn changed(d: &Path, args: &[&str]) -> Vec<(u64, u64)> {
    let runs: serde_json::Value =
        serde_json::from_slice(&imgblk(d, &[&["map", "--json"], args].concat())).unwrap();
    merged(json_ranges(&runs, "start"))
}

/// A partition and a LUKS volume in a partition get the changed ranges of the image, as
/// they fall in them, and their incremental restores give the piece of the final image.
#[test]
fn pieces_get_the_changes_that_fall_in_them() {
    const M: u64 = 1 << 20;
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    // a 32 MiB disk: partition 1 (1..9 MiB) with data, partition 2 (10..30 MiB) LUKS2
    let disk = d.join("disk.raw");
    make_raw(&disk, 3);
    File::options()
        .write(true)
        .open(&disk)
        .unwrap()
        .set_len(32 * M)
        .unwrap();
    let key = d.join("key");
    fs::write(&key, "pieces").unwrap();
    let luks = d.join("luks.img");
    File::create(&luks).unwrap().set_len(20 * M).unwrap();
    let format = ["luksFormat", "--type", "luks2", "--pbkdf", "pbkdf2"];
    let fast = ["--pbkdf-force-iterations", "1000", "--sector-size", "4096"];
    cryptsetup(
        &[&format[..], &fast[..], &[luks.to_str().unwrap()]].concat(),
        &key,
    );
    let header = fs::read(&luks).unwrap();
    File::options()
        .write(true)
        .open(&disk)
        .unwrap()
        .write_all_at(&header, 10 * M)
        .unwrap();
    let mut sfdisk = Command::new("sfdisk")
        .args(["-q", disk.to_str().unwrap()])
        .stdin(Stdio::piped())
        .spawn()
        .expect("sfdisk (fdisk)");
    use std::io::Write;
    sfdisk
        .stdin
        .take()
        .unwrap()
        .write_all(b"label: dos\n2048,16384,83\n20480,40960,83\n")
        .unwrap();
    assert!(sfdisk.wait().unwrap().success());
    qemu_img(d, &["convert", "-O", "qcow2", "disk.raw", "base.qcow2"]);
    let overlay = "create -f qcow2 -b base.qcow2 -F qcow2 top.qcow2";
    qemu_img(d, &overlay.split(' ').collect::<Vec<_>>());
    qemu_img(d, &["bitmap", "--add", "top.qcow2", "b0"]);
    // the full backups of both pieces, taken when top.qcow2 was made
    let key_arg = key.to_str().unwrap();
    let p2 = ["--part", "2", "--luks", "--key-file", key_arg];
    imgblk(d, &["cat", "-o", "p1.raw", "--part", "1", "base.qcow2"]);
    imgblk(
        d,
        &[&["cat", "-o", "p2.raw"][..], &p2, &["base.qcow2"]].concat(),
    );
    // writes: 64 KiB at 2 MiB (1 MiB into partition 1), 4 KiB at 26 MiB + 64 KiB (64 KiB
    // into the LUKS data area, which starts 16 MiB into partition 2), and one outside both
    qemu(
        "qemu-io",
        d,
        &[
            "-c",
            "write -P 0x11 2M 64k",
            "-c",
            "write -P 0x22 26688k 4k",
            "-c",
            "write -P 0x33 31M 64k",
            "top.qcow2",
        ],
    );
    // both count whole 64 KiB clusters (the 4 KiB write allocated one; the bitmap's
    // granule is 64 KiB)
    for change in [&["--top-layers", "1"][..], &["--bitmap", "b0"]] {
        let p1 = [&["--part", "1"][..], change, &["top.qcow2"]].concat();
        assert_eq!(
            changed(d, &p1),
            [(M, M + 64 * 1024)],
            "{change:?} partition 1"
        );
        let p2 = [&p2[..], change, &["top.qcow2"]].concat();
        assert_eq!(
            changed(d, &p2),
            [(64 * 1024, 128 * 1024)],
            "{change:?} LUKS in 2"
        );
    }
    // the key read from standard input (`--key-file -`) unlocks the same
    let out = Command::new(env!("CARGO_BIN_EXE_imgblk"))
        .args([
            "map",
            "--json",
            "--top-layers",
            "1",
            "--part",
            "2",
            "--luks",
        ])
        .args(["--key-file", "-", "top.qcow2"])
        .current_dir(d)
        .stdin(File::open(&key).unwrap())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let runs: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        merged(json_ranges(&runs, "start")),
        [(64 * 1024, 128 * 1024)]
    );
    // the incrementals over the full backups give each piece of the final image
    imgblk(
        d,
        &[
            "cat",
            "-o",
            "p1.raw",
            "--part",
            "1",
            "--top-layers",
            "1",
            "top.qcow2",
        ],
    );
    let want = imgblk(d, &["cat", "--part", "1", "top.qcow2"]);
    assert!(
        fs::read(d.join("p1.raw")).unwrap() == want,
        "partition 1 restored"
    );
    imgblk(
        d,
        &[
            &["cat", "-o", "p2.raw", "--bitmap", "b0"][..],
            &p2,
            &["top.qcow2"],
        ]
        .concat(),
    );
    let want = imgblk(d, &[&["cat"][..], &p2, &["top.qcow2"]].concat());
    assert!(
        fs::read(d.join("p2.raw")).unwrap() == want,
        "LUKS volume restored"
    );
    let before = imgblk(d, &[&["cat"][..], &p2, &["base.qcow2"]].concat());
    assert!(before != want, "the write into the LUKS volume changed it");
}

/// A plain qcow2 written in one pass, with runs of data that cross from one L2 table to
/// the next (512 MiB apart with 64 KiB clusters) and zero clusters between data ones:
/// clean for `qemu-img check`, equal for `qemu-img compare`.
#[test]
fn plain_convert_across_l2_tables_reads_as_the_source() {
    const M: u64 = 1 << 20;
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let src = File::create(d.join("src.raw")).unwrap();
    src.set_len(1536 * M).unwrap();
    let mut data = vec![0u8; (3 * M) as usize];
    for (i, byte) in data.iter_mut().enumerate() {
        *byte = (i / 4096 % 251) as u8 + 1;
    }
    data[(M as usize)..][..65536].fill(0); // one zero cluster inside the run
    src.write_all_at(&data, 511 * M).unwrap();
    src.write_all_at(&data[..12345], 1024 * M + 777).unwrap();
    imgblk(d, &["convert", "-o", "out.qcow2", "src.raw"]);
    qemu_img(d, &["check", "out.qcow2"]);
    qemu_img(
        d,
        &[
            "compare",
            "-f",
            "raw",
            "-F",
            "qcow2",
            "src.raw",
            "out.qcow2",
        ],
    );
    let map: serde_json::Value =
        serde_json::from_str(&qemu_img(d, &["map", "--output=json", "out.qcow2"])).unwrap();
    let data_bytes: u64 = map
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["data"] == true)
        .map(|r| r["length"].as_u64().unwrap())
        .sum();
    // the run less its zero cluster, plus the one cluster the small write falls in
    assert_eq!(
        data_bytes,
        3 * M - 65536 + 65536,
        "only non-zero clusters stored"
    );
}
