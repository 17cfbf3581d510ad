//! Hand-built VMDK images: every extent kind, and the hostile cases (bad magic, absurd
//! sizes, truncated tables, broken footers, CID mismatch, missing parent).

use super::header::GD_AT_END;
use super::*;
use crate::error::ErrorKind;
use crate::image::common::testutil::{open_with, put, read_all, read_in_pieces, write};
use crate::image::io::read_at;
use crate::image::Source;
use std::io::Write;
use std::path::Path;

const SECTOR: usize = 512;

fn pad(buf: &mut Vec<u8>) {
    buf.resize(buf.len().next_multiple_of(SECTOR), 0);
}

/// A hosted sparse extent.
struct Hosted {
    capacity: u64,
    grain: u64,
    gtes: u32,
    flags: u32,
    descriptor: Option<String>,
    gd_at_end: bool,
}

impl Hosted {
    fn new(capacity: u64) -> Self {
        Hosted {
            capacity,
            grain: 8,
            gtes: 4,
            flags: 1 << 2, // zeroed-grain GTEs
            descriptor: None,
            gd_at_end: false,
        }
    }

    fn header(&self, gd: u64, desc: (u64, u64), overhead: u64) -> Vec<u8> {
        let mut s = vec![0u8; SECTOR];
        put(&mut s, 0, b"KDMV");
        put(&mut s, 4, &1u32.to_le_bytes());
        put(&mut s, 8, &self.flags.to_le_bytes());
        put(&mut s, 12, &self.capacity.to_le_bytes());
        put(&mut s, 20, &self.grain.to_le_bytes());
        put(&mut s, 28, &desc.0.to_le_bytes());
        put(&mut s, 36, &desc.1.to_le_bytes());
        put(&mut s, 44, &self.gtes.to_le_bytes());
        put(&mut s, 56, &gd.to_le_bytes());
        put(&mut s, 64, &overhead.to_le_bytes());
        put(&mut s, 73, b"\n \r\n");
        if self.flags & (1 << 16) != 0 {
            put(&mut s, 77, &1u16.to_le_bytes());
        }
        s
    }

    /// Builds the file; `grains` maps grain index to contents (`None` = zero grain).
    /// Grain tables holding no grain stay unallocated.
    fn build(&self, grains: &[(u64, Option<Vec<u8>>)]) -> Vec<u8> {
        let compressed = self.flags & (1 << 16) != 0;
        let gtes = u64::from(self.gtes);
        let gd_entries = self.capacity.div_ceil(gtes * self.grain) as usize;
        let mut out = vec![0u8; SECTOR];
        let desc = self.descriptor.as_ref().map(|d| {
            let at = out.len() as u64 / 512;
            out.extend_from_slice(d.as_bytes());
            pad(&mut out);
            (at, out.len() as u64 / 512 - at)
        });
        let mut gd = vec![0u32; gd_entries];
        let mut gts: Vec<(usize, Vec<u32>)> = Vec::new();
        for (gt, slot) in gd.iter_mut().enumerate() {
            if grains.iter().any(|(g, _)| (*g / gtes) as usize == gt) {
                gts.push((gt, vec![0u32; self.gtes as usize]));
                *slot = u32::MAX; // placeholder until laid out
            }
        }
        let gd_at = out.len() as u64 / 512;
        out.extend(gd.iter().flat_map(|e| e.to_le_bytes()));
        pad(&mut out);
        for (gt, table) in &gts {
            gd[*gt] = (out.len() / SECTOR) as u32;
            out.extend(std::iter::repeat_n(0u8, table.len() * 4));
            pad(&mut out);
        }
        let overhead = out.len() as u64 / 512;
        for (g, contents) in grains {
            let (gt, idx) = ((*g / gtes) as usize, (*g % gtes) as usize);
            let table = &mut gts.iter_mut().find(|(i, _)| *i == gt).unwrap().1;
            match contents {
                None => table[idx] = 1,
                Some(bytes) => {
                    table[idx] = (out.len() / SECTOR) as u32;
                    if compressed {
                        let mut enc = flate2::write::ZlibEncoder::new(
                            Vec::new(),
                            flate2::Compression::fast(),
                        );
                        enc.write_all(bytes).unwrap();
                        let packed = enc.finish().unwrap();
                        out.extend_from_slice(&(g * self.grain).to_le_bytes());
                        out.extend_from_slice(&(packed.len() as u32).to_le_bytes());
                        out.extend_from_slice(&packed);
                    } else {
                        out.extend_from_slice(bytes);
                    }
                    pad(&mut out);
                }
            }
        }
        let at = gd_at as usize * SECTOR;
        for (i, e) in gd.iter().enumerate() {
            put(&mut out, at + i * 4, &e.to_le_bytes());
        }
        for (gt, table) in &gts {
            let at = gd[*gt] as usize * SECTOR;
            for (i, e) in table.iter().enumerate() {
                put(&mut out, at + i * 4, &e.to_le_bytes());
            }
        }
        let desc = desc.unwrap_or((0, 0));
        if self.gd_at_end {
            put(&mut out, 0, &self.header(GD_AT_END, desc, overhead));
            let mut marker = vec![0u8; SECTOR];
            put(&mut marker, 12, &3u32.to_le_bytes());
            out.extend_from_slice(&marker);
            out.extend_from_slice(&self.header(gd_at, desc, overhead));
            out.extend_from_slice(&[0u8; SECTOR]);
        } else {
            put(&mut out, 0, &self.header(gd_at, desc, overhead));
        }
        out
    }
}

