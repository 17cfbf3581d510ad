//! Hand-built VHDX files: dynamic and differencing disks, and the hostile cases (bad
//! CRCs, a dirty log, unknown required regions and items, absurd sizes, BAT past the end).

use super::header::{BAT_REGION, METADATA_REGION};
use super::metadata::{guid, VHDX_PARENT_LOCATOR_TYPE};
use super::*;
use crate::error::ErrorKind;
use crate::image::common::bytes::guid_string;
use crate::image::common::testutil::{open_with, put, read_all, write};
use crate::image::Source;
use std::path::Path;

const MIB: usize = 1 << 20;
const SIZE: usize = 4 * MIB;

fn crc(buf: &mut [u8]) {
    buf[4..8].fill(0);
    let sum = crc32c::crc32c(buf);
    put(buf, 4, &sum.to_le_bytes());
}

fn state(state: u64, offset_mib: u64) -> u64 {
    state | offset_mib << 20
}

/// A VHDX of [`SIZE`] bytes in 1 MiB blocks, 512-byte sectors.
struct Builder {
    data_guid: [u8; 16],
    log_guid: [u8; 16],
    block_size: u32,
    virtual_size: u64,
    locator: Vec<(&'static str, String)>,
    bat: Vec<u64>,
    /// (file offset, bytes) written after the metadata.
    payload: Vec<(usize, Vec<u8>)>,
    extra_region: Option<[u8; 16]>,
    extra_item: Option<[u8; 16]>,
}

impl Builder {
    fn new(data_guid: u8) -> Self {
        Builder {
            data_guid: [data_guid; 16],
            log_guid: [0; 16],
            block_size: MIB as u32,
            virtual_size: SIZE as u64,
            locator: Vec::new(),
            bat: vec![0; 4],
            payload: Vec::new(),
            extra_region: None,
            extra_item: None,
        }
    }

    fn header(&self, seq: u64) -> Vec<u8> {
        let mut h = vec![0u8; 4096];
        put(&mut h, 0, b"head");
        put(&mut h, 8, &seq.to_le_bytes());
        put(&mut h, 32, &self.data_guid);
        put(&mut h, 48, &self.log_guid);
        put(&mut h, 66, &1u16.to_le_bytes());
        put(&mut h, 68, &(MIB as u32).to_le_bytes());
        put(&mut h, 72, &(MIB as u64 * 7).to_le_bytes());
        crc(&mut h);
        h
    }

    fn build(&self) -> Vec<u8> {
        let mut f = vec![0u8; 3 * MIB];
        put(&mut f, 0, b"vhdxfile");
        put(&mut f, 64 << 10, &self.header(1));
        put(&mut f, 128 << 10, &self.header(2));
        let mut regions = vec![
            (BAT_REGION, 2 * MIB as u64, MIB as u32),
            (METADATA_REGION, MIB as u64, MIB as u32),
        ];
        if let Some(g) = self.extra_region {
            regions.push((g, 2 * MIB as u64, 4096));
        }
        let mut rt = vec![0u8; 64 << 10];
        put(&mut rt, 0, b"regi");
        put(&mut rt, 8, &(regions.len() as u32).to_le_bytes());
        for (i, (g, off, len)) in regions.iter().enumerate() {
            put(&mut rt, 16 + i * 32, g);
            put(&mut rt, 16 + i * 32 + 16, &off.to_le_bytes());
            put(&mut rt, 16 + i * 32 + 24, &len.to_le_bytes());
            put(&mut rt, 16 + i * 32 + 28, &1u32.to_le_bytes());
        }
        crc(&mut rt);
        put(&mut f, 192 << 10, &rt);
        put(&mut f, 256 << 10, &rt);

        let has_parent = !self.locator.is_empty();
        let mut items: Vec<([u8; 16], Vec<u8>)> = vec![
            (
                guid(
                    0xCAA16737,
                    0xFA36,
                    0x4D43,
                    [0xB3, 0xB6, 0x33, 0xF0, 0xAA, 0x44, 0xE7, 0x6B],
                ),
                [
                    self.block_size.to_le_bytes(),
                    (u32::from(has_parent) << 1).to_le_bytes(),
                ]
                .concat(),
            ),
            (
                guid(
                    0x2FA54224,
                    0xCD1B,
                    0x4876,
                    [0xB2, 0x11, 0x5D, 0xBE, 0xD8, 0x3B, 0xF4, 0xB8],
                ),
                self.virtual_size.to_le_bytes().to_vec(),
            ),
            (
                guid(
                    0x8141BF1D,
                    0xA96F,
                    0x4709,
                    [0xBA, 0x47, 0xF2, 0x33, 0xA8, 0xFA, 0xAB, 0x5F],
                ),
                512u32.to_le_bytes().to_vec(),
            ),
        ];
        if has_parent {
            items.push((
                guid(
                    0xA8D35F2D,
                    0xB30B,
                    0x454D,
                    [0xAB, 0xF7, 0xD3, 0xD8, 0x48, 0x34, 0xAB, 0x0C],
                ),
                self.locator_item(),
            ));
        }
        if let Some(g) = self.extra_item {
            items.push((g, vec![1, 2, 3, 4]));
        }
        let meta = MIB;
        put(&mut f, meta, b"metadata");
        put(&mut f, meta + 10, &(items.len() as u16).to_le_bytes());
        let mut item_at = 64 << 10;
        for (i, (id, data)) in items.iter().enumerate() {
            let e = meta + 32 + i * 32;
            put(&mut f, e, id);
            put(&mut f, e + 16, &(item_at as u32).to_le_bytes());
            put(&mut f, e + 20, &(data.len() as u32).to_le_bytes());
            put(&mut f, e + 24, &4u32.to_le_bytes());
            put(&mut f, meta + item_at, data);
            item_at += data.len().next_multiple_of(8);
        }
        for (i, e) in self.bat.iter().enumerate() {
            put(&mut f, 2 * MIB + i * 8, &e.to_le_bytes());
        }
        for (at, bytes) in &self.payload {
            if f.len() < at + bytes.len() {
                f.resize(at + bytes.len(), 0);
            }
            put(&mut f, *at, bytes);
        }
        f
    }

