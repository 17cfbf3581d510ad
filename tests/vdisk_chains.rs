//! Snapshot chains of VMDK (made by qemu-img/qemu-io) and VHD (a differencing disk built
//! from qemu-img's dynamic ones), chains that mix formats (bytes and `map` depths against
//! qemu-img), VMDK extent files in `info`, and what broken chains report.

mod common;

use common::{compare, imgblk, map_runs, open, open_err, qemu_img, qemu_io};
use imgblk::image::{open_image, OpenOptions};
use imgblk::ErrorKind;
use std::fs;
use std::path::Path;

/// base (in its own directory) <- mid <- top, each written after its parent.
fn make_vmdk_chain(root: &Path) {
    let base_dir = root.join("base");
    let snap_dir = root.join("snap");
    fs::create_dir_all(&base_dir).unwrap();
    fs::create_dir_all(&snap_dir).unwrap();
    qemu_img(
        &base_dir,
        &["create", "-q", "-f", "vmdk", "base.vmdk", "24M"],
    );
    qemu_io(
        &base_dir,
        "base.vmdk",
        "vmdk",
        &[
            (0x11, 0, 4 << 20),
            (0x12, 10 << 20, 1 << 20),
            (0x13, (20 << 20) + 4096, 8192),
        ],
    );
    qemu_img(
        &snap_dir,
        &[
            "create",
            "-q",
            "-f",
            "vmdk",
            "-b",
            "../base/base.vmdk",
            "-F",
            "vmdk",
            "mid.vmdk",
        ],
    );
    qemu_io(
        &snap_dir,
        "mid.vmdk",
        "vmdk",
        &[(0x22, 2 << 20, 3 << 20), (0x23, (12 << 20) + 512, 65536)],
    );
    qemu_img(
        &snap_dir,
        &[
            "create", "-q", "-f", "vmdk", "-b", "mid.vmdk", "-F", "vmdk", "top.vmdk",
        ],
    );
    qemu_io(
        &snap_dir,
        "top.vmdk",
        "vmdk",
        &[
            (0x33, 1 << 20, 4096),
            (0x34, (3 << 20) + 1024, 2048),
            (0x35, 23 << 20, 1 << 20),
        ],
    );
}

#[test]
fn three_deep_vmdk_chain_reads_like_qemu_img_convert() {
    let root = tempfile::tempdir().unwrap();
    make_vmdk_chain(root.path());
    let snap = root.path().join("snap");
    qemu_img(&snap, &["convert", "-O", "raw", "top.vmdk", "expected.raw"]);
    let expected = fs::read(snap.join("expected.raw")).unwrap();
    let image = open(&snap.join("top.vmdk"));
    let chain = image.chain();
    assert_eq!(chain.len(), 3, "{chain:?}");
    assert!(chain[2].path.ends_with("base/base.vmdk"), "{chain:?}");
    let mut extents = Vec::new();
    image.map(0, image.virtual_size(), &mut extents).unwrap();
    let depths: std::collections::BTreeSet<u32> = extents.iter().map(|e| e.depth).collect();
    assert!(
        depths.contains(&0) && depths.contains(&1) && depths.contains(&2),
        "{depths:?}"
    );
    compare(image.as_ref(), &expected, "vmdk chain", 0xc4a1);
}

#[test]
fn broken_vmdk_chains_name_the_files() {
    let root = tempfile::tempdir().unwrap();
    make_vmdk_chain(root.path());
    let snap = root.path().join("snap");
    let mid = snap.join("mid.vmdk");

    // parentCID edited: the child no longer matches its parent.
    let pristine = fs::read(&mid).unwrap();
    let text_at = pristine
        .windows(10)
        .position(|w| w == b"parentCID=")
        .unwrap()
        + 10;
    // QEMU writes the CID unpadded (%x), so the value is 1 to 8 digits: replace it by as
    // many of "0badc1d0"'s last digits.
    let digits = pristine[text_at..]
        .iter()
        .take_while(|b| b.is_ascii_hexdigit())
        .count();
    let bad = &"0badc1d0"[8 - digits..];
    let mut edited = pristine.clone();
    edited[text_at..text_at + digits].copy_from_slice(bad.as_bytes());
    fs::write(&mid, &edited).unwrap();
    let err = open_err(&snap.join("top.vmdk"));
    let msg = err.to_string();
    println!("{msg}");
    assert_eq!(err.kind(), ErrorKind::Corrupt, "{msg}");
    assert!(
        msg.contains("mid.vmdk") && msg.contains("base.vmdk") && msg.contains(bad),
        "{msg}"
    );
    fs::write(&mid, &pristine).unwrap();

    // The base is gone.
    fs::rename(root.path().join("base"), root.path().join("moved")).unwrap();
    let err = open_err(&snap.join("top.vmdk"));
    let msg = err.to_string();
    println!("{msg}");
    assert_eq!(err.kind(), ErrorKind::NotFound, "{msg}");
    assert!(
        msg.contains("mid.vmdk") && msg.contains("base/base.vmdk"),
        "{msg}"
    );
    fs::rename(root.path().join("moved"), root.path().join("base")).unwrap();
    open(&snap.join("top.vmdk"));
}

