//! VirtualBox snapshot chains: differencing VDIs over a base made by qemu-img/qemu-io.
//!
//! VBoxManage is not available here and qemu-img cannot make a differencing VDI, so the
//! children are built to VirtualBox's layout (VDICore.h, header 1.1 "plus"): type 4
//! (diff), `uuidLinkage` = the parent's `uuidCreate`, `uuidParentModify` = the parent's
//! `uuidModify`, block map and data at 1 MiB boundaries, whole 1 MiB blocks as VirtualBox
//! writes them. The snapshots live in a `Snapshots/` folder below the base, named by
//! their UUIDs, as VirtualBox lays out a VM folder.

mod common;

use common::{imgblk, map_runs, open_err, qemu_img, qemu_io};
use imgblk::image::{open_image, OpenOptions};
use imgblk::ErrorKind;
use std::fs;
use std::path::Path;
use std::process::Command;

const MIB: usize = 1 << 20;
const DISK: usize = 4 * MIB;

/// What a child block holds.
#[derive(Clone, Copy)]
enum Block {
    /// Filled with this byte.
    Fill(u8),
    /// Discarded (`VDI_IMAGE_BLOCK_ZERO`): reads as zero, whatever the parent holds.
    Zero,
}

/// The (uuidCreate, uuidModify) of the VDI at `path`.
fn uuids(path: &Path) -> ([u8; 16], [u8; 16]) {
    let head = fs::read(path).unwrap();
    (
        head[0x188..0x198].try_into().unwrap(),
        head[0x198..0x1a8].try_into().unwrap(),
    )
}

/// A differencing VDI at `path` over `parent`, holding `blocks` (index, content) of
/// 1 MiB; `create` is its own uuidCreate (its uuidModify is `create` with the last byte
/// flipped).
fn make_diff(path: &Path, parent: &Path, create: u8, blocks: &[(u32, Block)]) {
    let (parent_create, parent_modify) = uuids(parent);
    let mut f = vec![0u8; 2 * MIB];
    let text = b"<<< Oracle VM VirtualBox Disk Image >>>\n";
    f[..text.len()].copy_from_slice(text);
    let mut put32 = |at: usize, v: u32| f[at..at + 4].copy_from_slice(&v.to_le_bytes());
    put32(0x40, 0xbeda_107f); // signature
    put32(0x44, 0x0001_0001); // version 1.1
    put32(0x48, 0x190); // sizeof(VDIHEADER1PLUS)
    put32(0x4c, 4); // VDI_IMAGE_TYPE_DIFF
    put32(0x154, MIB as u32); // offBlocks
    put32(0x158, 2 * MIB as u32); // offData
    put32(0x168, 512); // legacy geometry: cbSector
    put32(0x178, MIB as u32); // cbBlock
    put32(0x180, (DISK / MIB) as u32); // cBlocks
    put32(0x184, blocks.len() as u32); // cBlocksAllocated
    f[0x170..0x178].copy_from_slice(&(DISK as u64).to_le_bytes());
    let mut id = [create; 16];
    f[0x188..0x198].copy_from_slice(&id);
    id[15] ^= 0xff;
    f[0x198..0x1a8].copy_from_slice(&id);
    f[0x1a8..0x1b8].copy_from_slice(&parent_create);
    f[0x1b8..0x1c8].copy_from_slice(&parent_modify);
    let mut map = [u32::MAX; DISK / MIB];
    let mut stored = 0u32;
    for &(index, block) in blocks {
        map[index as usize] = match block {
            Block::Fill(byte) => {
                f.extend(std::iter::repeat_n(byte, MIB));
                stored += 1;
                stored - 1
            }
            Block::Zero => u32::MAX - 1,
        };
    }
    for (i, entry) in map.iter().enumerate() {
        f[MIB + 4 * i..MIB + 4 * i + 4].copy_from_slice(&entry.to_le_bytes());
    }
    fs::create_dir_all(path.parent().unwrap()).unwrap();
    fs::write(path, f).unwrap();
}