fn grain_data(seed: u8, len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed) | 1)
        .collect()
}

/// Builds the expected guest bytes of `grains` over `capacity` sectors.
fn expected(capacity: u64, grain: u64, grains: &[(u64, Option<Vec<u8>>)]) -> Vec<u8> {
    let mut want = vec![0u8; capacity as usize * SECTOR];
    for (g, contents) in grains {
        if let Some(bytes) = contents {
            let at = (g * grain) as usize * SECTOR;
            let n = bytes.len().min(want.len() - at);
            want[at..at + n].copy_from_slice(&bytes[..n]);
        }
    }
    want
}

fn sample_grains(grain_bytes: usize) -> Vec<(u64, Option<Vec<u8>>)> {
    vec![
        (0, Some(grain_data(1, grain_bytes))),
        (1, None),
        (3, Some(grain_data(2, grain_bytes))),
        (9, Some(grain_data(3, grain_bytes))),
    ]
}

#[test]
fn grain_tables_and_grains_of_any_length_map_the_same_bytes() {
    // The lookup splits a grain index by shift and mask when numGTEsPerGT is a power of
    // two and by division otherwise; grains need not be a power of two either (QEMU
    // reads any grain size): every combination must find every grain, whole or sector by
    // sector (`map`'s one-grain fast path).
    let dir = tempfile::tempdir().unwrap();
    for grain in [8u64, 3] {
        let grains = sample_grains(grain as usize * SECTOR);
        for gtes in [1, 3, 4, 5] {
            let h = Hosted {
                gtes,
                grain,
                ..Hosted::new(84)
            };
            let name = format!("g{gtes}-{grain}.vmdk");
            let image = open(&write(dir.path(), &name, &h.build(&grains))).unwrap();
            let want = expected(84, grain, &grains);
            assert_eq!(read_all(&image).unwrap(), want, "{name}");
            assert_eq!(
                read_in_pieces(&image, SECTOR).unwrap(),
                want,
                "{name}, sector by sector"
            );
        }
    }
}

#[test]
fn hosted_sparse_reads_data_zero_and_holes() {
    let dir = tempfile::tempdir().unwrap();
    let h = Hosted::new(84); // 10.5 grains: a short last grain, GTs of 4 grains
    let grains = sample_grains(4096);
    let path = write(dir.path(), "h.vmdk", &h.build(&grains));
    let image = open(&path).unwrap();
    assert_eq!(image.virtual_size(), 84 * 512);
    assert_eq!(read_all(&image).unwrap(), expected(84, 8, &grains));
    assert_eq!(
        read_in_pieces(&image, 4096).unwrap(),
        expected(84, 8, &grains)
    );
    let mut extents = Vec::new();
    image.map(4096, 4096, &mut extents).unwrap();
    assert_eq!(
        extents[0].source,
        Source::Zero,
        "GTE 1 with the zeroed-grain flag"
    );
    extents.clear();
    image.map(8192, 4096, &mut extents).unwrap();
    assert_eq!(extents[0].source, Source::Unallocated);
}

