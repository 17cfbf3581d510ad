//! `imgblk ls`, `get` and `tar` against ext4 file systems made on the host with
//! `mkfs.ext4 -d` from a known tree: the tree read back from raw, qcow2 and VMDK images and
//! from inside MBR and GPT partitions must equal the source, name for name, byte for byte
//! and attribute for attribute; hostile file systems must give errors, never a panic.
//! A missing tool fails the test: install it with ci/install-deps.

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::fs::{self, File};
use std::io::{Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::Arc;

const MIB: u64 = 1 << 20;
const IMGBLK: &str = env!("CARGO_BIN_EXE_imgblk");
/// A name no terminal should see raw: an escape sequence and a newline.
const HOSTILE_NAME: &[u8] = b"bad\x1b[2Jname\n";

/// Runs a host tool, failing the test with its output when it fails.
fn run(tool: &str, args: &[&OsStr]) -> Output {
    let out = Command::new(tool)
        .args(args)
        .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
        .output()
        .unwrap_or_else(|e| panic!("{tool} is required (ci/install-deps): {e}"));
    succeeded(&format!("{tool} {args:?}"), out)
}

/// `out`, once checked that the command (`what`) succeeded.
fn succeeded(what: &str, out: Output) -> Output {
    assert!(
        out.status.success(),
        "{what}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// Runs imgblk; returns its output whatever the status.
fn imgblk(args: &[&OsStr]) -> Output {
    Command::new(IMGBLK).args(args).output().unwrap()
}

/// Runs imgblk, failing the test unless it succeeds; returns stdout.
fn imgblk_ok(args: &[&OsStr]) -> Vec<u8> {
    succeeded(&format!("imgblk {args:?}"), imgblk(args)).stdout
}

macro_rules! os {
    ($($a:expr),* $(,)?) => { &[$(AsRef::<OsStr>::as_ref(&$a)),*] };
}

/// Deterministic bytes that do not compress to nothing.
fn pattern(len: usize, seed: u32) -> Vec<u8> {
    let mut x = seed.wrapping_mul(2_654_435_761).max(1);
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            x as u8
        })
        .collect()
}

/// Sets a file's modification time (with nanoseconds) without following links.
fn set_mtime(path: &Path, secs: i64, nanos: i64) {
    let c = std::ffi::CString::new(path.as_os_str().as_bytes()).unwrap();
    let times = [
        libc::timespec {
            tv_sec: secs,
            tv_nsec: nanos,
        },
        libc::timespec {
            tv_sec: secs,
            tv_nsec: nanos,
        },
    ];
    // SAFETY: a valid C string and two timespecs, as utimensat(2) wants.
    let rc = unsafe {
        libc::utimensat(
            libc::AT_FDCWD,
            c.as_ptr(),
            times.as_ptr(),
            libc::AT_SYMLINK_NOFOLLOW,
        )
    };
    assert_eq!(rc, 0, "utimensat {}", path.display());
}

/// Builds the source tree: small and larger files, odd modes, nanosecond times, short and
/// long symbolic links, a hard link, a sparse file, a FIFO, a long path, a crowded
/// directory (htree once e2fsck -D indexes it) and a name with control characters.
fn make_tree(root: &Path) {
    fs::create_dir_all(root.join("dir/sub")).unwrap();
    fs::write(root.join("a.txt"), b"hello\n").unwrap();
    fs::write(root.join("dir/big.bin"), pattern(300_000, 1)).unwrap();
    if nix_is_root() {
        // Before the chmod: a chown clears the set-uid bit.
        std::os::unix::fs::lchown(root.join("dir/big.bin"), Some(1234), Some(5678)).unwrap();
    }
    fs::set_permissions(root.join("dir/big.bin"), fs::Permissions::from_mode(0o4750)).unwrap();
    fs::set_permissions(root.join("dir/sub"), fs::Permissions::from_mode(0o1777)).unwrap();
    std::os::unix::fs::symlink("../a.txt", root.join("dir/link")).unwrap();
    std::os::unix::fs::symlink("t".repeat(150), root.join("dir/longlink")).unwrap();
    fs::hard_link(root.join("a.txt"), root.join("hard")).unwrap();
    let sparse = File::create(root.join("sparse")).unwrap();
    sparse.set_len(8 * MIB).unwrap();
    sparse.write_all_at(b"middle", 4 * MIB).unwrap();
    // Data at both ends and a hole between.
    let ends = File::create(root.join("dir/ends")).unwrap();
    ends.write_all_at(&pattern(5000, 3), 0).unwrap();
    ends.write_all_at(b"end", 3 * MIB).unwrap();
    run("mkfifo", os![root.join("fifo")]);
    let deep = root.join("d".repeat(60)).join("e".repeat(60));
    fs::create_dir_all(&deep).unwrap();
    fs::write(deep.join("f".repeat(70)), b"deep").unwrap();
    fs::create_dir(root.join("many")).unwrap();
    for i in 0..400 {
        fs::write(
            root.join(format!("many/file-with-a-long-name-{i:04}")),
            i.to_string(),
        )
        .unwrap();
    }
    fs::write(root.join(OsStr::from_bytes(HOSTILE_NAME)), b"x").unwrap();
    // Whole seconds everywhere (mke2fs -d drops nanoseconds); the two with a fraction get
    // it in the image from debugfs (see `NANOS`).
    stamp_all(root, &mut 1_600_000_000);
    for (path, nanos) in NANOS {
        let secs = fs::symlink_metadata(root.join(path)).unwrap().mtime();
        set_mtime(&root.join(path), secs, nanos);
    }
}

/// Files whose modification time has a fraction of a second, and that fraction.
const NANOS: [(&str, i64); 2] = [("a.txt", 500_000_000), ("dir/link", 123_456_789)];

/// Gives every file below `path` its own whole-second modification time.
fn stamp_all(path: &Path, secs: &mut i64) {
    *secs += 1;
    set_mtime(path, *secs, 0);
    if fs::symlink_metadata(path).unwrap().is_dir() {
        for child in fs::read_dir(path).unwrap() {
            stamp_all(&child.unwrap().path(), secs);
        }
    }
}

/// Puts the fractions of `NANOS` into the file system at `image` (ext4 keeps them, shifted
/// left by 2, in the inode's `mtime_extra`), as the kernel would have.
fn set_nanos(image: &Path) {
    for (path, nanos) in NANOS {
        let request = format!("sif /{path} mtime_extra {}", nanos << 2);
        run("debugfs", os!["-w", "-R", request, image]);
    }
}

/// Device nodes put into the ext4 image with debugfs (mknod needs no root there):
/// name, kind, mode, major, minor; the block device's numbers need the new encoding.
const DEVICES: [(&str, char, u32, u32, u32); 2] = [
    ("chardev", 'c', 0o620, 4, 64),
    ("blockdev", 'b', 0o640, 259, 70000),
];

/// Extended attributes put into the ext4 image with debugfs (a host's file system may
/// not take `user.*` ones): path, name, value. The long one goes to an attribute block.
fn image_xattrs() -> Vec<(&'static str, &'static str, Vec<u8>)> {
    vec![
        ("a.txt", "user.greeting", b"hello there".to_vec()),
        ("dir/big.bin", "user.long", pattern(700, 9)),
        ("dir/big.bin", "trusted.t", b"1".to_vec()),
        ("dir", "user.on_a_directory", b"d".to_vec()),
        ("dir/link", "trusted.on_a_link", b"l".to_vec()),
    ]
}

/// Adds [`DEVICES`] and [`image_xattrs`] to the ext4 file system at `image`.
fn add_devices_and_xattrs(image: &Path, scratch: &Path) {
    let mut script = String::from("cd /\n");
    for (name, kind, mode, major, minor) in DEVICES {
        let encoded = (minor & 0xff) | (major << 8) | ((minor & !0xff) << 12);
        let ifmt = if kind == 'c' { 0o020000 } else { 0o060000 };
        script += &format!(
            "mknod {name} {kind} 1 1\nsif /{name} block[0] 0\nsif /{name} block[1] {encoded:#x}\n\
             sif /{name} mode 0{:o}\nsif /{name} mtime 1600000500\n",
            ifmt | mode
        );
    }
    for (i, (path, name, value)) in image_xattrs().into_iter().enumerate() {
        let file = scratch.join(format!("xattr{i}"));
        fs::write(&file, value).unwrap();
        script += &format!("ea_set -f {} /{path} {name}\n", file.display());
    }
    let script_file = scratch.join("debugfs.script");
    fs::write(&script_file, script).unwrap();
    run("debugfs", os!["-w", "-f", &script_file, image]);
}

/// The source tree as the archive of its image should give it back: [`source_files`]
/// with [`DEVICES`] and [`image_xattrs`].
fn expected_files(src: &Path) -> BTreeMap<Vec<u8>, Seen> {
    let mut want = source_files(src);
    for (name, kind, mode, major, minor) in DEVICES {
        let seen = Seen {
            kind,
            mode,
            uid: 0,
            gid: 0,
            mtime: "1600000500".into(),
            content: Vec::new(),
            xattrs: BTreeMap::new(),
            device: Some((major, minor)),
            sparse: false,
        };
        want.insert(format!("./{name}").into_bytes(), seen);
    }
    for (path, name, value) in image_xattrs() {
        let mut key = format!("./{path}").into_bytes();
        if src.join(path).symlink_metadata().unwrap().is_dir() {
            key.push(b'/');
        }
        want.get_mut(&key)
            .unwrap()
            .xattrs
            .insert(name.as_bytes().to_vec(), value);
    }
    want
}

fn nix_is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// `mkfs.ext4 -d src` into a new `size`-byte file, with 256-byte inodes (nanosecond times)
/// and `extra` options; directories indexed (htree) by `e2fsck -D`.
fn mkfs_ext4(path: &Path, src: &Path, size: u64, extra: &[&str]) {
    File::create(path).unwrap().set_len(size).unwrap();
    let mut args: Vec<&OsStr> = vec!["-q".as_ref(), "-F".as_ref(), "-I".as_ref(), "256".as_ref()];
    args.extend(extra.iter().map(OsStr::new));
    args.extend([OsStr::new("-d"), src.as_os_str(), path.as_os_str()]);
    run("mkfs.ext4", &args);
    let out = Command::new("e2fsck")
        .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
        .args(os!["-fyD", path])
        .output()
        .unwrap();
    // 0: clean, 1: corrected (the directories were re-indexed).
    assert!(
        matches!(out.status.code(), Some(0 | 1)),
        "e2fsck -fyD: {out:?}"
    );
}

/// A disk of `size` bytes with one partition (1 MiB in) as `label` ("dos" or "gpt")
/// holding the file system `fs`.
fn partitioned(path: &Path, fs_image: &Path, label: &str) {
    let fs_len = fs::metadata(fs_image).unwrap().len();
    File::create(path)
        .unwrap()
        .set_len(fs_len + 2 * MIB)
        .unwrap();
    let mut child = Command::new("sfdisk")
        .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
        .args(os!["-q", path])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .expect("sfdisk is required (ci/install-deps)");
    let script = format!("label: {label}\nstart=2048, size={}\n", fs_len / 512);
    child
        .stdin
        .take()
        .unwrap()
        .write_all(script.as_bytes())
        .unwrap();
    assert!(child.wait().unwrap().success(), "sfdisk failed");
    let bytes = fs::read(fs_image).unwrap();
    fs::OpenOptions::new()
        .write(true)
        .open(path)
        .unwrap()
        .write_all_at(&bytes, MIB)
        .unwrap();
}

/// A whole-disk LVM PV holding VG `vg0` with one linear LV `root` whose bytes are the
/// file system `fs_image` (a whole number of 4 MiB extents): label, metadata text at 4 KiB,
/// data from 1 MiB, written with imgblk's own LVM encoders (no root, no device mapper).
fn lvm_pv(path: &Path, fs_image: &Path) {
    lvm_pvs(&[path], fs_image);
}

/// As [`lvm_pv`], over one PV per path: the LV's extents are split between them in
/// order, one linear segment on each (a VG spanning the disks of a guest).
fn lvm_pvs(paths: &[&Path], fs_image: &Path) {
    use imgblk::layout::lvm::label::{encode_area, encode_label};
    use imgblk::layout::lvm::DiskArea;
    const EXTENT: u64 = 4 * MIB;
    let bytes = fs::read(fs_image).unwrap();
    let extents = (bytes.len() as u64).div_ceil(EXTENT);
    let n = paths.len() as u64;
    // extents of PV k: the LV's k-th share, the last PV taking what is left
    let share = |k: u64| {
        if k + 1 < n {
            extents / n
        } else {
            extents - extents / n * (n - 1)
        }
    };
    let size = |k: u64| MIB + share(k) * EXTENT;
    // PV k's UUID: the label's 32 characters, and as the metadata text writes it
    let uuid = |k: u64| format!("{k}bcdefGHIJKLmnopqrstUVWXyz012345");
    let dashed = |k: u64| {
        let u = uuid(k);
        format!(
            "{}-{}-{}-{}-{}-{}-{}",
            &u[..6],
            &u[6..10],
            &u[10..14],
            &u[14..18],
            &u[18..22],
            &u[22..26],
            &u[26..]
        )
    };
    let mut pvs = String::new();
    let mut segments = String::new();
    let mut start = 0;
    for k in 0..n {
        pvs += &format!(
            "\t\tpv{k} {{\n\t\t\tid = \"{}\"\n\t\t\tdevice = \"/dev/loop{k}\"\n\
             \t\t\tstatus = [\"ALLOCATABLE\"]\n\t\t\tflags = []\n\
             \t\t\tdev_size = {}\n\t\t\tpe_start = 2048\n\t\t\tpe_count = {}\n\t\t}}\n",
            dashed(k),
            size(k) / 512,
            share(k),
        );
        segments += &format!(
            "\t\t\tsegment{} {{\n\t\t\t\tstart_extent = {start}\n\t\t\t\textent_count = {}\n\
             \t\t\t\ttype = \"striped\"\n\t\t\t\tstripe_count = 1\n\
             \t\t\t\tstripes = [\n\t\t\t\t\t\"pv{k}\", 0\n\t\t\t\t]\n\t\t\t}}\n",
            k + 1,
            share(k),
        );
        start += share(k);
    }
    let text = format!(
        r#"vg0 {{
	id = "Jc2Ndp-KdV9-E1vC-0cjH-9ZbN-R2Z5-0fZ4Xq"
	seqno = 1
	format = "lvm2"
	status = ["RESIZEABLE", "READ", "WRITE"]
	flags = []
	extent_size = {extent_sectors}
	max_lv = 0
	max_pv = 0
	metadata_copies = 0

	physical_volumes {{
{pvs}	}}

	logical_volumes {{

		root {{
			id = "Lv0000-aaaa-bbbb-cccc-dddd-eeee-000001"
			status = ["READ", "WRITE", "VISIBLE"]
			flags = []
			segment_count = {n}

{segments}		}}
	}}
}}
contents = "Text Format Volume Group"
version = 1
"#,
        extent_sectors = EXTENT / 512,
    );
    let mda = DiskArea {
        offset: 4096,
        size: 64 << 10,
    };
    let mut from = 0usize;
    for (k, path) in (0..n).zip(paths) {
        let mut disk = vec![0u8; size(k) as usize];
        disk[512..1024].copy_from_slice(&encode_label(&uuid(k), size(k), MIB, &[mda]));
        let area = encode_area(mda.offset, mda.size, 512, &text);
        disk[4096..4096 + area.len()].copy_from_slice(&area);
        let part =
            &bytes[from.min(bytes.len())..(from + (share(k) * EXTENT) as usize).min(bytes.len())];
        disk[MIB as usize..][..part.len()].copy_from_slice(part);
        from += (share(k) * EXTENT) as usize;
        fs::write(path, disk).unwrap();
    }
}