/// `want` with `blocks` applied.
fn apply(want: &mut [u8], blocks: &[(u32, Block)]) {
    for &(index, block) in blocks {
        let range = index as usize * MIB..(index as usize + 1) * MIB;
        want[range].fill(match block {
            Block::Fill(byte) => byte,
            Block::Zero => 0,
        });
    }
}

/// A VM folder `vm/`: `vm/base.vdi` (qemu-img, dynamic, data written by qemu-io in
/// blocks 0, 1 and 3), `vm/Snapshots/{1...}.vdi` over it and `vm/Snapshots/{2...}.vdi`
/// over that. Returns the three paths and the top's expected bytes.
fn make_vm(root: &Path) -> ([std::path::PathBuf; 3], Vec<u8>) {
    let vm = root.join("vm");
    fs::create_dir(&vm).unwrap();
    qemu_img(&vm, &["create", "-q", "-f", "vdi", "base.vdi", "4M"]);
    qemu_io(
        &vm,
        "base.vdi",
        "vdi",
        &[(0x41, 0, 1536 << 10), (0x42, 3 << 20, 65536)],
    );
    qemu_img(&vm, &["convert", "-O", "raw", "base.vdi", "base.raw"]);
    let mut want = fs::read(vm.join("base.raw")).unwrap();
    fs::remove_file(vm.join("base.raw")).unwrap();
    let snap1 = vm.join("Snapshots/{11111111-1111-1111-1111-111111111111}.vdi");
    let snap2 = vm.join("Snapshots/{22222222-2222-2222-2222-222222222222}.vdi");
    let first = [(1, Block::Fill(0x51)), (3, Block::Zero)];
    make_diff(&snap1, &vm.join("base.vdi"), 0x11, &first);
    apply(&mut want, &first);
    let second = [(0, Block::Fill(0x61))];
    make_diff(&snap2, &snap1, 0x22, &second);
    apply(&mut want, &second);
    ([vm.join("base.vdi"), snap1, snap2], want)
}

#[test]
fn three_deep_snapshot_chain_reads_merged_blocks_at_their_depths() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let ([base, snap1, snap2], want) = make_vm(d);
    imgblk(d, &["cat", "-o", "top.raw", snap2.to_str().unwrap()]);
    assert!(fs::read(d.join("top.raw")).unwrap() == want, "cat differs");
    const M: u64 = MIB as u64;
    // Block 0 from the top, block 1 from the first snapshot (over the base's data), block
    // 2 allocated nowhere, block 3 discarded in the first snapshot (over the base's data).
    assert_eq!(
        map_runs(&imgblk(d, &["map", "--json", snap2.to_str().unwrap()])),
        vec![
            (0, M, 0, true, false),
            (M, M, 1, true, false),
            (2 * M, M, 2, false, true),
            (3 * M, M, 1, false, true),
        ]
    );
    let info: serde_json::Value =
        serde_json::from_slice(&imgblk(d, &["info", "--json", snap2.to_str().unwrap()])).unwrap();
    let chain: Vec<&str> = info["chain"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["path"].as_str().unwrap())
        .collect();
    assert_eq!(chain.len(), 3, "{info}");
    assert_eq!(chain[0], snap2.to_str().unwrap());
    assert_eq!(
        fs::canonicalize(chain[1]).unwrap(),
        fs::canonicalize(&snap1).unwrap()
    );
    assert_eq!(
        fs::canonicalize(chain[2]).unwrap(),
        fs::canonicalize(&base).unwrap()
    );
    // The first snapshot alone: its parent is found in the VM folder above Snapshots/.
    imgblk(d, &["cat", "-o", "first.raw", snap1.to_str().unwrap()]);
    let first = fs::read(d.join("first.raw")).unwrap();
    assert!(first[..MIB].iter().all(|&b| b == 0x41), "base block 0");
    assert!(
        first[MIB..2 * MIB].iter().all(|&b| b == 0x51),
        "own block 1"
    );
    assert!(
        first[3 * MIB..].iter().all(|&b| b == 0),
        "discarded block 3"
    );
}