#[test]
fn stream_optimized_with_footer_directory() {
    let dir = tempfile::tempdir().unwrap();
    let mut h = Hosted::new(80);
    h.flags = (1 << 16) | (1 << 17);
    h.gd_at_end = true;
    let grains = sample_grains(4096);
    let grains: Vec<_> = grains.into_iter().filter(|(_, c)| c.is_some()).collect();
    let bytes = h.build(&grains);
    let path = write(dir.path(), "s.vmdk", &bytes);
    let image = open(&path).unwrap();
    assert_eq!(read_all(&image).unwrap(), expected(80, 8, &grains));
    assert_eq!(
        read_in_pieces(&image, SECTOR).unwrap(),
        expected(80, 8, &grains)
    );

    // Without the end-of-stream marker the footer is not trusted.
    let mut broken = bytes.clone();
    let n = broken.len();
    put(&mut broken, n - 512 + 12, &9u32.to_le_bytes());
    let path = write(dir.path(), "b.vmdk", &broken);
    let err = open(&path).unwrap_err().to_string();
    assert!(err.contains("GD_AT_END") && err.contains("b.vmdk"), "{err}");
}

#[test]
fn truncated_grain_table_and_redundant_directory() {
    let dir = tempfile::tempdir().unwrap();
    let h = Hosted::new(80);
    let grains = sample_grains(4096);
    let mut bytes = h.build(&grains);
    // The GD is at sector 1; point its first entry past the end of the file.
    put(&mut bytes, 512, &0x10_0000u32.to_le_bytes());
    let path = write(dir.path(), "t.vmdk", &bytes);
    let err = open(&path).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Corrupt);
    let msg = err.to_string();
    assert!(
        msg.contains("t.vmdk") && msg.contains("grain directory entry 0"),
        "{msg}"
    );

    // With a redundant GD (here: a second copy of the good one) the image still opens.
    let good = h.build(&grains);
    let mut with_rgd = bytes.clone();
    let rgd_sector = (with_rgd.len() / SECTOR) as u64;
    with_rgd.extend_from_slice(&good[512..1024]);
    put(&mut with_rgd, 8, &(h.flags | 2).to_le_bytes());
    put(&mut with_rgd, 48, &rgd_sector.to_le_bytes());
    let path = write(dir.path(), "r.vmdk", &with_rgd);
    assert_eq!(
        read_all(&open(&path).unwrap()).unwrap(),
        expected(80, 8, &grains)
    );

    // A grain that lies past the end of the file fails the read, naming the file.
    let mut cut = good.clone();
    cut.truncate(cut.len() - 2048);
    let path = write(dir.path(), "c.vmdk", &cut);
    let err = read_all(&open(&path).unwrap()).unwrap_err().to_string();
    assert!(
        err.contains("c.vmdk") && err.contains("past the end"),
        "{err}"
    );
}

#[test]
fn absurd_headers_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let good = Hosted::new(80).build(&sample_grains(4096));
    let cases: [(usize, Vec<u8>, &str); 5] = [
        (0, b"KDMX".to_vec(), "createType"), // not sparse, not a descriptor either
        (4, 7u32.to_le_bytes().to_vec(), "version 7"),
        (12, (u64::MAX / 2).to_le_bytes().to_vec(), "overflows"),
        (20, 0u64.to_le_bytes().to_vec(), "grain size is 0"),
        (44, 100_000u32.to_le_bytes().to_vec(), "numGTEsPerGT"),
    ];
    for (at, bytes, want) in cases {
        let mut bad = good.clone();
        put(&mut bad, at, &bytes);
        let path = write(dir.path(), "bad.vmdk", &bad);
        let msg = open(&path).unwrap_err().to_string();
        assert!(
            msg.contains(want) && msg.contains("bad.vmdk"),
            "{want}: {msg}"
        );
    }
    // A capacity needing more than 64 Mi grain tables.
    let mut huge = good.clone();
    put(&mut huge, 12, &(1u64 << 50).to_le_bytes());
    put(&mut huge, 20, &1u64.to_le_bytes());
    let msg = open(&write(dir.path(), "huge.vmdk", &huge))
        .unwrap_err()
        .to_string();
    assert!(msg.contains("more than"), "{msg}");
}