#[test]
fn truncated_sparse_vmdk_is_an_error_naming_the_file() {
    let dir = tempfile::tempdir().unwrap();
    qemu_img(dir.path(), &["create", "-q", "-f", "vmdk", "t.vmdk", "24M"]);
    qemu_io(dir.path(), "t.vmdk", "vmdk", &[(0x44, 0, 1 << 20)]);
    let path = dir.path().join("t.vmdk");
    // Cut inside the primary grain table (header, descriptor, redundant GD and GT, GD, GT...).
    let file = fs::OpenOptions::new().write(true).open(&path).unwrap();
    file.set_len(28 * 512).unwrap();
    let err = match open_image(&path, &OpenOptions::default()) {
        Err(e) => e,
        Ok(image) => {
            let mut buf = vec![0u8; 1 << 20];
            imgblk::image::io::read_at(image.as_ref(), &mut buf, 0).unwrap_err()
        }
    };
    println!("{err}");
    assert!(err.to_string().contains(path.to_str().unwrap()), "{err}");
    assert_eq!(err.kind(), ErrorKind::Corrupt, "{err}");
}

fn be32(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes(b[at..at + 4].try_into().unwrap())
}

fn be64(b: &[u8], at: usize) -> u64 {
    u64::from_be_bytes(b[at..at + 8].try_into().unwrap())
}

fn vhd_checksum(b: &[u8]) -> u32 {
    !b.iter().fold(0u32, |s, &x| s.wrapping_add(u32::from(x)))
}

/// Turns the dynamic VHD `child` into a differencing disk of `parent`: disk type 4, the
/// parent's unique id, a W2ru locator, and bitmaps that only mark `written` sectors.
fn make_differencing(child: &Path, parent: &Path, written: &[(u64, u64)]) {
    let parent_bytes = fs::read(parent).unwrap();
    let parent_id: [u8; 16] = parent_bytes[parent_bytes.len() - 512 + 68..][..16]
        .try_into()
        .unwrap();
    let mut b = fs::read(child).unwrap();
    let mut footer = b[b.len() - 512..].to_vec();
    let header_at = be64(&footer, 16) as usize;
    b.truncate(b.len() - 512);

    // Locator data in a new sector where the footer was.
    let name: Vec<u8> = ".\\parent.vhd"
        .encode_utf16()
        .flat_map(u16::to_le_bytes)
        .collect();
    let locator_at = b.len();
    let mut sector = name.clone();
    sector.resize(512, 0);
    b.extend_from_slice(&sector);

    let header = &mut b[header_at..header_at + 1024];
    header[40..56].copy_from_slice(&parent_id);
    header[576..580].copy_from_slice(b"W2ru");
    header[580..584].copy_from_slice(&1u32.to_be_bytes());
    header[584..588].copy_from_slice(&(name.len() as u32).to_be_bytes());
    header[592..600].copy_from_slice(&(locator_at as u64).to_be_bytes());
    header[36..40].fill(0);
    let sum = vhd_checksum(header);
    header[36..40].copy_from_slice(&sum.to_be_bytes());

    // Bitmaps: only the sectors written in the child are present.
    let table = be64(&b[header_at..], 16) as usize;
    let entries = be32(&b[header_at..], 28) as usize;
    let block = u64::from(be32(&b[header_at..], 32));
    for i in 0..entries {
        let sector = be32(&b, table + i * 4);
        if sector == u32::MAX {
            continue;
        }
        let bitmap_at = sector as usize * 512;
        let bits = (block / 512) as usize;
        b[bitmap_at..bitmap_at + bits / 8].fill(0);
        for &(off, len) in written {
            for s in off / 512..(off + len).div_ceil(512) {
                if s / (block / 512) == i as u64 {
                    let bit = (s % (block / 512)) as usize;
                    b[bitmap_at + bit / 8] |= 0x80 >> (bit % 8);
                }
            }
        }
    }

    footer[60..64].copy_from_slice(&4u32.to_be_bytes());
    footer[64..68].fill(0);
    let sum = vhd_checksum(&footer);
    footer[64..68].copy_from_slice(&sum.to_be_bytes());
    b[..512].copy_from_slice(&footer);
    b.extend_from_slice(&footer);
    fs::write(child, b).unwrap();
}

