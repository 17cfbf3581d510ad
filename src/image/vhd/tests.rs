//! Hand-built VHDs: dynamic disks with partial bitmaps, and the hostile cases (bad
//! checksums, BAT past the end of the file, absurd sizes).

use super::*;
use crate::error::ErrorKind;
use crate::image::common::testutil::{open_with, put, write};
use crate::image::io::read_at;
use crate::image::Source;
use std::path::Path;

const BLOCK: usize = 4096;

fn footer(disk_type: u32, size: u64, data_offset: u64) -> Vec<u8> {
    let mut f = vec![0u8; 512];
    put(&mut f, 0, b"conectix");
    put(&mut f, 12, &0x0001_0000u32.to_be_bytes());
    put(&mut f, 16, &data_offset.to_be_bytes());
    put(&mut f, 28, b"win ");
    put(&mut f, 40, &size.to_be_bytes());
    put(&mut f, 48, &size.to_be_bytes());
    put(&mut f, 60, &disk_type.to_be_bytes());
    put(&mut f, 68, &[0x42; 16]);
    let sum = footer::checksum(&f);
    put(&mut f, 64, &sum.to_be_bytes());
    f
}

fn dyn_header(table_offset: u64, entries: u32, block: u32) -> Vec<u8> {
    let mut h = vec![0u8; 1024];
    put(&mut h, 0, b"cxsparse");
    put(&mut h, 8, &u64::MAX.to_be_bytes());
    put(&mut h, 16, &table_offset.to_be_bytes());
    put(&mut h, 24, &0x0001_0000u32.to_be_bytes());
    put(&mut h, 28, &entries.to_be_bytes());
    put(&mut h, 32, &block.to_be_bytes());
    let sum = footer::checksum(&h);
    put(&mut h, 36, &sum.to_be_bytes());
    h
}

/// A dynamic VHD of `blocks` 4 KiB blocks; `data` lists allocated blocks with their
/// bitmap byte (one byte covers the 8 sectors) and contents.
fn dynamic(blocks: usize, data: &[(usize, u8, Vec<u8>)]) -> Vec<u8> {
    let size = (blocks * BLOCK) as u64;
    let mut out = footer(3, size, 512);
    out.extend(dyn_header(1536, blocks as u32, BLOCK as u32));
    let mut bat = vec![0xffu8; (blocks * 4).next_multiple_of(512)];
    let mut body = Vec::new();
    let first = 1536 + bat.len();
    for (index, bits, contents) in data {
        let sector = ((first + body.len()) / 512) as u32;
        put(&mut bat, index * 4, &sector.to_be_bytes());
        let mut bitmap = vec![0u8; 512];
        bitmap[0] = *bits;
        body.extend(bitmap);
        body.extend_from_slice(contents);
    }
    out.extend(bat);
    out.extend(body);
    out.extend(footer(3, size, 512));
    out
}

fn pattern(seed: u8) -> Vec<u8> {
    (0..BLOCK)
        .map(|i| (i as u8).wrapping_add(seed) | 1)
        .collect()
}

#[test]
fn dynamic_disk_follows_bitmaps() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (pattern(1), pattern(2));
    let path = write(
        dir.path(),
        "d.vhd",
        &dynamic(4, &[(0, 0xff, a.clone()), (2, 0b1010_0000, b.clone())]),
    );
    let image = open(&path).unwrap();
    assert_eq!(image.disk_type(), DiskType::Dynamic);
    let mut got = vec![0u8; 4 * BLOCK];
    read_at(&image, &mut got, 0).unwrap();
    let mut want = vec![0u8; 4 * BLOCK];
    want[..BLOCK].copy_from_slice(&a);
    want[2 * BLOCK..2 * BLOCK + 512].copy_from_slice(&b[..512]);
    want[2 * BLOCK + 1024..2 * BLOCK + 1536].copy_from_slice(&b[1024..1536]);
    assert_eq!(got, want);
    let mut extents = Vec::new();
    image
        .map(2 * BLOCK as u64, BLOCK as u64, &mut extents)
        .unwrap();
    let kinds: Vec<bool> = extents
        .iter()
        .map(|e| matches!(e.source, Source::Data { .. }))
        .collect();
    assert_eq!(kinds, [true, false, true, false]);
}