    fn locator_item(&self) -> Vec<u8> {
        let mut item = vec![0u8; 20 + self.locator.len() * 12];
        put(&mut item, 0, &VHDX_PARENT_LOCATOR_TYPE);
        put(&mut item, 18, &(self.locator.len() as u16).to_le_bytes());
        for (i, (k, v)) in self.locator.iter().enumerate() {
            let enc = |s: &str| {
                s.encode_utf16()
                    .flat_map(u16::to_le_bytes)
                    .collect::<Vec<u8>>()
            };
            let (k, v) = (enc(k), enc(v));
            let e = 20 + i * 12;
            let ko = item.len();
            item.extend(&k);
            let vo = item.len();
            item.extend(&v);
            put(&mut item, e, &(ko as u32).to_le_bytes());
            put(&mut item, e + 4, &(vo as u32).to_le_bytes());
            put(&mut item, e + 8, &(k.len() as u16).to_le_bytes());
            put(&mut item, e + 10, &(v.len() as u16).to_le_bytes());
        }
        item
    }
}

fn pattern(seed: u8, len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| ((i / 512) as u8).wrapping_mul(7).wrapping_add(seed) | 1)
        .collect()
}

/// Blocks: 0 data, 1 zero, 2 not present, 3 data.
fn dynamic(data_guid: u8) -> (Builder, Vec<u8>) {
    let mut b = Builder::new(data_guid);
    b.bat = vec![state(6, 3), state(2, 0), state(0, 0), state(6, 4)];
    b.payload = vec![(3 * MIB, pattern(1, MIB)), (4 * MIB, pattern(2, MIB))];
    let mut want = vec![0u8; SIZE];
    want[..MIB].copy_from_slice(&pattern(1, MIB));
    want[3 * MIB..].copy_from_slice(&pattern(2, MIB));
    (b, want)
}

#[test]
fn dynamic_blocks_read_by_state() {
    let dir = tempfile::tempdir().unwrap();
    let (b, want) = dynamic(1);
    let image = open(&write(dir.path(), "d.vhdx", &b.build())).unwrap();
    assert_eq!(read_all(&image).unwrap(), want);
    let mut extents = Vec::new();
    image.map(MIB as u64, 2 * MIB as u64, &mut extents).unwrap();
    assert_eq!(extents[0].source, Source::Zero);
    assert_eq!(extents[1].source, Source::Unallocated);
}

#[test]
fn headers_pick_the_valid_newest_and_refuse_a_dirty_log() {
    let dir = tempfile::tempdir().unwrap();
    let (mut b, want) = dynamic(1);
    let mut bytes = b.build();
    bytes[(128 << 10) + 100] ^= 1; // header 2 (the newer) is damaged: header 1 is used
    assert_eq!(
        read_all(&open(&write(dir.path(), "h.vhdx", &bytes)).unwrap()).unwrap(),
        want
    );
    bytes[(64 << 10) + 100] ^= 1;
    let msg = open(&write(dir.path(), "h.vhdx", &bytes))
        .unwrap_err()
        .to_string();
    assert!(
        msg.contains("no valid VHDX header") && msg.contains("checksum mismatch"),
        "{msg}"
    );

    b.log_guid = [9; 16];
    let err = open(&write(dir.path(), "log.vhdx", &b.build())).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Unsupported);
    assert!(err.to_string().contains("VHDX log needs replay"), "{err}");

    let mut bytes = dynamic(1).0.build();
    bytes[(192 << 10) + 40] ^= 1; // region table 1 damaged: copy 2 is used
    assert!(open(&write(dir.path(), "r.vhdx", &bytes)).is_ok());
    bytes[(256 << 10) + 40] ^= 1;
    let msg = open(&write(dir.path(), "r.vhdx", &bytes))
        .unwrap_err()
        .to_string();
    assert!(msg.contains("region table checksum"), "{msg}");
}