#[test]
fn differencing_vhd_reads_parent_where_bitmap_is_clear() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    qemu_img(d, &["create", "-q", "-f", "vpc", "parent.vhd", "24M"]);
    qemu_io(
        d,
        "parent.vhd",
        "vpc",
        &[(0x51, 0, 3 << 20), (0x52, 8 << 20, 1 << 20)],
    );
    qemu_img(
        d,
        &[
            "convert",
            "-f",
            "vpc",
            "-O",
            "raw",
            "parent.vhd",
            "parent.raw",
        ],
    );
    let mut expected = fs::read(d.join("parent.raw")).unwrap();

    qemu_img(d, &["create", "-q", "-f", "vpc", "child.vhd", "24M"]);
    let writes = [
        (0x61u8, (1 << 20) + 4096, 8192u64),
        (0x62, (8 << 20) + 512, 1024),
        (0x63, 16 << 20, 4096),
    ];
    qemu_io(d, "child.vhd", "vpc", &writes);
    for &(pattern, off, len) in &writes {
        expected[off as usize..(off + len) as usize].fill(pattern);
    }
    let written: Vec<(u64, u64)> = writes.iter().map(|&(_, o, l)| (o, l)).collect();
    make_differencing(&d.join("child.vhd"), &d.join("parent.vhd"), &written);

    let image = open(&d.join("child.vhd"));
    assert_eq!(image.chain().len(), 2);
    compare(image.as_ref(), &expected, "vhd differencing", 0xd1ff);

    // A parent with another unique id is refused, naming both files.
    qemu_img(d, &["create", "-q", "-f", "vpc", "other.vhd", "24M"]);
    fs::rename(d.join("parent.vhd"), d.join("orig.vhd")).unwrap();
    fs::rename(d.join("other.vhd"), d.join("parent.vhd")).unwrap();
    let msg = open_err(&d.join("child.vhd")).to_string();
    println!("{msg}");
    assert!(
        msg.contains("child.vhd") && msg.contains("parent.vhd") && msg.contains("unique id"),
        "{msg}"
    );

    // No parent at all: the paths tried are named.
    fs::remove_file(d.join("parent.vhd")).unwrap();
    let err = open_err(&d.join("child.vhd"));
    assert_eq!(err.kind(), ErrorKind::NotFound);
    println!("{err}");
    assert!(err.to_string().contains("parent.vhd"), "{err}");
}

/// `top` (in `dir`) through imgblk: `cat` equals `qemu-img convert -O raw`, and `map
/// --json` gives the depth, data and zero `qemu-img map --output=json` gives, byte for
/// byte; `depths` of the layers must all appear.
fn check_against_qemu(dir: &Path, top: &str, depths: u64) {
    qemu_img(dir, &["convert", "-O", "raw", top, "expected.raw"]);
    imgblk(dir, &["cat", "-o", "cat.raw", top]);
    assert!(
        fs::read(dir.join("cat.raw")).unwrap() == fs::read(dir.join("expected.raw")).unwrap(),
        "{top}: cat differs from qemu-img convert"
    );
    let ours = map_runs(&imgblk(dir, &["map", "--json", top]));
    let theirs = map_runs(qemu_img(dir, &["map", "--output=json", top]).as_bytes());
    assert_eq!(
        ours, theirs,
        "{top}: map differs from qemu-img map (ours first)"
    );
    for depth in 0..depths {
        assert!(
            ours.iter().any(|r| r.2 == depth),
            "{top}: no run at depth {depth}: {ours:?}"
        );
    }
}

/// A 4 MiB base image `name` in `format` (qemu-img create options `options`) with data
/// in its first MiB and zeroes written at 3 MiB.
fn make_base(dir: &Path, name: &str, format: &str, options: &str) {
    qemu_img(dir, &["create", "-q", "-f", "raw", "base.raw", "4M"]);
    qemu_io(dir, "base.raw", "raw", &[(0x41, 0, 1 << 20)]);
    let mut args = vec!["convert", "-O", format];
    if !options.is_empty() {
        args.extend(["-o", options]);
    }
    qemu_img(dir, &[&args[..], &["base.raw", name]].concat());
}

/// A child `name` in `format` of `parent` (`parent_format`), with its own writes.
fn make_child(
    dir: &Path,
    name: &str,
    format: &str,
    parent: &str,
    parent_format: &str,
    pattern: u8,
) {
    qemu_img(
        dir,
        &[
            "create",
            "-q",
            "-f",
            format,
            "-b",
            parent,
            "-F",
            parent_format,
            name,
        ],
    );
    let at = u64::from(pattern & 0x07) << 17;
    qemu_io(
        dir,
        name,
        format,
        &[(pattern, at, 65536), (pattern, (2 << 20) + at, 4096)],
    );
}