#[test]
fn fixed_disk_and_its_footer_checksum() {
    let dir = tempfile::tempdir().unwrap();
    let mut bytes = pattern(3);
    bytes.extend(footer(2, BLOCK as u64, u64::MAX));
    let path = write(dir.path(), "f.vhd", &bytes);
    let file = ImageFile::open(&path, false, false).unwrap();
    assert!(footer::is_fixed_vhd(&file));
    let image = open(&path).unwrap();
    let mut got = vec![0u8; BLOCK];
    read_at(&image, &mut got, 0).unwrap();
    assert_eq!(got, pattern(3));

    let n = bytes.len();
    bytes[n - 512 + 40] ^= 1; // original size: covered by the checksum
    let path = write(dir.path(), "bad.vhd", &bytes);
    assert!(!footer::is_fixed_vhd(
        &ImageFile::open(&path, false, false).unwrap()
    ));
    let msg = open(&path).unwrap_err().to_string();
    assert!(
        msg.contains("bad.vhd") && msg.contains("VHD footer checksum mismatch"),
        "{msg}"
    );
}

#[test]
fn damaged_end_footer_falls_back_to_the_copy() {
    let dir = tempfile::tempdir().unwrap();
    let mut bytes = dynamic(2, &[(1, 0xff, pattern(4))]);
    let n = bytes.len();
    bytes[n - 100] ^= 0xff;
    let image = open(&write(dir.path(), "d.vhd", &bytes)).unwrap();
    let mut got = vec![0u8; BLOCK];
    read_at(&image, &mut got, BLOCK as u64).unwrap();
    assert_eq!(got, pattern(4));
}

#[test]
fn hostile_dynamic_headers() {
    let dir = tempfile::tempdir().unwrap();
    let good = dynamic(4, &[(0, 0xff, pattern(5))]);

    let mut past_end = good.clone();
    put(&mut past_end, 1536 + 4, &0x0100_0000u32.to_be_bytes());
    let msg = open(&write(dir.path(), "p.vhd", &past_end))
        .unwrap_err()
        .to_string();
    assert!(
        msg.contains("p.vhd") && msg.contains("BAT entry 1"),
        "{msg}"
    );

    let cases: [(u64, u32, &str); 3] = [
        (1536, 2, "needs 4"),
        (1536, 0, "needs 4"),
        (1 << 40, 4, "extends past the end"),
    ];
    for (table, entries, want) in cases {
        let mut bad = good.clone();
        put(&mut bad, 512, &dyn_header(table, entries, BLOCK as u32));
        let msg = open(&write(dir.path(), "h.vhd", &bad))
            .unwrap_err()
            .to_string();
        assert!(msg.contains(want) && msg.contains("h.vhd"), "{want}: {msg}");
    }

    let mut odd_block = good.clone();
    put(&mut odd_block, 512, &dyn_header(1536, 4, 3000));
    let msg = open(&write(dir.path(), "b.vhd", &odd_block))
        .unwrap_err()
        .to_string();
    assert!(msg.contains("block size 3000"), "{msg}");

    let mut bad_sum = good.clone();
    bad_sum[512 + 20] ^= 1;
    let msg = open(&write(dir.path(), "s.vhd", &bad_sum))
        .unwrap_err()
        .to_string();
    assert!(msg.contains("dynamic disk header checksum"), "{msg}");

    let mut huge = good.clone();
    let big = footer(3, 1 << 50, 512);
    put(&mut huge, 0, &big);
    let n = huge.len();
    put(&mut huge, n - 512, &big);
    let err = open(&write(dir.path(), "huge.vhd", &huge)).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Unsupported, "{err}");
}

#[test]
fn differencing_disk_without_locators_names_what_it_tried() {
    let dir = tempfile::tempdir().unwrap();
    let mut bytes = dynamic(2, &[]);
    let diff = footer(4, 2 * BLOCK as u64, 512);
    put(&mut bytes, 0, &diff);
    let n = bytes.len();
    put(&mut bytes, n - 512, &diff);
    let err = open(&write(dir.path(), "child.vhd", &bytes)).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::NotFound);
    assert!(err.to_string().contains("child.vhd"), "{err}");
}

fn open(path: &Path) -> Result<VhdImage> {
    open_with(path, VhdImage::open)
}