/// What the comparison looks at for one file.
#[derive(Debug, PartialEq)]
struct Seen {
    kind: char,
    mode: u32,
    uid: u64,
    gid: u64,
    mtime: String,
    content: Vec<u8>,
    /// Extended attributes by full name.
    xattrs: BTreeMap<Vec<u8>, Vec<u8>>,
    /// A device node's major and minor numbers.
    device: Option<(u32, u32)>,
    /// A regular file with holes (source), archived as a sparse member (archive).
    sparse: bool,
}

/// A time as pax writes it: seconds, then a fraction when there is one.
fn pax_time(secs: i64, nanos: i64) -> String {
    if nanos == 0 {
        secs.to_string()
    } else {
        format!("{secs}.{}", format!("{nanos:09}").trim_end_matches('0'))
    }
}

/// The extended attributes of `path` (not following a symbolic link).
fn source_xattrs(path: &Path) -> BTreeMap<Vec<u8>, Vec<u8>> {
    let c_path = std::ffi::CString::new(path.as_os_str().as_bytes()).unwrap();
    let mut names = vec![0u8; 65536];
    // SAFETY: a valid C string and a buffer of the given length.
    let len = unsafe { libc::llistxattr(c_path.as_ptr(), names.as_mut_ptr().cast(), names.len()) };
    let mut out = BTreeMap::new();
    if len <= 0 {
        return out;
    }
    for name in names[..len as usize]
        .split(|b| *b == 0)
        .filter(|n| !n.is_empty())
    {
        let c_name = std::ffi::CString::new(name).unwrap();
        let mut value = vec![0u8; 65536];
        // SAFETY: valid C strings and a buffer of the given length.
        let n = unsafe {
            libc::lgetxattr(
                c_path.as_ptr(),
                c_name.as_ptr(),
                value.as_mut_ptr().cast(),
                value.len(),
            )
        };
        assert!(n >= 0, "lgetxattr {}", path.display());
        value.truncate(n as usize);
        out.insert(name.to_vec(), value);
    }
    out
}

