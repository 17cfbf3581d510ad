//! Layout discovery on fixtures made by the real tools (sfdisk, sgdisk, mkfs.*, mkswap,
//! cryptsetup, xorriso), checked against what `sfdisk --json` and `blkid -p` say
//! about the same bytes. A missing tool fails the test: install it with ci/install-deps.

use imgblk::image::{open_image, DiskImage, OpenOptions};
use imgblk::layout::{discover, Layout, Node, NodeKind, SliceView, TableKind};
use std::collections::HashMap;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;

const MIB: u64 = 1 << 20;

/// The package that provides each tool, for the failure message.
fn package(tool: &str) -> &'static str {
    match tool {
        "sfdisk" => "fdisk",
        "sgdisk" => "gdisk",
        "blkid" | "mkswap" => "util-linux",
        "mkfs.ext2" | "mkfs.ext3" | "mkfs.ext4" => "e2fsprogs",
        "mkfs.xfs" => "xfsprogs",
        "mkfs.vfat" => "dosfstools",
        "mkfs.btrfs" => "btrfs-progs",
        "mkntfs" => "ntfs-3g",
        "cryptsetup" => "cryptsetup-bin",
        "xorriso" => "xorriso",
        _ => "?",
    }
}

/// The path of `tool`; panics (failing the test) when it is not installed.
fn tool(name: &str) -> PathBuf {
    let path = std::env::var("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/sbin", "/usr/bin"].map(PathBuf::from))
        .map(|dir| dir.join(name))
        .find(|p| p.is_file())
        .unwrap_or_else(|| {
            panic!(
                "required tool {name} is missing: install package {} (ci/install-deps)",
                package(name)
            )
        })
}

/// Runs `name args`, failing the test with its output when it fails; returns stdout.
fn run(name: &str, args: &[&str]) -> String {
    let out = Command::new(tool(name)).args(args).output().unwrap();
    assert!(
        out.status.success(),
        "{name} {args:?} failed: {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn sparse(path: &Path, size: u64) {
    File::create(path).unwrap().set_len(size).unwrap();
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// Copies the non-zero MiB blocks of `src` into `dst` at byte `offset`.
fn copy_into(src: &Path, dst: &Path, offset: u64) {
    let (src, dst) = (
        File::open(src).unwrap(),
        File::options().write(true).open(dst).unwrap(),
    );
    let len = src.metadata().unwrap().len();
    let mut buf = vec![0u8; MIB as usize];
    let mut pos = 0;
    while pos < len {
        let n = (len - pos).min(MIB) as usize;
        src.read_exact_at(&mut buf[..n], pos).unwrap();
        if buf[..n].iter().any(|&b| b != 0) {
            dst.write_all_at(&buf[..n], offset + pos).unwrap();
        }
        pos += n as u64;
    }
}

fn open(path: &Path) -> Arc<dyn DiskImage> {
    Arc::from(open_image(path, &OpenOptions::default()).unwrap())
}

/// What `blkid -p` finds in `size` bytes at `offset` of `path`.
fn blkid(path: &Path, offset: u64, size: u64) -> HashMap<String, String> {
    let out = Command::new(tool("blkid"))
        .args([
            "-p",
            "-o",
            "export",
            "-O",
            &offset.to_string(),
            "-S",
            &size.to_string(),
            s(path),
        ])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_string(), v.replace("\\ ", " ")))
        .collect()
}

/// Checks the node's content against blkid on the same bytes of `path`.
fn assert_like_blkid(node: &Node, path: &Path, offset: u64) {
    let b = blkid(path, offset, node.size);
    let c = node
        .content
        .as_ref()
        .unwrap_or_else(|| panic!("{}: nothing detected; blkid says {b:?}", node.name));
    let get = |k: &str| b.get(k).map(String::as_str);
    assert_eq!(
        Some(c.kind.as_str()),
        get("TYPE"),
        "{}: type; blkid {b:?}",
        node.name
    );
    assert_eq!(
        c.label.as_deref(),
        get("LABEL"),
        "{}: label; blkid {b:?}",
        node.name
    );
    assert_eq!(
        c.uuid.as_deref(),
        get("UUID"),
        "{}: uuid; blkid {b:?}",
        node.name
    );
}

