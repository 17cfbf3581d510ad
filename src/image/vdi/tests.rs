//! Hand-built VDIs: block map states, and the hostile cases (bad signature, unsupported
//! versions and types, block map past the end, absurd sizes).

use super::*;
use crate::error::ErrorKind;
use crate::image::common::testutil::{open_with, put, write};
use crate::image::io::read_at;
use crate::image::Source;
use std::path::Path;

const BLOCK: usize = 4096;

/// A normal VDI of 4 blocks: block map at 512, data at 1024; block 0 is stored second,
/// block 2 first, block 1 is unallocated and block 3 discarded.
fn build() -> Vec<u8> {
    let mut f = vec![0u8; 1024];
    put(&mut f, 0, b"<<< QEMU VM Virtual Disk Image >>>\n");
    for (at, v) in [
        (0x40, 0xbeda_107fu32),
        (0x44, 0x0001_0001),
        (0x48, 0x180),
        (0x4c, 1),
        (0x154, 512),
        (0x158, 1024),
        (0x168, 512),
        (0x178, BLOCK as u32),
        (0x180, 4),
        (0x184, 2),
    ] {
        put(&mut f, at, &v.to_le_bytes());
    }
    put(&mut f, 0x170, &(4 * BLOCK as u64).to_le_bytes());
    for (i, e) in [1u32, u32::MAX, 0, u32::MAX - 1].iter().enumerate() {
        put(&mut f, 512 + i * 4, &e.to_le_bytes());
    }
    f.extend(pattern(2));
    f.extend(pattern(1));
    f
}

fn pattern(seed: u8) -> Vec<u8> {
    (0..BLOCK)
        .map(|i| (i as u8).wrapping_mul(3).wrapping_add(seed) | 1)
        .collect()
}

#[test]
fn block_map_states() {
    let dir = tempfile::tempdir().unwrap();
    let path = write(dir.path(), "t.vdi", &build());
    assert_eq!(
        crate::image::open::detect(&ImageFile::open(&path, false, false).unwrap()).unwrap(),
        Format::Vdi
    );
    let image = open(&path).unwrap();
    let mut got = vec![0u8; 4 * BLOCK];
    read_at(&image, &mut got, 0).unwrap();
    let mut want = vec![0u8; 4 * BLOCK];
    want[..BLOCK].copy_from_slice(&pattern(1));
    want[2 * BLOCK..3 * BLOCK].copy_from_slice(&pattern(2));
    assert_eq!(got, want);
    let mut extents = Vec::new();
    image
        .map(BLOCK as u64, 3 * BLOCK as u64, &mut extents)
        .unwrap();
    assert_eq!(extents[0].source, Source::Unallocated);
    assert_eq!(extents[2].source, Source::Zero);
}

#[test]
fn hostile_headers() {
    let dir = tempfile::tempdir().unwrap();
    let cases: [(usize, Vec<u8>, &str, ErrorKind); 7] = [
        (0x40, vec![0; 4], "signature", ErrorKind::Corrupt),
        (
            0x44,
            0x0001_0000u32.to_le_bytes().to_vec(),
            "not 1.1",
            ErrorKind::Unsupported,
        ),
        (
            0x4c,
            4u32.to_le_bytes().to_vec(),
            "uuidLinkage is zero",
            ErrorKind::Corrupt,
        ),
        (
            0x178,
            3000u32.to_le_bytes().to_vec(),
            "block size 3000",
            ErrorKind::Corrupt,
        ),
        (
            0x170,
            (1u64 << 50).to_le_bytes().to_vec(),
            "needs more than",
            ErrorKind::Corrupt,
        ),
        (
            512,
            7u32.to_le_bytes().to_vec(),
            "block map entry 0",
            ErrorKind::Corrupt,
        ),
        (
            0x154,
            0x10_0000u32.to_le_bytes().to_vec(),
            "past the end",
            ErrorKind::Corrupt,
        ),
    ];
    for (at, bytes, want, kind) in cases {
        let mut bad = build();
        put(&mut bad, at, &bytes);
        let err = open(&write(dir.path(), "t.vdi", &bad)).unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains(want) && msg.contains("t.vdi"), "{want}: {msg}");
        assert_eq!(err.kind(), kind, "{msg}");
    }
    // Four billion blocks of 256 MiB: a block map far larger than what we allocate.
    let mut huge = build();
    put(&mut huge, 0x170, &(u64::from(u32::MAX) << 28).to_le_bytes());
    put(&mut huge, 0x178, &(256u32 << 20).to_le_bytes());
    put(&mut huge, 0x180, &u32::MAX.to_le_bytes());
    let msg = open(&write(dir.path(), "t.vdi", &huge))
        .unwrap_err()
        .to_string();
    assert!(msg.contains("allowed"), "{msg}");
}

fn open(path: &Path) -> Result<VdiImage> {
    open_with(path, VdiImage::open)
}