/// The source tree as `Seen`s, by archive name (`./a.txt`); directories with a slash.
/// Of a file with several names, the first in the archive's order (depth first, by name)
/// is the file and the others are hard links (`h`) to it.
fn source_files(root: &Path) -> BTreeMap<Vec<u8>, Seen> {
    let mut out = source_files_dense(root);
    let mut names_of: BTreeMap<u64, Vec<Vec<u8>>> = BTreeMap::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(path) = stack.pop() {
        let meta = fs::symlink_metadata(&path).unwrap();
        if meta.is_dir() {
            stack.extend(fs::read_dir(&path).unwrap().map(|c| c.unwrap().path()));
        } else if meta.nlink() > 1 {
            let rel = path.strip_prefix(root).unwrap();
            let name = Path::new(".").join(rel).as_os_str().as_bytes().to_vec();
            names_of.entry(meta.ino()).or_default().push(name);
        }
    }
    for mut names in names_of.into_values() {
        // The walk's order: component by component.
        names.sort_by(|a, b| a.split(|c| *c == b'/').cmp(b.split(|c| *c == b'/')));
        for other in &names[1..] {
            let seen = out.get_mut(other).unwrap();
            seen.kind = 'h';
            seen.content = names[0].clone();
            seen.xattrs.clear();
            seen.sparse = false;
        }
    }
    out
}

/// The source tree as `Seen`s, every name a file of its own.
fn source_files_dense(root: &Path) -> BTreeMap<Vec<u8>, Seen> {
    let mut out = BTreeMap::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(path) = stack.pop() {
        let meta = fs::symlink_metadata(&path).unwrap();
        let rel = path.strip_prefix(root).unwrap();
        let mut name = Path::new(".").join(rel).as_os_str().as_bytes().to_vec();
        if name.ends_with(b"/") {
            name.pop(); // the root, "./"
        }
        let ft = meta.file_type();
        let (kind, content) = if ft.is_dir() {
            name.push(b'/');
            for child in fs::read_dir(&path).unwrap() {
                stack.push(child.unwrap().path());
            }
            ('d', Vec::new())
        } else if ft.is_symlink() {
            (
                'l',
                fs::read_link(&path)
                    .unwrap()
                    .as_os_str()
                    .as_bytes()
                    .to_vec(),
            )
        } else if ft.is_file() {
            ('-', fs::read(&path).unwrap())
        } else {
            ('p', Vec::new())
        };
        out.insert(
            name,
            Seen {
                kind,
                mode: meta.mode() & 0o7777,
                uid: u64::from(meta.uid()),
                gid: u64::from(meta.gid()),
                mtime: pax_time(meta.mtime(), meta.mtime_nsec()),
                content,
                xattrs: source_xattrs(&path),
                device: None,
                sparse: ft.is_file() && meta.blocks() * 512 < meta.size(),
            },
        );
    }
    out
}

/// An archive read back with the tar crate (pax records applied), by name.
fn archive_files(tar_bytes: &[u8]) -> BTreeMap<Vec<u8>, Seen> {
    let mut archive = tar::Archive::new(tar_bytes);
    let mut out = BTreeMap::new();
    // Raw: the tar crate's own pax reader splits records at newlines, which binary
    // xattr values hold; records are read here by their length, as the format says.
    let mut pax: Vec<(Vec<u8>, Vec<u8>)> = Vec::new();
    for entry in archive.entries().unwrap().raw(true) {
        let mut entry = entry.unwrap();
        let header = entry.header().clone();
        if header.entry_type() == tar::EntryType::XHeader {
            let mut records = Vec::new();
            entry.read_to_end(&mut records).unwrap();
            pax = pax_records(&records);
            continue;
        }
        let mut mtime = header.mtime().unwrap().to_string();
        let mut xattrs = BTreeMap::new();
        let (mut sparse_name, mut real_size) = (None, None);
        let mut name = entry.path_bytes().into_owned();
        let mut link = entry.link_name_bytes().map(|l| l.into_owned());
        for (key, value) in std::mem::take(&mut pax) {
            if key == b"mtime" {
                mtime = String::from_utf8(value).unwrap();
            } else if key == b"path" {
                name = value;
            } else if key == b"linkpath" {
                link = Some(value);
            } else if let Some(xattr) = key.strip_prefix(b"SCHILY.xattr.") {
                xattrs.insert(xattr.to_vec(), value);
            } else if key == b"GNU.sparse.name" {
                sparse_name = Some(value);
            } else if key == b"GNU.sparse.realsize" {
                real_size = Some(String::from_utf8(value).unwrap().parse::<usize>().unwrap());
            }
        }
        if let Some(real) = &sparse_name {
            name = real.clone();
        }
        let kind = match header.entry_type() {
            tar::EntryType::Directory => 'd',
            tar::EntryType::Symlink => 'l',
            tar::EntryType::Regular => '-',
            tar::EntryType::Fifo => 'p',
            tar::EntryType::Link => 'h',
            tar::EntryType::Char => 'c',
            tar::EntryType::Block => 'b',
            other => panic!("unexpected entry type {other:?} for {name:?}"),
        };
        let content = if matches!(kind, 'l' | 'h') {
            link.unwrap()
        } else {
            let mut data = Vec::new();
            entry.read_to_end(&mut data).unwrap();
            match real_size {
                Some(size) => unsparse(&data, size),
                None => data,
            }
        };
        let device = matches!(kind, 'c' | 'b').then(|| {
            (
                header.device_major().unwrap().unwrap(),
                header.device_minor().unwrap().unwrap(),
            )
        });
        let seen = Seen {
            kind,
            mode: header.mode().unwrap(),
            uid: header.uid().unwrap(),
            gid: header.gid().unwrap(),
            mtime,
            content,
            xattrs,
            device,
            sparse: sparse_name.is_some(),
        };
        assert!(out.insert(name.clone(), seen).is_none(), "{name:?} twice");
    }
    out
}

/// The records of a pax extended header: `LEN key=value\n`, LEN counting the whole.
fn pax_records(mut data: &[u8]) -> Vec<(Vec<u8>, Vec<u8>)> {
    let mut out = Vec::new();
    while !data.is_empty() {
        let space = data.iter().position(|b| *b == b' ').unwrap();
        let len: usize = std::str::from_utf8(&data[..space])
            .unwrap()
            .parse()
            .unwrap();
        let record = &data[space + 1..len];
        assert_eq!(data[len - 1], b'\n', "a pax record ends with a newline");
        let equals = record.iter().position(|b| *b == b'=').unwrap();
        out.push((
            record[..equals].to_vec(),
            record[equals + 1..record.len() - 1].to_vec(),
        ));
        data = &data[len..];
    }
    out
}

/// The bytes of a sparse member (GNU sparse 1.0: a map of decimal lines, padded to 512
/// bytes, then the data of its ranges) as the file of `size` bytes it stands for.
fn unsparse(data: &[u8], size: usize) -> Vec<u8> {
    let mut lines = data.split(|b| *b == b'\n');
    let mut number = || -> usize {
        std::str::from_utf8(lines.next().unwrap())
            .unwrap()
            .parse()
            .unwrap()
    };
    let count = number();
    let ranges: Vec<(usize, usize)> = (0..count).map(|_| (number(), number())).collect();
    let map_len: usize = 1
        + ranges
            .iter()
            .map(|(o, l)| format!("{o}\n{l}\n").len())
            .sum::<usize>()
        + count.to_string().len();
    let mut at = map_len.div_ceil(512) * 512;
    let mut out = vec![0u8; size];
    for (offset, len) in ranges {
        out[offset..offset + len].copy_from_slice(&data[at..at + len]);
        at += len;
    }
    assert_eq!(at, data.len(), "the sparse member's data is its ranges'");
    out
}

/// Compares an archive with the source tree: every source file with its attributes (a
/// directory's own root entry and lost+found aside, which mkfs makes).
fn assert_tree_equal(what: &str, tar_bytes: &[u8], want: &BTreeMap<Vec<u8>, Seen>) {
    let mut got = archive_files(tar_bytes);
    got.remove(b"./lost+found/".as_slice());
    let only = |a: &BTreeMap<Vec<u8>, Seen>, b: &BTreeMap<Vec<u8>, Seen>| {
        a.keys()
            .filter(|k| !b.contains_key(*k))
            .map(|k| String::from_utf8_lossy(k).into_owned())
            .collect::<Vec<_>>()
    };
    let (extra, missing) = (only(&got, want), only(want, &got));
    assert!(
        extra.is_empty() && missing.is_empty(),
        "{what}: extra {extra:?}, missing {missing:?}"
    );
    for (name, want) in want {
        let got = &got[name];
        if name == b"./" {
            assert_eq!(got.kind, 'd', "{what}: root");
            continue;
        }
        let shown = String::from_utf8_lossy(name);
        assert!(
            got.content == want.content,
            "{what}: {shown}: the bytes differ"
        );
        let strip = |s: &Seen| Seen {
            content: Vec::new(),
            xattrs: s.xattrs.clone(),
            mtime: s.mtime.clone(),
            ..*s
        };
        assert_eq!(strip(got), strip(want), "{what}: {shown}");
    }
}

/// A tree, an ext4 file system of it, and that file system in every container the test
/// reads it from: (description, image, imgblk's piece options).
struct Fixture {
    dir: tempfile::TempDir,
    src: PathBuf,
    images: Vec<(&'static str, PathBuf, Vec<&'static str>)>,
}