#[test]
fn descriptor_with_flat_zero_sparse_and_noaccess_extents() {
    let dir = tempfile::tempdir().unwrap();
    let flat = grain_data(9, 16 * SECTOR);
    write(dir.path(), "flat.bin", &flat);
    let grains = vec![(0u64, Some(grain_data(5, 4096)))];
    write(dir.path(), "s.vmdk", &Hosted::new(8).build(&grains));
    let desc = "# Disk DescriptorFile\nversion=1\nCID=12345678\nparentCID=ffffffff\n\
                createType=\"twoGbMaxExtentSparse\"\n\
                RW 8 FLAT \"flat.bin\" 2\nRDONLY 8 ZERO\nRW 8 SPARSE \"s.vmdk\"\nNOACCESS 8 FLAT \"flat.bin\" 0\n";
    let path = write(dir.path(), "d.vmdk", desc.as_bytes());
    assert_eq!(
        crate::image::open::detect(&ImageFile::open(&path, false, false).unwrap()).unwrap(),
        Format::Vmdk
    );
    let image = open(&path).unwrap();
    assert_eq!(image.virtual_size(), 32 * 512);
    let chain = image.chain();
    assert_eq!(chain.len(), 1, "one layer: {chain:?}");
    let extents: Vec<_> = chain[0]
        .extents
        .iter()
        .map(|e| (e.path.file_name().unwrap().to_str().unwrap(), e.flat))
        .collect();
    assert_eq!(
        extents,
        [("flat.bin", true), ("s.vmdk", false)],
        "the descriptor's flat and sparse files (NOACCESS is not opened)"
    );
    let mut buf = vec![0u8; 24 * SECTOR];
    read_at(&image, &mut buf, 0).unwrap();
    assert_eq!(&buf[..8 * SECTOR], &flat[2 * SECTOR..10 * SECTOR]);
    assert!(buf[8 * SECTOR..16 * SECTOR].iter().all(|&b| b == 0));
    assert_eq!(&buf[16 * SECTOR..], &grains[0].1.as_ref().unwrap()[..]);
    for sector in 0..24 {
        let mut one = [0u8; SECTOR];
        read_at(&image, &mut one, (sector * SECTOR) as u64).unwrap();
        assert_eq!(
            one,
            buf[sector * SECTOR..][..SECTOR],
            "sector {sector} alone"
        );
    }
    let err = read_at(&image, &mut buf[..SECTOR], 24 * 512).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Unsupported);
    assert!(
        err.to_string().contains("NOACCESS") && err.to_string().contains("d.vmdk"),
        "{err}"
    );

    // A flat extent longer than its file.
    let short = desc.replace("RW 8 FLAT \"flat.bin\" 2", "RW 80 FLAT \"flat.bin\" 2");
    let path = write(dir.path(), "short.vmdk", short.as_bytes());
    let msg = open(&path).unwrap_err().to_string();
    assert!(
        msg.contains("flat.bin") && msg.contains("flat extent needs"),
        "{msg}"
    );

    // Raw device mappings and writable opens are refused.
    let rdm = desc.replace("twoGbMaxExtentSparse", "vmfsRawDeviceMap");
    let msg = open(&write(dir.path(), "rdm.vmdk", rdm.as_bytes()))
        .unwrap_err()
        .to_string();
    assert!(msg.contains("raw device"), "{msg}");
    let rw = OpenOptions {
        writable: true,
        ..OpenOptions::default()
    };
    let err = VmdkImage::open(ImageFile::open(&path, false, false).unwrap(), &rw, 0).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::ReadOnly);
}

#[test]
fn child_over_parent_and_chain_errors() {
    let dir = tempfile::tempdir().unwrap();
    let base_data = grain_data(7, 16 * SECTOR);
    write(dir.path(), "base-flat.bin", &base_data);
    let base = "version=1\nCID=aaaa0001\nparentCID=ffffffff\ncreateType=\"monolithicFlat\"\nRW 16 FLAT \"base-flat.bin\" 0\n";
    write(dir.path(), "base.vmdk", base.as_bytes());
    let mut h = Hosted::new(16);
    let child_desc = |pcid: &str| {
        format!("version=1\nCID=bbbb0002\nparentCID={pcid}\ncreateType=\"monolithicSparse\"\nparentFileNameHint=\"base.vmdk\"\n")
    };
    h.descriptor = Some(child_desc("aaaa0001"));
    let grains = vec![(1u64, Some(grain_data(3, 4096)))];
    let path = write(dir.path(), "child.vmdk", &h.build(&grains));
    let image = open(&path).unwrap();
    let mut want = base_data.clone();
    want[4096..8192].copy_from_slice(grains[0].1.as_ref().unwrap());
    assert_eq!(read_all(&image).unwrap(), want);
    assert_eq!(read_in_pieces(&image, SECTOR).unwrap(), want);
    assert_eq!(image.cid(), Some(0xbbbb0002));
    let mut extents = Vec::new();
    image.map(0, 8192, &mut extents).unwrap();
    assert_eq!((extents[0].depth, extents[1].depth), (1, 0));
    // One grain at a time: the child's own grain, then the parent's through a hole.
    for (offset, depth) in [(4096, 0), (0, 1)] {
        extents.clear();
        image.map(offset, 4096, &mut extents).unwrap();
        assert_eq!(extents.len(), 1);
        assert_eq!(extents[0].depth, depth, "grain at {offset}");
        assert!(matches!(extents[0].source, Source::Data { .. }));
    }

    h.descriptor = Some(child_desc("aaaa0009"));
    let path = write(dir.path(), "child.vmdk", &h.build(&grains));
    let msg = open(&path).unwrap_err().to_string();
    assert!(
        msg.contains("child.vmdk")
            && msg.contains("base.vmdk")
            && msg.contains("aaaa0009")
            && msg.contains("aaaa0001"),
        "{msg}"
    );

    std::fs::remove_file(dir.path().join("base.vmdk")).unwrap();
    let err = open(&path).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::NotFound);
    assert!(
        err.to_string()
            .contains(&dir.path().join("base.vmdk").display().to_string()),
        "{err}"
    );
}