/// A qcow2 overlay over a VirtualBox snapshot chain: four layers, two formats; the VDI
/// layers' depths shift by one under it.
#[test]
fn qcow2_over_a_snapshot_chain_counts_depth_through_it() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let ([_, _, snap2], want) = make_vm(d);
    // -u: QEMU cannot open a differencing VDI to check it.
    let backing = snap2.to_str().unwrap();
    qemu_img(
        d,
        &[
            "create",
            "-q",
            "-u",
            "-f",
            "qcow2",
            "-b",
            backing,
            "-F",
            "vdi",
            "top.qcow2",
            "4M",
        ],
    );
    imgblk(d, &["cat", "-o", "top.raw", "top.qcow2"]);
    assert!(fs::read(d.join("top.raw")).unwrap() == want, "cat differs");
    let depths: Vec<u64> = map_runs(&imgblk(d, &["map", "--json", "top.qcow2"]))
        .iter()
        .map(|run| run.2)
        .collect();
    assert_eq!(depths, [1, 2, 3, 2]);
}

#[test]
fn a_snapshot_beside_its_parent_is_found_by_uuid_whatever_the_names() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    qemu_img(d, &["create", "-q", "-f", "vdi", "a-base.vdi", "4M"]);
    qemu_io(d, "a-base.vdi", "vdi", &[(0x33, 2 << 20, 4096)]);
    // Another VDI in the directory, whose UUID is not the parent's.
    qemu_img(d, &["create", "-q", "-f", "vdi", "b-other.vdi", "4M"]);
    make_diff(&d.join("c-child.vdi"), &d.join("a-base.vdi"), 0x77, &[]);
    let image = open_image(&d.join("c-child.vdi"), &OpenOptions::default()).unwrap();
    let chain = image.chain();
    assert_eq!(chain.len(), 2);
    assert_eq!(chain[1].path.file_name().unwrap(), "a-base.vdi");
    let mut buf = vec![0u8; 4096];
    imgblk::image::io::read_at(image.as_ref(), &mut buf, 2 << 20).unwrap();
    assert!(buf.iter().all(|&b| b == 0x33));
    drop(image);
    // Read-only: a differencing VDI is not opened for writing.
    let writable = OpenOptions {
        writable: true,
        ..OpenOptions::default()
    };
    let Err(err) = open_image(&d.join("c-child.vdi"), &writable) else {
        panic!("a differencing VDI opened for writing");
    };
    assert_eq!(err.kind(), ErrorKind::ReadOnly, "{err}");
    assert!(err.to_string().contains("c-child.vdi"), "{err}");
}

#[test]
fn a_parent_written_after_the_snapshot_or_missing_is_refused_naming_the_field() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let ([base, snap1, snap2], _) = make_vm(d);
    // VirtualBox gives the parent a new uuidModify when it writes to it.
    let mut head = fs::read(&snap1).unwrap();
    head[0x198] ^= 1;
    fs::write(&snap1, head).unwrap();
    let err = open_err(&snap2);
    let msg = err.to_string();
    assert_eq!(err.kind(), ErrorKind::Corrupt, "{msg}");
    assert!(
        msg.contains("uuidParentModify")
            && msg.contains("22222222-2222")
            && msg.contains("{11111111-1111-1111-1111-111111111111}.vdi"),
        "{msg}"
    );
    // No VDI with the parent's uuidCreate: the field and the folders searched are named,
    // and the command exits as for a missing file.
    fs::remove_file(&base).unwrap();
    let err = open_err(&snap1);
    let msg = err.to_string();
    assert_eq!(err.kind(), ErrorKind::NotFound, "{msg}");
    assert!(
        msg.contains("uuidLinkage") && msg.contains("Snapshots/..") && msg.contains("11111111"),
        "{msg}"
    );
    let out = Command::new(env!("CARGO_BIN_EXE_imgblk"))
        .args(["cat", "-o", "x.raw", snap1.to_str().unwrap()])
        .current_dir(d)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("uuidLinkage"));
}