fn fixture() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src");
    make_tree(&src);
    let raw = dir.path().join("fs.raw");
    mkfs_ext4(&raw, &src, 48 * MIB, &[]);
    set_nanos(&raw);
    add_devices_and_xattrs(&raw, dir.path());
    let qcow2 = dir.path().join("fs.qcow2");
    let vmdk = dir.path().join("fs.vmdk");
    run(
        "qemu-img",
        os!["convert", "-f", "raw", "-O", "qcow2", &raw, &qcow2],
    );
    run(
        "qemu-img",
        os!["convert", "-f", "raw", "-O", "vmdk", &raw, &vmdk],
    );
    let gpt_raw = dir.path().join("gpt.raw");
    partitioned(&gpt_raw, &raw, "gpt");
    let gpt = dir.path().join("gpt.qcow2");
    run(
        "qemu-img",
        os!["convert", "-f", "raw", "-O", "qcow2", &gpt_raw, &gpt],
    );
    let mbr = dir.path().join("mbr.raw");
    partitioned(&mbr, &raw, "dos");
    let pv_raw = dir.path().join("pv.raw");
    lvm_pv(&pv_raw, &raw);
    let pv = dir.path().join("pv.qcow2");
    run(
        "qemu-img",
        os!["convert", "-f", "raw", "-O", "qcow2", &pv_raw, &pv],
    );
    let images = vec![
        ("raw", raw, vec![]),
        ("qcow2", qcow2, vec![]),
        ("vmdk", vmdk, vec![]),
        ("GPT partition in qcow2", gpt, vec!["--part", "1"]),
        ("MBR partition, --auto", mbr, vec!["--auto"]),
        ("LV in a qcow2", pv, vec!["--lv", "vg0/root"]),
    ];
    Fixture { dir, src, images }
}

/// `imgblk VERB IMAGE PIECE-OPTIONS... [PATH]` as arguments.
fn command<'a>(
    verb: &'a str,
    image: &'a Path,
    piece: &'a [&'static str],
    path: Option<&'a str>,
) -> Vec<&'a OsStr> {
    let mut args: Vec<&OsStr> = vec![verb.as_ref(), image.as_os_str()];
    args.extend(piece.iter().copied().map(OsStr::new));
    args.extend(path.map(OsStr::new));
    args
}

#[test]
fn tar_gives_back_the_source_tree_from_every_container() {
    let f = fixture();
    let want = expected_files(&f.src);
    // What the comparison rests on is there to compare.
    assert_eq!(want[b"./hard".as_slice()].kind, 'h');
    assert!(want[b"./sparse".as_slice()].sparse && want[b"./dir/ends".as_slice()].sparse);
    for (what, image, piece) in &f.images {
        let tar_bytes = imgblk_ok(&command("tar", image, piece, None));
        assert_tree_equal(what, &tar_bytes, &want);
    }
    // GNU tar unpacks it: hard links as links, sparse files with holes, xattrs (where
    // the host's file system takes user.* ones).
    let (_, raw, _) = &f.images[0];
    let whole = f.dir.path().join("whole.tar");
    imgblk_ok(os!["tar", raw, "-o", &whole]);
    let out = f.dir.path().join("unpacked");
    fs::create_dir(&out).unwrap();
    run(
        "tar",
        os![
            "--xattrs",
            "--xattrs-include=user.*",
            "--exclude=./chardev",
            "--exclude=./blockdev",
            "-xpf",
            &whole,
            "-C",
            &out
        ],
    );
    let (a, hard) = (
        fs::metadata(out.join("a.txt")).unwrap(),
        fs::metadata(out.join("hard")).unwrap(),
    );
    assert_eq!((a.ino(), a.nlink()), (hard.ino(), 2));
    for name in ["sparse", "dir/ends"] {
        let meta = fs::metadata(out.join(name)).unwrap();
        assert_eq!(
            fs::read(out.join(name)).unwrap(),
            fs::read(f.src.join(name)).unwrap()
        );
        assert!(
            meta.blocks() * 512 < meta.len() / 2,
            "{name} unpacked dense"
        );
    }
    let probe = out.join("probe");
    fs::write(&probe, b"").unwrap();
    let c_probe = std::ffi::CString::new(probe.as_os_str().as_bytes()).unwrap();
    // SAFETY: valid C strings and a buffer of the given length.
    let takes_xattrs = unsafe {
        libc::setxattr(
            c_probe.as_ptr(),
            c"user.x".as_ptr(),
            c"1".as_ptr().cast(),
            1,
            0,
        )
    } == 0;
    if takes_xattrs {
        let got = source_xattrs(&out.join("a.txt"));
        assert_eq!(got[b"user.greeting".as_slice()], b"hello there");
    }

    // -o FILE and -C PATH: just the subtree, names relative to it.
    let (_, raw, _) = &f.images[0];
    let out = f.dir.path().join("dir.tar");
    imgblk_ok(os!["tar", raw, "-C", "/dir", "-o", &out]);
    let names: Vec<String> = archive_files(&fs::read(&out).unwrap())
        .keys()
        .map(|k| String::from_utf8_lossy(k).into_owned())
        .collect();
    assert_eq!(
        names,
        [
            "./",
            "./big.bin",
            "./ends",
            "./link",
            "./longlink",
            "./sub/"
        ]
    );
    // GNU tar reads the stream too, pax records and all.
    let listing = run("tar", os!["-tvf", &out, "--numeric-owner"]);
    let listing = String::from_utf8_lossy(&listing.stdout);
    assert!(
        listing.contains(&format!("./longlink -> {}", "t".repeat(150))),
        "{listing}"
    );
}

#[test]
fn get_returns_a_files_bytes() {
    let f = fixture();
    for (what, image, piece) in &f.images {
        for file in ["dir/big.bin", "sparse", "a.txt"] {
            let inside = format!("/{file}");
            let args = command("get", image, piece, Some(&inside));
            assert!(
                imgblk_ok(&args) == fs::read(f.src.join(file)).unwrap(),
                "{what}: {file}"
            );
        }
    }
    let (_, raw, _) = &f.images[0];
    let out = f.dir.path().join("big.out");
    imgblk_ok(os!["get", raw, "/dir/big.bin", "-o", &out]);
    assert_eq!(fs::read(&out).unwrap(), pattern(300_000, 1));
    let dir = imgblk(os!["get", raw, "/dir"]);
    assert_eq!(dir.status.code(), Some(2), "a directory is bad usage");
    assert!(String::from_utf8_lossy(&dir.stderr).contains("/dir: is a directory"));
    let missing = imgblk(os!["get", raw, "/nope"]);
    assert_eq!(missing.status.code(), Some(3));
    let err = String::from_utf8_lossy(&missing.stderr);
    assert!(
        err.contains("fs.raw") && err.contains("/nope: no such file"),
        "{err}"
    );
}

#[test]
fn ls_lists_names_modes_owners_and_json() {
    let f = fixture();
    let (_, raw, _) = &f.images[0];
    let names = String::from_utf8(imgblk_ok(os!["ls", raw, "/"])).unwrap();
    let names: Vec<&str> = names.lines().collect();
    // Sorted; the hostile name escaped on one line.
    assert!(names.contains(&"bad\\x1b[2Jname\\n"), "{names:?}");
    assert!(names.windows(2).all(|w| w[0] <= w[1]), "{names:?}");
    assert!(names.contains(&"a.txt") && names.contains(&"lost+found"));

    let long = String::from_utf8(imgblk_ok(os!["ls", "-l", raw, "/dir"])).unwrap();
    let big = long.lines().find(|l| l.ends_with(" big.bin")).unwrap();
    assert!(big.starts_with("-rwsr-x--- "), "{big}");
    assert!(big.contains(" 300000 "), "{big}");
    let link = long.lines().find(|l| l.contains(" link -> ")).unwrap();
    assert!(
        link.starts_with("lrwxrwxrwx") && link.ends_with("link -> ../a.txt"),
        "{link}"
    );
    assert!(
        long.lines()
            .any(|l| l.starts_with("drwxrwxrwt") && l.ends_with(" sub")),
        "{long}"
    );

    let json: serde_json::Value =
        serde_json::from_slice(&imgblk_ok(os!["ls", "-R", "--json", raw, "/dir"])).unwrap();
    let entries = json.as_array().unwrap();
    let paths: Vec<&str> = entries
        .iter()
        .map(|e| e["path"].as_str().unwrap())
        .collect();
    assert_eq!(
        paths,
        [
            "/dir/big.bin",
            "/dir/ends",
            "/dir/link",
            "/dir/longlink",
            "/dir/sub"
        ]
    );
    let src = fs::symlink_metadata(f.src.join("dir/big.bin")).unwrap();
    let big = &entries[0];
    assert_eq!(big["name"], "big.bin");
    assert_eq!(big["kind"], "file");
    assert_eq!(big["size"], 300_000);
    assert_eq!(big["mode"], 0o4750);
    assert_eq!(big["uid"], src.uid());
    assert_eq!(big["gid"], src.gid());
    assert_eq!(big["mtime"]["secs"], src.mtime());
    let link = &entries[2];
    assert_eq!(link["kind"], "symlink");
    assert_eq!(link["target"], "../a.txt");
    assert_eq!(link["mtime"]["nanos"], 123_456_789);
    assert_eq!(entries[4]["kind"], "dir");

    // Link counts, and a device's numbers where the size goes.
    let root = String::from_utf8(imgblk_ok(os!["ls", "-l", raw, "/"])).unwrap();
    let line = |name: &str| {
        root.lines()
            .find(|l| l.ends_with(&format!(" {name}")))
            .unwrap()
            .split_whitespace()
            .collect::<Vec<_>>()
    };
    assert_eq!(line("hard")[1], "2", "{root}");
    assert_eq!(line("a.txt")[1], "2", "{root}");
    assert_eq!(line("sparse")[1], "1", "{root}");
    assert_eq!(
        line("chardev")[..6],
        ["crw--w----", "1", "0", "0", "4,", "64"],
        "{root}"
    );
}