/// Checks the partitions of the only disk against `sfdisk --json`.
fn assert_like_sfdisk(layout: &Layout, path: &Path) {
    let json: serde_json::Value =
        serde_json::from_str(&run("sfdisk", &["--json", s(path)])).unwrap();
    let table = &json["partitiontable"];
    let disk = &layout.disks[0];
    let want = table["partitions"].as_array().unwrap();
    assert_eq!(disk.children.len(), want.len(), "{:#?}", disk.children);
    for (node, p) in disk.children.iter().zip(want) {
        let part = node.partition.as_ref().unwrap();
        let number: u32 = p["node"]
            .as_str()
            .unwrap()
            .trim_start_matches(s(path))
            .parse()
            .unwrap();
        assert_eq!(part.number, number);
        assert_eq!(
            part.start,
            p["start"].as_u64().unwrap() * 512,
            "{}",
            node.name
        );
        assert_eq!(
            part.size,
            p["size"].as_u64().unwrap() * 512,
            "{}",
            node.name
        );
        let ty = p["type"].as_str().unwrap().to_lowercase();
        let ours = part
            .type_id
            .trim_start_matches("0x")
            .trim_start_matches('0');
        assert_eq!(ours, ty.trim_start_matches('0'), "{}", node.name);
        if let Some(uuid) = p["uuid"].as_str() {
            assert_eq!(part.uuid.as_deref(), Some(uuid.to_lowercase().as_str()));
        }
        assert_eq!(part.name.as_deref(), p["name"].as_str());
    }
}

/// Asserts that one of `warnings` contains `needle`.
#[track_caller]
fn assert_warned(warnings: &[String], needle: &str) {
    assert!(
        warnings.iter().any(|w| w.contains(needle)),
        "no warning mentions {needle:?}: {warnings:#?}"
    );
}

/// Makes a file system of `size` bytes at `path` with `mkfs args... path`.
fn mkfs(path: &Path, size: u64, tool_name: &str, args: &[&str]) {
    sparse(path, size);
    let mut all = args.to_vec();
    all.push(s(path));
    run(tool_name, &all);
}