/// Every parent format under a qcow2 child, and VMDK under VMDK (the children qemu-img
/// makes: vpc, vhdx and vdi images cannot have a backing file there).
#[test]
fn two_deep_chains_of_every_format_pair_map_like_qemu_img() {
    let bases = [
        ("raw", "base.img", ""),
        ("qcow2", "base.qcow2", "cluster_size=65536"),
        ("vmdk", "base.vmdk", "subformat=monolithicSparse"),
        ("vmdk", "flat.vmdk", "subformat=monolithicFlat"),
        ("vpc", "base.vhd", "subformat=dynamic"),
        ("vhdx", "base.vhdx", "subformat=dynamic"),
        ("vdi", "base.vdi", "static=off"),
    ];
    for (format, base, options) in bases {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        make_base(d, base, format, options);
        make_child(d, "top.qcow2", "qcow2", base, format, 0x52);
        check_against_qemu(d, "top.qcow2", 2);
        if format == "vmdk" {
            make_child(d, "top.vmdk", "vmdk", base, format, 0x53);
            check_against_qemu(d, "top.vmdk", 2);
        }
    }
}

#[test]
fn three_deep_mixed_chains_map_like_qemu_img() {
    // (base format, base, its options, middle format, middle, top format)
    let chains = [
        (
            "vmdk",
            "flat.vmdk",
            "subformat=monolithicFlat",
            "vmdk",
            "mid.vmdk",
            "qcow2",
        ),
        (
            "vmdk",
            "split.vmdk",
            "subformat=twoGbMaxExtentSparse",
            "vmdk",
            "mid.vmdk",
            "vmdk",
        ),
        (
            "vhdx",
            "base.vhdx",
            "subformat=dynamic",
            "qcow2",
            "mid.qcow2",
            "qcow2",
        ),
        (
            "vpc",
            "base.vhd",
            "subformat=dynamic",
            "qcow2",
            "mid.qcow2",
            "qcow2",
        ),
        (
            "qcow2",
            "base.qcow2",
            "cluster_size=4096",
            "qcow2",
            "mid.qcow2",
            "qcow2",
        ),
    ];
    for (base_format, base, options, mid_format, mid, top_format) in chains {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        make_base(d, base, base_format, options);
        make_child(d, mid, mid_format, base, base_format, 0x64);
        let top = format!("top.{top_format}");
        make_child(d, &top, top_format, mid, mid_format, 0x69);
        check_against_qemu(d, &top, 3);
    }
}

/// A VMDK's extent files are parts of its layer: `info` lists them under it, and counts
/// the bytes they hold for that layer, not as backing files of a chain.
#[test]
fn info_lists_vmdk_extent_files_within_their_layer() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    for (sub, flat) in [
        ("twoGbMaxExtentSparse", false),
        ("twoGbMaxExtentFlat", true),
        ("monolithicFlat", true),
    ] {
        let base = format!("{sub}.vmdk");
        make_base(d, &base, "vmdk", &format!("subformat={sub}"));
        make_child(d, "top.qcow2", "qcow2", &base, "vmdk", 0x71);
        let info: serde_json::Value =
            serde_json::from_slice(&imgblk(d, &["info", "--json", "top.qcow2"])).unwrap();
        let chain = info["chain"].as_array().unwrap();
        assert_eq!(chain.len(), 2, "{sub}: {info}");
        assert_eq!(chain[1]["path"], base.as_str(), "{sub}");
        let extents = chain[1]["extents"].as_array().unwrap();
        assert_eq!(extents.len(), 1, "{sub}: {info}");
        assert!(
            extents[0]["path"].as_str().unwrap().starts_with(sub),
            "{sub}"
        );
        assert_eq!(extents[0]["flat"], flat, "{sub}");
        assert!(chain[0].get("extents").is_none(), "{sub}");
        // The base's first MiB of data is counted for the base (depth 1), but where the
        // child's clusters cover it.
        let allocated: Vec<u64> = info["allocated"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_u64().unwrap())
            .collect();
        assert_eq!(allocated.len(), 2, "{sub}: {info}");
        assert!(
            allocated[1] > 0 && allocated[0] + allocated[1] >= 1 << 20,
            "{sub}: {allocated:?}"
        );
        let text = String::from_utf8(imgblk(d, &["info", "top.qcow2"])).unwrap();
        assert!(
            text.contains("backing file [1]: ")
                && text.contains("  extent: ")
                && !text.contains("backing file [2]"),
            "{sub}: {text}"
        );
    }
}