#[test]
fn other_file_systems_and_missing_features_are_named() {
    let dir = tempfile::tempdir().unwrap();
    let xfs = dir.path().join("xfs.raw");
    File::create(&xfs).unwrap().set_len(300 * MIB).unwrap();
    run("mkfs.xfs", os!["-q", &xfs]);
    let out = imgblk(os!["ls", &xfs, "/"]);
    assert_eq!(out.status.code(), Some(3));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("holds xfs") && err.contains("imgblk mount"),
        "{err}"
    );

    let src = dir.path().join("src");
    fs::create_dir(&src).unwrap();
    fs::write(src.join("small"), b"inline").unwrap();
    let large_dir = dir.path().join("large_dir.raw");
    mkfs_ext4(&large_dir, &src, 8 * MIB, &["-O", "large_dir"]);
    let out = imgblk(os!["get", &large_dir, "/small"]);
    assert_eq!(out.status.code(), Some(3));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("large_dir.raw") && err.contains("lacks") && err.contains("imgblk mount"),
        "{err}"
    );
}

/// Whether inode `path` of ext4 image `image` keeps its bytes inline.
fn is_inline(image: &Path, path: &str) -> bool {
    let out = run("debugfs", os!["-R", format!("stat {path}"), image]);
    String::from_utf8_lossy(&out.stdout).contains("Flags: 0x10000000")
}

#[test]
fn inline_data_trees_come_back_from_tar_and_get() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src");
    make_tree(&src);
    // Past i_block's 60 bytes: the rest in the system.data attribute.
    fs::write(src.join("mid"), pattern(100, 5)).unwrap();
    set_mtime(&src.join("mid"), 1_600_000_900, 0);
    let raw = dir.path().join("inline.raw");
    mkfs_ext4(&raw, &src, 48 * MIB, &["-O", "inline_data"]);
    set_nanos(&raw);
    add_devices_and_xattrs(&raw, dir.path());
    // Small files inline: in i_block alone, and spilling into system.data.
    for path in ["/a.txt", "/mid", "/many/file-with-a-long-name-0001"] {
        assert!(is_inline(&raw, path), "{path} is not inline");
    }
    let tar_bytes = imgblk_ok(os!["tar", &raw]);
    let mut want = expected_files(&src);
    // mke2fs 1.47 -d with inline_data cuts a file that ends in a hole at its last data
    // block (debugfs shows the same size): the archive must hold what the image holds.
    let stat = run("debugfs", os!["-R", "stat /sparse", &raw]);
    let stat = String::from_utf8_lossy(&stat.stdout);
    let size: usize = stat
        .split("Size: ")
        .nth(1)
        .unwrap()
        .split_whitespace()
        .next()
        .unwrap()
        .parse()
        .unwrap();
    want.get_mut(b"./sparse".as_slice())
        .unwrap()
        .content
        .truncate(size);
    assert_tree_equal("inline_data", &tar_bytes, &want);

    // An inline directory (debugfs makes them; mke2fs -d does not). libext2fs turns one
    // into a block directory once i_block is full, so entries in system.data (which the
    // kernel writes) are not made here.
    let three = dir.path().join("three");
    fs::write(&three, b"abc").unwrap();
    let mut script = String::from("mkdir /inl\ncd /inl\nmkdir sub\nsymlink sl f0\n");
    for i in 0..2 {
        script += &format!("write {} f{i}\n", three.display());
    }
    let script_file = dir.path().join("inl.script");
    fs::write(&script_file, script).unwrap();
    run("debugfs", os!["-w", "-f", &script_file, &raw]);
    assert!(
        is_inline(&raw, "/inl"),
        "debugfs made /inl a block directory"
    );
    let names = String::from_utf8(imgblk_ok(os!["ls", &raw, "/inl"])).unwrap();
    assert_eq!(names, "f0\nf1\nsl\nsub\n");
    assert_eq!(imgblk_ok(os!["get", &raw, "/inl/f0"]), b"abc");
    assert_eq!(imgblk_ok(os!["get", &raw, "/inl/sub/../f1"]), b"abc");
    let files = archive_files(&imgblk_ok(os!["tar", &raw, "-C", "/inl"]));
    assert_eq!(files[b"./sl".as_slice()].content, b"f0");
    assert_eq!(files[b"./f1".as_slice()].content, b"abc");

    // A hostile size past what i_block and system.data hold is an error naming it.
    run("debugfs", os!["-w", "-R", "sif /a.txt size 100000", &raw]);
    let out = imgblk(os!["get", &raw, "/a.txt"]);
    assert_eq!(out.status.code(), Some(3));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("inline.raw") && err.contains("/a.txt") && err.contains("i_size larger"),
        "{err}"
    );
}

/// Offset of the primary superblock in an ext4 file system.
const SUPERBLOCK: u64 = 1024;

/// The block holding `path`'s extended attributes (`File ACL` in debugfs's `stat`).
fn xattr_block(image: &Path, path: &str) -> u64 {
    let out = run("debugfs", os!["-R", format!("stat {path}"), image]);
    let text = String::from_utf8_lossy(&out.stdout);
    let acl = text.split("File ACL: ").nth(1).unwrap();
    acl.split_whitespace().next().unwrap().parse().unwrap()
}

#[test]
fn corrupt_extended_attributes_give_errors_naming_the_image_and_field() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src");
    fs::create_dir(&src).unwrap();
    fs::write(src.join("f"), b"bytes").unwrap();
    let value = dir.path().join("value");
    fs::write(&value, pattern(700, 4)).unwrap();
    // Name, mkfs options, byte offset in the attribute block, bytes, what the error names.
    type Case = (
        &'static str,
        &'static [&'static str],
        u64,
        &'static [u8],
        &'static str,
    );
    let cases: [Case; 3] = [
        ("magic", &[], 0, &[0, 0, 0, 0], "h_magic"),
        // With metadata_csum, any change is caught by the block's checksum first.
        ("checksum", &[], 32 + 8, &[0xff; 4], "h_checksum"),
        // Without it, the value's size runs past the block.
        (
            "value size",
            &["-O", "^metadata_csum"],
            32 + 8,
            &[0xff; 4],
            "e_value_offs + e_value_size",
        ),
    ];
    for (what, options, offset, bytes, field) in cases {
        let image = dir.path().join(format!("{what}.raw"));
        mkfs_ext4(&image, &src, 8 * MIB, options);
        let request = format!("ea_set -f {} /f user.long", value.display());
        run("debugfs", os!["-w", "-R", request, &image]);
        let good = imgblk_ok(os!["tar", &image]);
        assert!(find(&good, b"SCHILY.xattr.user.long").is_some(), "{what}");
        let block = xattr_block(&image, "/f");
        let file = fs::OpenOptions::new().write(true).open(&image).unwrap();
        // 8 MiB file systems have 1 KiB blocks.
        file.write_all_at(bytes, block * 1024 + offset).unwrap();
        let out = imgblk(os!["tar", &image, "-o", dir.path().join("out.tar")]);
        assert_eq!(out.status.code(), Some(3), "{what}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains(&format!("{what}.raw"))
                && err.contains("/f")
                && err.contains("extended attributes")
                && err.contains(field),
            "{what}: {err}"
        );
        // The bytes are still there.
        assert_eq!(imgblk_ok(os!["get", &image, "/f"]), b"bytes");
    }
}