#[test]
fn hostile_metadata_and_bat() {
    let dir = tempfile::tempdir().unwrap();
    let check = |b: &Builder, want: &str| {
        let path = write(dir.path(), "x.vhdx", &b.build());
        let msg = match open(&path) {
            Err(e) => e.to_string(),
            Ok(image) => read_all(&image).unwrap_err().to_string(),
        };
        assert!(
            msg.contains(want) && msg.contains("x.vhdx"),
            "{want}: {msg}"
        );
    };
    let (mut b, _) = dynamic(1);
    b.extra_region = Some([7; 16]);
    check(&b, "marked required but unknown");
    let (mut b, _) = dynamic(1);
    b.extra_item = Some([8; 16]);
    check(&b, "marked required but unknown");
    let (mut b, _) = dynamic(1);
    b.virtual_size = 1 << 50;
    check(&b, "up to 64 TiB");
    let (mut b, _) = dynamic(1);
    b.block_size = 3 * MIB as u32;
    check(&b, "block size");
    let (mut b, _) = dynamic(1);
    b.virtual_size = (MIB as u64) << 25; // 32 Ti blocks... of 1 MiB: BAT larger than its region
    check(&b, "too small");
    let (mut b, _) = dynamic(1);
    b.bat[0] = state(6, 100);
    check(&b, "past the end");
    let (mut b, _) = dynamic(1);
    b.bat[0] = state(7, 3);
    check(&b, "partially present in a disk without a parent");
    let (mut b, _) = dynamic(1);
    b.bat[0] = state(4, 3);
    check(&b, "invalid payload block state");
}

#[test]
fn differencing_disk_reads_parent_through_bitmap() {
    let dir = tempfile::tempdir().unwrap();
    let (parent, parent_data) = dynamic(0x5a);
    write(dir.path(), "parent.vhdx", &parent.build());
    let linkage = format!("{{{}}}", guid_string(&[0x5a; 16]).to_uppercase());

    let mut child = Builder::new(2);
    child.locator = vec![
        ("parent_linkage", linkage.clone()),
        ("relative_path", ".\\parent.vhdx".into()),
    ];
    // One chunk: 4096 payload entries, then the sector bitmap entry.
    child.bat = vec![0; 4097];
    child.bat[0] = state(7, 3); // partially present
    child.bat[1] = state(0, 0); // from the parent
    child.bat[2] = state(6, 4); // all here
    child.bat[3] = state(2, 0); // zero, whatever the parent says
    child.bat[4096] = state(6, 5);
    let mut bitmap = vec![0u8; MIB];
    bitmap[0] = 0xff; // sectors 0..8
    bitmap[1] = 0x02; // sector 9
    child.payload = vec![
        (3 * MIB, pattern(9, MIB)),
        (4 * MIB, pattern(8, MIB)),
        (5 * MIB, bitmap),
    ];
    let path = write(dir.path(), "child.vhdx", &child.build());
    let image = open(&path).unwrap();
    assert_eq!(image.chain().len(), 2);

    let mut want = parent_data.clone();
    let own = pattern(9, MIB);
    want[..4096].copy_from_slice(&own[..4096]);
    want[9 * 512..10 * 512].copy_from_slice(&own[9 * 512..10 * 512]);
    want[2 * MIB..3 * MIB].copy_from_slice(&pattern(8, MIB));
    want[3 * MIB..].fill(0);
    assert_eq!(read_all(&image).unwrap(), want);
    let mut extents = Vec::new();
    image.map(0, 8192, &mut extents).unwrap();
    let depths: Vec<u32> = extents.iter().map(|e| e.depth).collect();
    assert_eq!(depths, [0, 1, 0, 1]);

    child.locator[0].1 = "{00000000-0000-0000-0000-000000000001}".into();
    let msg = open(&write(dir.path(), "child.vhdx", &child.build()))
        .unwrap_err()
        .to_string();
    assert!(
        msg.contains("child.vhdx") && msg.contains("parent.vhdx") && msg.contains("parent_linkage"),
        "{msg}"
    );

    // A Hyper-V checkpoint (AVHDX) moved from its host: the relative path leads nowhere
    // here, the absolute Windows path's file name next to the child finds the parent.
    child.locator = vec![
        ("parent_linkage", linkage),
        ("relative_path", ".\\Old Disks\\parent.vhdx".into()),
        (
            "absolute_win32_path",
            "C:\\ProgramData\\Hyper-V\\Disks\\parent.vhdx".into(),
        ),
    ];
    let image = open(&write(dir.path(), "child.avhdx", &child.build())).unwrap();
    assert_eq!(image.chain()[1].path, dir.path().join("parent.vhdx"));
    drop(image);

    std::fs::remove_file(dir.path().join("parent.vhdx")).unwrap();
    let err = open(&write(dir.path(), "child.avhdx", &child.build())).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::NotFound);
    let msg = err.to_string();
    for tried in ["Old Disks/parent.vhdx", "parent.vhdx"] {
        let tried = dir.path().join(tried).display().to_string();
        assert!(msg.contains(&tried) && msg.contains("child.avhdx"), "{msg}");
    }
}

fn open(path: &Path) -> Result<VhdxImage> {
    open_with(path, VhdxImage::open)
}