#[test]
fn cowd_and_sesparse_extents() {
    let dir = tempfile::tempdir().unwrap();
    // COWD: 64 sectors, 8-sector grains, GD at sector 1 (1 entry), GT at sector 2 (32
    // sectors of 4096 entries), grains after.
    let mut cowd = vec![0u8; 34 * SECTOR];
    put(&mut cowd, 0, b"COWD");
    for (at, v) in [(4, 1u32), (8, 3), (12, 64), (16, 8), (20, 1), (24, 1)] {
        put(&mut cowd, at, &v.to_le_bytes());
    }
    put(&mut cowd, SECTOR, &2u32.to_le_bytes());
    put(&mut cowd, 2 * SECTOR + 4 * 4, &34u32.to_le_bytes()); // grain 4
    let g = grain_data(4, 4096);
    cowd.extend_from_slice(&g);
    let image = open(&write(dir.path(), "c.vmdk", &cowd)).unwrap();
    let mut want = vec![0u8; 64 * SECTOR];
    want[16384..20480].copy_from_slice(&g);
    assert_eq!(read_all(&image).unwrap(), want);
    assert_eq!(read_in_pieces(&image, SECTOR).unwrap(), want);

    // seSparse: const header, volatile header at 1, GD at 2, GT at 3 (64 sectors),
    // grains at 67.
    let mut se = vec![0u8; 67 * SECTOR];
    for (at, v) in [
        (0, 0xcafe_babeu64),
        (8, 0x2_0000_0001),
        (16, 8192),
        (24, 8),
        (32, 64),
        (80, 1),
        (88, 1),
        (128, 2),
        (136, 1),
        (144, 3),
        (152, 64),
        (192, 67),
    ] {
        put(&mut se, at, &v.to_le_bytes());
    }
    put(&mut se, SECTOR, &0xcafe_cafeu64.to_le_bytes());
    put(&mut se, 2 * SECTOR, &0x1000_0000_0000_0000u64.to_le_bytes());
    let gt = 3 * SECTOR;
    let cluster = 0x1001u64; // exercises both halves of the entry encoding
    let entry = (3u64 << 60) | ((cluster & 0xfff) << 48) | (cluster >> 12);
    put(&mut se, gt + 2 * 8, &entry.to_le_bytes());
    put(&mut se, gt + 3 * 8, &(2u64 << 60).to_le_bytes());
    se.resize((67 + 0x1001 * 8) * SECTOR, 0);
    let g = grain_data(6, 4096);
    se.extend_from_slice(&g);
    let image = open(&write(dir.path(), "se.vmdk", &se)).unwrap();
    let mut want = vec![0u8; 8192 * SECTOR];
    want[8192..12288].copy_from_slice(&g);
    assert_eq!(read_all(&image).unwrap(), want);
    assert_eq!(read_in_pieces(&image, SECTOR).unwrap(), want);

    put(&mut se, SECTOR + 24, &1u64.to_le_bytes());
    let err = open(&write(dir.path(), "dirty.vmdk", &se)).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Unsupported);
    assert!(err.to_string().contains("journal"), "{err}");
}

fn open(path: &Path) -> Result<VmdkImage> {
    open_with(path, VmdkImage::open)
}