#[test]
fn corrupt_superblocks_and_directories_give_errors_naming_the_image() {
    let f = fixture();
    let (_, raw, _) = &f.images[0];
    let bytes = fs::read(raw).unwrap();
    let bad = f.dir.path().join("bad.raw");
    let cases: [(&str, u64, &[u8]); 3] = [
        // s_log_block_size far out of range.
        ("block size", SUPERBLOCK + 24, &[0xff, 0xff, 0, 0]),
        // s_inodes_per_group 0.
        ("inodes per group", SUPERBLOCK + 40, &[0, 0, 0, 0]),
        // s_magic gone.
        ("magic", SUPERBLOCK + 56, &[0, 0]),
    ];
    for (what, offset, patch) in cases {
        fs::write(&bad, &bytes).unwrap();
        File::options()
            .write(true)
            .open(&bad)
            .unwrap()
            .write_all_at(patch, offset)
            .unwrap();
        let out = imgblk(os!["ls", &bad, "/"]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(3), "{what}: {err}");
        assert!(
            err.contains("bad.raw") && !err.contains("panicked"),
            "{what}: {err}"
        );
    }

    // Every block of the root directory's htree-indexed neighbour `many` overwritten with
    // garbage: listing it fails cleanly, the rest of the file system still reads.
    let mut fs_bytes = bytes.clone();
    let marker = b"file-with-a-long-name-0000";
    let mut hits = 0;
    let mut pos = 0;
    while let Some(i) = find(&fs_bytes[pos..], marker) {
        let block = (pos + i) / 4096 * 4096;
        fs_bytes[block..block + 4096].copy_from_slice(&pattern(4096, 7));
        hits += 1;
        pos = block + 4096;
    }
    assert!(hits > 0, "the directory blocks were not found");
    fs::write(&bad, &fs_bytes).unwrap();
    let out = imgblk(os!["ls", "-R", &bad, "/many"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "{err}");
    assert!(err.contains("bad.raw") && err.contains("corrupt"), "{err}");
    let ok = imgblk_ok(os!["get", &bad, "/a.txt"]);
    assert_eq!(ok, b"hello\n");
    // A failed tar does not end its stream as if it were complete.
    let out = imgblk(os!["tar", &bad]);
    assert_eq!(out.status.code(), Some(3));
    assert!(
        !out.stdout.ends_with(&[0u8; 1024]),
        "a failed tar looks complete"
    );
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// Damages `rounds` copies of the file system in `image` (`kind`) at 8 random bytes of
/// its first `span` bytes (superblock or boot sector, group descriptors or FATs, inode
/// tables, the first directories) and reads each whole through imgblk's own entry
/// points: whatever the bytes, every call returns (an error or not), none panics out.
fn damage_and_read(image: &Path, kind: imgblk::layout::ContentKind, span: u64, rounds: u32) {
    use imgblk::files::walk::{walk, Limits};
    use imgblk::image::{open_image, OpenOptions};
    let clean = fs::read(image).unwrap();
    let bad = image.with_extension("damaged");
    fs::write(&bad, &clean).unwrap();
    let file = File::options().write(true).open(&bad).unwrap();
    let mut rng = pattern(4 * 8 * rounds as usize, 99).into_iter();
    let mut next = move || u64::from(rng.next().unwrap());
    for round in 0..rounds {
        let mut head = clean[..span as usize].to_vec();
        for _ in 0..8 {
            let at = ((next() << 16 | next() << 8 | next()) % span) as usize;
            head[at] = next() as u8;
        }
        file.write_all_at(&head, 0).unwrap();
        let opened = Arc::from(open_image(&bad, &OpenOptions::default()).unwrap());
        let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            let Ok(fs) = imgblk::files::open(opened, kind, "damaged") else {
                return;
            };
            let limits = Limits {
                max_depth: 64,
                max_entries: 100_000,
            };
            let _ = walk(&*fs, Path::new("/"), limits, &mut |path, entry| {
                let _ = fs.xattrs(path, entry);
                if entry.kind == imgblk::files::Kind::File {
                    // A damaged size may claim gigabytes: the first MiB is enough.
                    let file = fs.open_file(path)?;
                    let _ = std::io::copy(&mut file.take(MIB), &mut std::io::sink());
                    let file = fs.open_entry(path, entry)?;
                    let _ = std::io::copy(&mut file.take(MIB), &mut std::io::sink());
                    if let Ok(Some(ranges)) = fs.data_ranges(path, entry, 1024) {
                        let file = fs.open_ranges(path, entry, ranges)?;
                        let _ = std::io::copy(&mut file.take(MIB), &mut std::io::sink());
                    }
                }
                Ok(())
            });
        }));
        assert!(result.is_ok(), "{kind:?} round {round}: a panic escaped");
    }
}

#[test]
fn random_damage_to_ext4_never_panics() {
    let f = fixture();
    let (_, raw, _) = &f.images[0];
    damage_and_read(raw, imgblk::layout::ContentKind::Ext4, 2 * MIB, 200);
    // Inline data, attributes in inodes and blocks, device nodes.
    let inline = f.dir.path().join("inline.raw");
    mkfs_ext4(&inline, &f.src, 48 * MIB, &["-O", "inline_data"]);
    add_devices_and_xattrs(&inline, f.dir.path());
    damage_and_read(&inline, imgblk::layout::ContentKind::Ext4, 2 * MIB, 200);
}

#[test]
fn random_damage_to_fat_never_panics() {
    let dir = tempfile::tempdir().unwrap();
    let fat = dir.path().join("fat.raw");
    File::create(&fat).unwrap().set_len(16 * MIB).unwrap();
    run("mkfs.vfat", os![&fat]);
    // A directory of several clusters with long names, and files of several clusters.
    let many = dir.path().join("many");
    fs::create_dir(&many).unwrap();
    for i in 0..200 {
        fs::write(
            many.join(format!("a long file name {i:04}")),
            pattern(i * 300, 5),
        )
        .unwrap();
    }
    let out = Command::new("mcopy")
        .args(os!["-s", "-i", &fat, &many, "::"])
        .output()
        .expect("mcopy is required (mtools, ci/install-deps)");
    succeeded("mcopy", out);
    damage_and_read(&fat, imgblk::layout::ContentKind::Vfat, 256 << 10, 40);
}

/// The commands need neither root nor ublk: run as nobody, they read an image nobody
/// may read.
#[test]
fn runs_as_an_unprivileged_user() {
    if !nix_is_root() {
        // Already unprivileged: every other test here proves it.
        return;
    }
    let f = fixture();
    let (_, qcow2, _) = &f.images[1];
    fs::set_permissions(f.dir.path(), fs::Permissions::from_mode(0o755)).unwrap();
    fs::set_permissions(qcow2, fs::Permissions::from_mode(0o644)).unwrap();
    let out = Command::new("setpriv")
        .args([
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            IMGBLK,
            "get",
        ])
        .arg(qcow2)
        .arg("/a.txt")
        .output()
        .expect("setpriv (util-linux) is required");
    let out = succeeded("setpriv", out);
    assert_eq!(out.stdout, b"hello\n");
}

/// FAT12, FAT16 and FAT32 file systems filled by `mcopy` come back from `tar` and `get`
/// with their long names, bytes and modification times, also from a qcow2 and a GPT
/// partition; FAT's missing owners and modes read as Linux's vfat shows them.
#[test]
fn fat_trees_come_back_from_tar_and_get() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src");
    fs::create_dir_all(src.join("Sub/Deeper")).unwrap();
    fs::write(src.join("Hello.txt"), b"fat hello\n").unwrap();
    fs::write(src.join("Sub/a long file name.bin"), pattern(70_000, 3)).unwrap();
    fs::write(src.join("Sub/Deeper/x.txt"), b"deeper").unwrap();
    for file in ["Hello.txt", "Sub/a long file name.bin", "Sub/Deeper/x.txt"] {
        // FAT keeps even seconds.
        set_mtime(&src.join(file), 1_600_000_000, 0);
    }
    let want: BTreeMap<&str, Option<&str>> = [
        ("./", None),
        ("./Hello.txt", Some("Hello.txt")),
        ("./Sub/", None),
        ("./Sub/Deeper/", None),
        ("./Sub/Deeper/x.txt", Some("Sub/Deeper/x.txt")),
        (
            "./Sub/a long file name.bin",
            Some("Sub/a long file name.bin"),
        ),
    ]
    .into();
    for (bits, size) in [("12", 4 * MIB), ("16", 16 * MIB), ("32", 40 * MIB)] {
        let fat = dir.path().join(format!("fat{bits}.raw"));
        File::create(&fat).unwrap().set_len(size).unwrap();
        run("mkfs.vfat", os!["-F", bits, &fat]);
        let out = Command::new("mcopy")
            .env("TZ", "UTC")
            .args(os![
                "-s",
                "-m",
                "-i",
                &fat,
                src.join("Hello.txt"),
                src.join("Sub"),
                "::"
            ])
            .output()
            .expect("mcopy is required (mtools, ci/install-deps)");
        succeeded("mcopy", out);
        let qcow2 = dir.path().join(format!("fat{bits}.qcow2"));
        run(
            "qemu-img",
            os!["convert", "-f", "raw", "-O", "qcow2", &fat, &qcow2],
        );
        let gpt = dir.path().join(format!("gpt{bits}.raw"));
        partitioned(&gpt, &fat, "gpt");
        for (image, piece) in [
            (&fat, &[][..]),
            (&qcow2, &[][..]),
            (&gpt, &["--part", "1"][..]),
        ] {
            let what = format!("FAT{bits} {}", image.display());
            let files = archive_files(&imgblk_ok(&command("tar", image, piece, None)));
            let names: Vec<String> = files
                .keys()
                .map(|k| String::from_utf8_lossy(k).into_owned())
                .collect();
            assert_eq!(names, want.keys().copied().collect::<Vec<_>>(), "{what}");
            for (name, source) in &want {
                let got = &files[name.as_bytes()];
                assert_eq!((got.uid, got.gid), (0, 0), "{what}: {name}");
                let Some(source) = source else {
                    assert_eq!((got.kind, got.mode), ('d', 0o755), "{what}: {name}");
                    continue;
                };
                assert_eq!((got.kind, got.mode), ('-', 0o644), "{what}: {name}");
                assert_eq!(
                    got.content,
                    fs::read(src.join(source)).unwrap(),
                    "{what}: {name}"
                );
                assert_eq!(got.mtime, "1600000000", "{what}: {name}");
            }
            // Lookups ignore case, as FAT does.
            let args = command("get", image, piece, Some("/SUB/A LONG FILE NAME.BIN"));
            assert_eq!(imgblk_ok(&args), pattern(70_000, 3), "{what}");
        }
    }
}