#[test]
fn mbr_with_primary_extended_and_logicals() {
    let dir = tempfile::tempdir().unwrap();
    let disk = dir.path().join("mbr.img");
    sparse(&disk, 64 * MIB);
    let script = "label: dos\nlabel-id: 0xdeadbeef\n,16M,83\n,,5\n,10M,83\n,,82\n";
    let mut child = Command::new(tool("sfdisk"))
        .args(["-q", s(&disk)])
        .stdin(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::io::Write::write_all(&mut child.stdin.take().unwrap(), script.as_bytes()).unwrap();
    assert!(child.wait().unwrap().success(), "sfdisk failed");
    let (ext4, fat, swap) = (
        dir.path().join("e"),
        dir.path().join("f"),
        dir.path().join("s"),
    );
    mkfs(&ext4, 16 * MIB, "mkfs.ext4", &["-q", "-F", "-L", "primary"]);
    mkfs(&fat, 10 * MIB, "mkfs.vfat", &["-n", "LOGICAL5"]);
    mkfs(&swap, 35 * MIB, "mkswap", &["-L", "logical6"]);
    copy_into(&ext4, &disk, 2048 * 512);
    copy_into(&fat, &disk, 36864 * 512);
    copy_into(&swap, &disk, 59392 * 512);

    let layout = discover(&[open(&disk)]);
    let d = &layout.disks[0];
    assert!(d.warnings.is_empty(), "{:?}", d.warnings);
    assert_eq!(d.table.as_ref().unwrap().kind, TableKind::Mbr);
    assert_eq!(d.table.as_ref().unwrap().id.as_deref(), Some("deadbeef"));
    assert_like_sfdisk(&layout, &disk);
    assert_eq!(d.children[1].kind, NodeKind::Extended);
    for name in ["disk0p1", "disk0p5", "disk0p6"] {
        let node = layout.find(name).unwrap();
        assert_like_blkid(node, &disk, node.offset);
    }
    assert_eq!(
        layout
            .find("disk0p5")
            .unwrap()
            .partition
            .as_ref()
            .unwrap()
            .uuid
            .as_deref(),
        Some("deadbeef-05")
    );
}

/// A 64 MiB GPT disk made by sgdisk: root (ext4), swap, and an EFI partition (FAT32).
fn gpt_fixture(dir: &Path) -> PathBuf {
    let disk = dir.join("gpt.img");
    sparse(&disk, 64 * MIB);
    run(
        "sgdisk",
        &[
            "-n1:2048:+16M",
            "-t1:8300",
            "-c1:root",
            "-n2:0:+8M",
            "-t2:8200",
            "-c2:swap",
            "-n3:0:0",
            "-t3:ef00",
            "-c3:esp",
            s(&disk),
        ],
    );
    let (root, swap, esp) = (dir.join("r"), dir.join("s"), dir.join("e"));
    mkfs(&root, 16 * MIB, "mkfs.ext4", &["-q", "-F", "-L", "root"]);
    mkfs(&swap, 8 * MIB, "mkswap", &["-L", "swap"]);
    mkfs(&esp, 39 * MIB, "mkfs.vfat", &["-F", "32", "-n", "ESP"]);
    copy_into(&root, &disk, 2048 * 512);
    copy_into(&swap, &disk, 34816 * 512);
    copy_into(&esp, &disk, 51200 * 512);
    disk
}

fn assert_gpt_fixture(layout: &Layout, disk: &Path) {
    assert_like_sfdisk(layout, disk);
    assert_eq!(layout.disks[0].table.as_ref().unwrap().kind, TableKind::Gpt);
    for p in &layout.disks[0].children {
        assert_like_blkid(p, disk, p.offset);
    }
}

#[test]
fn gpt_with_three_partitions() {
    let dir = tempfile::tempdir().unwrap();
    let disk = gpt_fixture(dir.path());
    let layout = discover(&[open(&disk)]);
    assert!(
        layout.disks[0].warnings.is_empty(),
        "{:?}",
        layout.disks[0].warnings
    );
    assert_gpt_fixture(&layout, &disk);
    let esp = layout.find("disk0p3").unwrap();
    assert_eq!(
        esp.partition.as_ref().unwrap().type_name,
        Some("EFI System")
    );
    let json = serde_json::to_value(&layout).unwrap();
    assert_eq!(json["disks"][0]["children"][0]["content"]["label"], "root");
}

#[test]
fn gpt_primary_destroyed_uses_backup() {
    let dir = tempfile::tempdir().unwrap();
    let disk = gpt_fixture(dir.path());
    File::options()
        .write(true)
        .open(&disk)
        .unwrap()
        .write_all_at(&[0u8; 512], 512)
        .unwrap();
    let layout = discover(&[open(&disk)]);
    let w = &layout.disks[0].warnings;
    assert_warned(w, "primary GPT header at LBA 1 is missing");
    assert_warned(w, "using the backup");
    assert_eq!(layout.disks[0].children.len(), 3);
}

#[test]
fn gpt_with_hybrid_mbr_prefers_gpt() {
    let dir = tempfile::tempdir().unwrap();
    let disk = gpt_fixture(dir.path());
    run("sgdisk", &["-h", "3", s(&disk)]);
    let layout = discover(&[open(&disk)]);
    let w = &layout.disks[0].warnings;
    assert_warned(w, "hybrid MBR");
    assert_gpt_fixture(&layout, &disk);
}

/// Discovery reads only through the image's extent map, so a disk embedded in another
/// image (here: at 3 MiB in a bigger file, seen through a `SliceView`) reads the same.
#[test]
fn gpt_through_a_view() {
    let dir = tempfile::tempdir().unwrap();
    let disk = gpt_fixture(dir.path());
    let outer = dir.path().join("outer.img");
    sparse(&outer, 70 * MIB);
    copy_into(&disk, &outer, 3 * MIB);
    let view = SliceView::new(open(&outer), 3 * MIB, 64 * MIB).unwrap();
    let layout = discover(&[Arc::new(view)]);
    assert!(
        layout.disks[0].warnings.is_empty(),
        "{:?}",
        layout.disks[0].warnings
    );
    assert_gpt_fixture(&layout, &disk);
}

#[test]
fn every_signature_like_blkid() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let key = d.join("key");
    std::fs::write(&key, "secret").unwrap();
    let iso_dir = d.join("iso");
    std::fs::create_dir(&iso_dir).unwrap();
    std::fs::write(iso_dir.join("hello.txt"), "hello").unwrap();
    let luks = |version: &'static str| {
        let mut a = vec!["luksFormat", "-q", "--type", version, "--pbkdf", "pbkdf2"];
        a.extend([
            "--pbkdf-force-iterations",
            "1000",
            "--key-file",
            key.to_str().unwrap(),
        ]);
        a
    };
    let (luks1, mut luks2) = (luks("luks1"), luks("luks2"));
    luks2.extend(["--label", "secret-disk"]);
    #[rustfmt::skip]
    let cases: Vec<(&str, u64, &str, Vec<&str>)> = vec![
        ("ext2", 8 * MIB, "mkfs.ext2", vec!["-q", "-F", "-L", "e2"]),
        ("ext3", 8 * MIB, "mkfs.ext3", vec!["-q", "-F", "-L", "e3"]),
        ("ext4", 8 * MIB, "mkfs.ext4", vec!["-q", "-F", "-L", "e4", "-U", "0b2e0d4e-4c0a-4d7e-9a43-3d4f1b5a6c7d"]),
        ("xfs", 300 * MIB, "mkfs.xfs", vec!["-q", "-f", "-L", "xfs-label"]),
        ("btrfs", 128 * MIB, "mkfs.btrfs", vec!["-q", "-f", "-L", "butter"]),
        ("fat16", 16 * MIB, "mkfs.vfat", vec!["-n", "SIXTEEN", "-i", "1234abcd"]),
        ("fat32", 64 * MIB, "mkfs.vfat", vec!["-F", "32", "-n", "THIRTYTWO"]),
        ("ntfs", 16 * MIB, "mkntfs", vec!["-F", "-Q", "-q", "-L", "windows"]),
        ("swap", 8 * MIB, "mkswap", vec!["-L", "swappy"]),
        ("luks1", 16 * MIB, "cryptsetup", luks1),
        ("luks2", 16 * MIB, "cryptsetup", luks2),
    ];
    let mut paths = Vec::new();
    for (name, size, tool_name, args) in cases {
        let path = d.join(name);
        mkfs(&path, size, tool_name, &args);
        paths.push(path);
    }
    let iso = d.join("iso9660");
    run(
        "xorriso",
        &[
            "-as",
            "mkisofs",
            "-quiet",
            "-V",
            "MY_CD",
            "-o",
            s(&iso),
            s(&iso_dir),
        ],
    );
    paths.push(iso);
    let images: Vec<_> = paths.iter().map(|p| open(p)).collect();
    let layout = discover(&images);
    for (disk, path) in layout.disks.iter().zip(&paths) {
        assert!(
            disk.warnings.is_empty(),
            "{}: {:?}",
            path.display(),
            disk.warnings
        );
        assert!(
            disk.children.is_empty(),
            "{}: no partitions expected",
            path.display()
        );
        assert_like_blkid(disk, path, 0);
    }
}