/// Sets extended attribute `name` of `path` (through ntfs-3g: a named data stream for
/// `user.*`, the NTFS attribute flags for `system.ntfs_attrib_be`).
fn set_xattr(path: &Path, name: &str, value: &[u8]) {
    let c_path = std::ffi::CString::new(path.as_os_str().as_bytes()).unwrap();
    let c_name = std::ffi::CString::new(name).unwrap();
    // SAFETY: valid C strings and a buffer of the given length, as setxattr(2) wants.
    let rc = unsafe {
        libc::setxattr(
            c_path.as_ptr(),
            c_name.as_ptr(),
            value.as_ptr().cast(),
            value.len(),
            0,
        )
    };
    assert_eq!(rc, 0, "setxattr {name} on {}", path.display());
}

/// The reparse data of a Windows symbolic link (`tag` 0xA000000C, relative) or junction
/// (0xA0000003) to `target`, given as substitute name only.
fn windows_link(tag: u32, target: &str) -> Vec<u8> {
    let name: Vec<u8> = target.encode_utf16().flat_map(u16::to_le_bytes).collect();
    let flags: &[u8] = if tag == 0xA000_000C {
        &[1, 0, 0, 0]
    } else {
        &[]
    };
    let len = name.len() as u16;
    let fields = [0, len, len, 0].map(u16::to_le_bytes).concat();
    let body = [&fields[..], flags, &name].concat();
    let head = [
        tag.to_le_bytes(),
        [body.len() as u8, (body.len() >> 8) as u8, 0, 0],
    ]
    .concat();
    [head, body].concat()
}

/// Modification times set in the NTFS tree (NTFS counts in 100 ns).
const NTFS_TIMES: [(&str, i64, i64); 4] = [
    ("a.txt", 1_600_000_001, 123_456_700),
    ("dir/big.bin", 1_600_000_002, 0),
    ("sparse", 1_600_000_003, 0),
    ("grüße.txt", 1_600_000_004, 900_000_000),
];

/// An NTFS file system made by `mkntfs` and filled through ntfs-3g (FUSE, so as root):
/// files, a Unicode name, a symbolic link, a hard link, a sparse file, a named data
/// stream `a.txt:note` and a compressed file `comp/c.txt`.
fn ntfs_image(dir: &Path) -> PathBuf {
    let image = dir.join("ntfs.raw");
    File::create(&image).unwrap().set_len(32 * MIB).unwrap();
    run("mkntfs", os!["-F", "-Q", "-q", &image]);
    let mnt = dir.join("mnt");
    fs::create_dir(&mnt).unwrap();
    run(
        "ntfs-3g",
        os!["-o", "streams_interface=xattr,compression", &image, &mnt],
    );
    fs::create_dir_all(mnt.join("dir/sub")).unwrap();
    fs::write(mnt.join("a.txt"), b"hello\n").unwrap();
    fs::write(mnt.join("dir/big.bin"), pattern(300_000, 7)).unwrap();
    fs::write(mnt.join("grüße.txt"), b"unicode").unwrap();
    std::os::unix::fs::symlink("../a.txt", mnt.join("dir/link")).unwrap();
    fs::hard_link(mnt.join("a.txt"), mnt.join("hard")).unwrap();
    let sparse = File::create(mnt.join("sparse")).unwrap();
    sparse.set_len(8 * MIB).unwrap();
    sparse.write_all_at(b"middle", 4 * MIB).unwrap();
    drop(sparse);
    set_xattr(&mnt.join("a.txt"), "user.note", b"stream data");
    fs::create_dir(mnt.join("comp")).unwrap();
    set_xattr(
        &mnt.join("comp"),
        "system.ntfs_attrib_be",
        &[0, 0, 0x08, 0x10],
    );
    fs::write(mnt.join("comp/c.txt"), b"compressible ".repeat(10_000)).unwrap();
    // As Windows makes them: a relative symbolic link and a junction, reparse points.
    File::create(mnt.join("winlink")).unwrap();
    set_xattr(
        &mnt.join("winlink"),
        "system.ntfs_reparse_data",
        &windows_link(0xA000_000C, "..\\a.txt"),
    );
    fs::create_dir(mnt.join("junction")).unwrap();
    set_xattr(
        &mnt.join("junction"),
        "system.ntfs_reparse_data",
        &windows_link(0xA000_0003, "\\??\\C:\\Users"),
    );
    for (path, secs, nanos) in NTFS_TIMES {
        set_mtime(&mnt.join(path), secs, nanos);
    }
    run("umount", os![&mnt]);
    image
}

/// An NTFS tree comes back from `tar`, `ls` and `get` from raw, qcow2, VMDK and a GPT
/// partition: names, bytes, times, links; the named stream is listed and read by `get`
/// but left out of the archive; the compressed file is listed, and refused, never
/// handed out as its compressed bytes.
#[test]
fn ntfs_trees_come_back_from_tar_ls_and_get() {
    let dir = tempfile::tempdir().unwrap();
    let raw = ntfs_image(dir.path());
    let [qcow2, vmdk] = ["qcow2", "vmdk"].map(|format| {
        let converted = dir.path().join(format!("ntfs.{format}"));
        run(
            "qemu-img",
            os!["convert", "-f", "raw", "-O", format, &raw, &converted],
        );
        converted
    });
    let gpt = dir.path().join("gpt.raw");
    partitioned(&gpt, &raw, "gpt");
    let names = [
        "./",
        "./a.txt",
        "./comp/",
        "./dir/",
        "./dir/big.bin",
        "./dir/link",
        "./dir/sub/",
        "./grüße.txt",
        "./hard",
        "./junction",
        "./sparse",
        "./winlink",
    ];
    let mut sparse = vec![0u8; 8 * MIB as usize];
    sparse[4 * MIB as usize..][..6].copy_from_slice(b"middle");
    for (image, piece) in [
        (&raw, &[][..]),
        (&qcow2, &[][..]),
        (&vmdk, &[][..]),
        (&gpt, &["--part", "1"][..]),
    ] {
        let what = format!("NTFS {}", image.display());
        let out = imgblk(&command("tar", image, piece, None));
        let err = String::from_utf8_lossy(&out.stderr);
        // The compressed file's bytes are missing: the archive is whole, the status 1.
        assert_eq!(out.status.code(), Some(1), "{what}: {err}");
        assert!(
            err.contains("1 file(s) could not be read and are missing"),
            "{what}: {err}"
        );
        assert!(
            err.contains("/a.txt:note") && err.contains("named data stream"),
            "{err}"
        );
        assert!(
            err.contains("/comp/c.txt") && err.contains("compressed"),
            "{err}"
        );
        let files = archive_files(&out.stdout);
        let got: Vec<String> = files
            .keys()
            .map(|k| String::from_utf8_lossy(k).into_owned())
            .collect();
        assert_eq!(got, names, "{what}");
        let file = |name: &str| &files[name.as_bytes()];
        assert_eq!(file("./a.txt").content, b"hello\n", "{what}");
        assert_eq!(file("./dir/big.bin").content, pattern(300_000, 7), "{what}");
        assert_eq!(file("./grüße.txt").content, b"unicode", "{what}");
        assert_eq!(file("./sparse").content, sparse, "{what}");
        assert_eq!(
            (file("./dir/link").kind, &file("./dir/link").content[..]),
            ('l', &b"../a.txt"[..]),
            "{what}"
        );
        for (name, kind, target) in [
            ("./hard", 'h', "./a.txt"),
            ("./winlink", 'l', "../a.txt"),
            ("./junction", 'l', "C:/Users"),
        ] {
            let got = file(name);
            assert_eq!(
                (got.kind, &got.content[..]),
                (kind, target.as_bytes()),
                "{what}"
            );
        }
        for (path, secs, nanos) in NTFS_TIMES {
            let got = file(&format!("./{path}"));
            assert_eq!(got.mtime, pax_time(secs, nanos), "{what}: {path}");
            assert_eq!(
                (got.mode, got.uid, got.gid),
                (0o644, 0, 0),
                "{what}: {path}"
            );
        }
        assert_eq!((file("./dir/").kind, file("./dir/").mode), ('d', 0o755));

        let listing = imgblk_ok(&command("ls", image, piece, Some("/")));
        let listing = String::from_utf8(listing).unwrap();
        let want_ls =
            "a.txt\na.txt:note\ncomp\ndir\ngrüße.txt\nhard\nhard:note\njunction\nsparse\nwinlink\n";
        assert_eq!(listing, want_ls, "{what}");
        let mut args = command("ls", image, piece, Some("/comp"));
        args.push("--json".as_ref());
        let json = String::from_utf8(imgblk_ok(&args)).unwrap();
        assert!(
            json.contains("\"c.txt\"") && json.contains("\"size\": 130000"),
            "{json}"
        );
        let args = command("get", image, piece, Some("/A.TXT:note"));
        assert_eq!(imgblk_ok(&args), b"stream data", "{what}");
        let out = imgblk(&command("get", image, piece, Some("/comp/c.txt")));
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(3), "{what}: {err}");
        assert!(out.stdout.is_empty(), "{what}: compressed bytes handed out");
        assert!(err.contains("c.txt") && err.contains("compressed"), "{err}");
    }
}

#[test]
fn random_damage_to_ntfs_never_panics() {
    let dir = tempfile::tempdir().unwrap();
    let raw = ntfs_image(dir.path());
    // The boot sector, then the MFT (4 clusters in) with every file's record.
    damage_and_read(&raw, imgblk::layout::ContentKind::Ntfs, 256 << 10, 60);
}

/// An ext4 file system inside LUKS2 (encrypted offline by `cryptsetup reencrypt
/// --encrypt`, no dm-crypt), whole and in a GPT partition: `--luks --key-file` decrypts
/// the piece chosen, `--key-file` alone unlocks every volume so the file system inside is
/// found (and `--auto` picks it).
#[test]
fn luks_volumes_are_read_with_luks_or_key_file() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src");
    fs::create_dir(&src).unwrap();
    fs::write(src.join("a.txt"), b"secret\n").unwrap();
    let plain = dir.path().join("fs.raw");
    mkfs_ext4(&plain, &src, 12 * MIB, &[]);
    // reencrypt takes its header's room (8 MiB) off the end of the file.
    let luks = dir.path().join("luks.raw");
    let mut bytes = fs::read(&plain).unwrap();
    bytes.resize(20 * MIB as usize, 0);
    fs::write(&luks, bytes).unwrap();
    let key = dir.path().join("key");
    fs::write(&key, b"correct horse").unwrap();
    let out = Command::new("cryptsetup")
        .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
        .args(["reencrypt", "--encrypt", "--reduce-device-size", "8M"])
        .args("--type luks2 --pbkdf pbkdf2 --pbkdf-force-iterations 1000".split(' '))
        .args(["--batch-mode", "--key-file"])
        .args(os![&key, &luks])
        .output()
        .expect("cryptsetup is required (cryptsetup-bin, ci/install-deps)");
    succeeded("cryptsetup reencrypt", out);
    let gpt = dir.path().join("gpt.raw");
    partitioned(&gpt, &luks, "gpt");

    let get = imgblk_ok(os!["get", "--luks", "--key-file", &key, &luks, "/a.txt"]);
    assert_eq!(get, b"secret\n");
    let ls = imgblk_ok(os!["ls", "--key-file", &key, "--auto", &luks, "/"]);
    assert_eq!(ls, b"a.txt\nlost+found\n");
    let part = imgblk_ok(os![
        "get",
        "--part",
        "1",
        "--luks",
        "--key-file",
        key,
        gpt,
        "/a.txt"
    ]);
    assert_eq!(part, b"secret\n");
    let files = archive_files(&imgblk_ok(os!["tar", "--key-file", &key, &gpt]));
    assert_eq!(files[b"./a.txt".as_slice()].content, b"secret\n");

    // Without the key there is no file system to read; with a wrong one, no key slot.
    let out = imgblk(os!["ls", &luks, "/"]);
    assert!(!out.status.success() && out.stdout.is_empty());
    fs::write(&key, b"wrong").unwrap();
    let out = imgblk(os!["get", "--luks", "--key-file", &key, &luks, "/a.txt"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && out.stdout.is_empty(), "{err}");
    assert!(err.contains("no key slot matches"), "{err}");
}

/// Undoes (`true`) or redoes (`false`) the update-sequence fixups of an NTFS record: the
/// last two bytes of each 512-byte sector are kept in the record's update sequence array.
fn ntfs_fixups(record: &mut [u8], undo: bool) {
    let usa = usize::from(u16::from_le_bytes([record[4], record[5]]));
    let count = usize::from(u16::from_le_bytes([record[6], record[7]]));
    for i in 1..count {
        let end = i * 512 - 2;
        let saved = usa + 2 * i;
        if undo {
            record.copy_within(saved..saved + 2, end);
        } else {
            record.copy_within(end..end + 2, saved);
            record.copy_within(usa..usa + 2, end);
        }
    }
}

fn u16_at(r: &[u8], i: usize) -> usize {
    usize::from(u16::from_le_bytes([r[i], r[i + 1]]))
}

fn u32_at(r: &[u8], i: usize) -> usize {
    u32::from_le_bytes(r[i..i + 4].try_into().unwrap()) as usize
}

/// Where the subnode pointers (VCNs) of the entries of the index node whose header is at
/// `node` in `buf` lie.
fn subnode_pointers(buf: &[u8], node: usize) -> Vec<usize> {
    let mut entry = node + u32_at(buf, node);
    let mut pointers = Vec::new();
    loop {
        let (len, flags) = (u16_at(buf, entry + 8), u16_at(buf, entry + 12));
        if flags & 1 != 0 {
            pointers.push(entry + len - 8);
        }
        if flags & 2 != 0 || len == 0 {
            return pointers;
        }
        entry += len;
    }
}

/// A directory whose index B-tree node points back at itself (the crate would walk it
/// forever, growing) is reported as corrupt, naming the image and the directory.
#[test]
fn an_ntfs_directory_index_that_loops_is_corrupt() {
    let dir = tempfile::tempdir().unwrap();
    let image = dir.path().join("ntfs.raw");
    File::create(&image).unwrap().set_len(16 * MIB).unwrap();
    run("mkntfs", os!["-F", "-Q", "-q", &image]);
    let mnt = dir.path().join("mnt");
    fs::create_dir(&mnt).unwrap();
    run("ntfs-3g", os![&image, &mnt]);
    fs::create_dir(mnt.join("big")).unwrap();
    for i in 0..300 {
        File::create(mnt.join(format!("big/a file with a rather long name {i:04}"))).unwrap();
    }
    run("umount", os![&mnt]);
    let info = String::from_utf8(run("ntfsinfo", os!["-F", "/big", &image]).stdout).unwrap();
    let record_number: u64 = info
        .split("Dumping Inode ")
        .nth(1)
        .and_then(|s| s.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .expect("ntfsinfo names the inode");
    // The directory's MFT record: the MFT starts at the cluster the boot sector names.
    let mut disk = fs::read(&image).unwrap();
    let cluster = u64::from(u16::from_le_bytes([disk[11], disk[12]])) * u64::from(disk[13]);
    let mft = u64::from_le_bytes(disk[0x30..0x38].try_into().unwrap()) * cluster;
    let at = (mft + record_number * 1024) as usize;
    let mut record = disk[at..at + 1024].to_vec();
    ntfs_fixups(&mut record, true);
    let record = &record[..];
    // $INDEX_ROOT (0x90) points at the top node of the B-tree; one of that node's
    // subnode pointers is made to point back at the node itself.
    let mut attr = u16_at(record, 0x14);
    while u32_at(record, attr) != 0x90 {
        attr += u32_at(record, attr + 4);
    }
    let root = subnode_pointers(record, attr + u16_at(record, attr + 0x14) + 0x10);
    let top = record[root[0]..root[0] + 8].to_vec();
    let found = disk.chunks_exact_mut(4096).any(|node| {
        if &node[..4] != b"INDX" || node[0x10..0x18] != top[..] {
            return false;
        }
        ntfs_fixups(node, true);
        let first = subnode_pointers(node, 0x18).first().copied();
        if let Some(first) = first {
            node[first..first + 8].copy_from_slice(&top);
        }
        ntfs_fixups(node, false);
        first.is_some()
    });
    assert!(found, "no index node with subnodes at VCN {top:?}");
    fs::write(&image, &disk).unwrap();

    for verb in ["ls", "get"] {
        let out = imgblk(os![
            verb,
            &image,
            "/big/a file with a rather long name 0299"
        ]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(3), "{verb}: {err}");
        assert!(
            err.contains("ntfs.raw") && err.contains("/big") && err.contains("loops"),
            "{err}"
        );
    }
    let out = imgblk(os!["tar", &image]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("loops"));
}

/// A VG spanning two images (a guest with two disks): `--auto` finds the LV called root
/// across both, `--lv` names it, and the tree comes back whole; without the second image
/// the LV is refused, naming what is missing.
#[test]
fn ls_and_get_read_an_lv_spanning_two_images() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src");
    fs::create_dir(&src).unwrap();
    fs::write(src.join("first.txt"), b"on the first disk, or the second\n").unwrap();
    fs::write(src.join("big.bin"), pattern(6 * MIB as usize, 7)).unwrap();
    let raw = dir.path().join("fs.raw");
    mkfs_ext4(&raw, &src, 16 * MIB, &[]);
    let (a, b) = (dir.path().join("a.raw"), dir.path().join("b.raw"));
    lvm_pvs(&[&a, &b], &raw);
    let want = imgblk_ok(os!["ls", &raw, "/"]);
    assert_eq!(want, b"big.bin\nfirst.txt\nlost+found\n");
    assert_eq!(imgblk_ok(os!["ls", "--auto", &a, &b, "/"]), want, "--auto");
    assert_eq!(
        imgblk_ok(os!["ls", "--lv", "vg0/root", &a, &b, "/"]),
        want,
        "--lv"
    );
    let big = imgblk_ok(os!["get", "--lv", "vg0/root", &a, &b, "/big.bin"]);
    assert!(big == pattern(6 * MIB as usize, 7), "big.bin");
    // the LV is the file system, its first two extents from a.raw, the last two from b
    let lv = imgblk_ok(os!["cat", "--lv", "vg0/root", &a, &b]);
    assert!(
        lv == fs::read(&raw).unwrap(),
        "the LV's bytes across both images"
    );
    let alone = imgblk(os!["ls", "--lv", "vg0/root", &a, "/"]);
    assert!(!alone.status.success(), "one disk of two");
    let err = String::from_utf8_lossy(&alone.stderr);
    assert!(err.contains("vg0"), "{err}");
}
