//! Random and mutated input for every parser: none may panic, loop or allocate without
//! bound, whatever the bytes.

use super::lvm::label::{encode_area, encode_label, find_label, read_metadata, DiskArea};
use super::lvm::tests::{write_pv, PV_A};
use super::lvm::{metadata, VgMetadata};
use super::testutil::{gpt_disk, mem_image, put_entry, Disk, GptPart};
use super::util::{crc32, lvm_crc};
use super::{discover, gpt, mbr, probe};
use crate::image::io;
use proptest::prelude::*;

/// Runs everything a disk goes through, and reads a little of every volume found.
fn discover_all(disk: &[u8]) {
    let (_t, img) = mem_image(disk);
    let layout = discover(std::slice::from_ref(&img));
    for node in layout.nodes() {
        if let Ok(image) = node.image() {
            let mut buf = vec![0u8; image.virtual_size().min(4096) as usize];
            let _ = io::read_at(&*image, &mut buf, 0);
        }
    }
    let _ = serde_json::to_string(&layout);
    let _ = gpt::find(&*img);
}

/// Applies `(offset, byte)` edits, offsets taken modulo the length.
fn mutate(mut b: Vec<u8>, edits: &[(usize, u8)]) -> Vec<u8> {
    let len = b.len();
    for &(at, v) in edits {
        b[at % len] = v;
    }
    b
}

fn edits(max_offset: usize) -> impl Strategy<Value = Vec<(usize, u8)>> {
    prop::collection::vec((0..max_offset, any::<u8>()), 1..24)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 200, ..ProptestConfig::default() })]

    #[test]
    fn mbr_random_chains(entries in prop::collection::vec(
        (0u64..64, 0usize..4, prop::sample::select(vec![0u8, 0x05, 0x0f, 0x85, 0x83, 0xee]), 0u32..80, 0u32..80),
        0..40,
    )) {
        let mut disk = vec![0u8; 64 * 512];
        for (sector, i, kind, lba, sectors) in entries {
            put_entry(&mut disk, sector, i, kind, lba, sectors);
        }
        let _ = mbr::classify(&disk[..512]);
        discover_all(&disk);
    }

    #[test]
    fn gpt_mutated(edits in edits(4 * 512), tail in edits(33 * 512), fix_crc in any::<bool>(), big in any::<bool>()) {
        let parts = [GptPart { first: 40, last: 60, type_guid: "0fc63daf-8483-4772-8e79-3d69d8477de4", name: "p" }];
        let ss = if big { 4096 } else { 512 };
        let disk = gpt_disk(ss, 128, &parts);
        let len = disk.len();
        let mut disk = mutate(disk, &edits);
        for &(at, v) in &tail {
            disk[len - 1 - at] = v;
        }
        if fix_crc {
            let h = &mut disk[ss as usize..ss as usize + 92];
            h[16..20].fill(0);
            let crc = crc32(h);
            h[16..20].copy_from_slice(&crc.to_le_bytes());
        }
        discover_all(&disk);
    }

    #[test]
    fn metadata_text_random(text in "[a-z0-9_{}\\[\\]=,\"#\\\\ \n.-]{0,300}") {
        if let Ok(root) = metadata::parse(&text) {
            let _ = VgMetadata::from_root(&root);
        }
    }

    #[test]
    fn metadata_text_mutated(edits in edits(4000), cut in 0usize..4000) {
        let text = super::lvm::tests::sample_text();
        let bytes = mutate(text.into_bytes(), &edits);
        let text = String::from_utf8_lossy(&bytes[..cut.min(bytes.len())]).into_owned();
        if let Ok(root) = metadata::parse(&text) {
            let _ = VgMetadata::from_root(&root);
        }
    }

    #[test]
    fn pv_mutated(edits in edits(8192), fix_label_crc in any::<bool>(), ring in 512u64..8192) {
        let mda = DiskArea { offset: 4096, size: 8192 };
        let mut disk = vec![0u8; 20480];
        disk[512..1024].copy_from_slice(&encode_label("abcdefGHIJKLmnopqrstUVWXyz012345", 20480, 12288, &[mda]));
        let text = super::lvm::tests::sample_text();
        let area = encode_area(4096, 8192, ring, &text[..text.len().min(6000)]);
        disk[4096..12288].copy_from_slice(&area);
        let mut disk = mutate(disk, &edits);
        if fix_label_crc {
            let crc = lvm_crc(&[&disk[532..1024]]);
            disk[528..532].copy_from_slice(&crc.to_le_bytes());
        }
        if let Ok(Some(label)) = find_label(&disk) {
            let (_t, img) = mem_image(&disk);
            let _ = read_metadata(&*img, &label);
        }
        discover_all(&disk);
    }

    #[test]
    fn vg_from_mutated_but_checksummed_text(edits in edits(4000), digits in prop::collection::vec((0usize..4000, 0u8..10), 0..8)) {
        // Valid checksums all the way, so hostile values reach VG assembly and the LV views.
        let text = super::lvm::tests::sample_text().into_bytes();
        let mut text = mutate(text, &edits);
        for (at, d) in digits {
            let at = at % text.len();
            if text[at].is_ascii_digit() {
                text[at] = b'0' + d;
            }
        }
        let text = String::from_utf8_lossy(&text).into_owned();
        let disk = Disk::new(PV_A.size);
        write_pv(&disk, 0, &PV_A, &text, 512, 7);
        let layout = discover(&[disk.image()]);
        for lv in layout.volume_groups.iter().flat_map(|vg| &vg.lvs) {
            if let Ok(image) = lv.image() {
                let mut buf = vec![0u8; 4096];
                let size = image.virtual_size();
                for off in [0, size / 3, size.saturating_sub(4096)] {
                    let _ = io::read_at(&*image, &mut buf[..size.min(4096) as usize], off);
                }
            }
        }
    }

    #[test]
    fn probe_random(kind in 0usize..9, edits in edits(0x11000)) {
        let mut head = vec![0u8; 0x11000];
        let (at, magic): (usize, &[u8]) = [
            (0, &b"LUKS\xba\xbe"[..]),
            (0, b"XFSB"),
            (0x10040, b"_BHRfS_M"),
            (1024 + 0x38, &[0x53, 0xef]),
            (4086, b"SWAPSPACE2"),
            (0x8000, b"\x01CD001"),
            (3, b"NTFS    "),
            (82, b"FAT32"),
            (512, b"LABELONE"),
        ][kind];
        head[at..at + magic.len()].copy_from_slice(magic);
        head[510] = 0x55;
        head[511] = 0xaa;
        let head = mutate(head, &edits);
        let (_t, img) = mem_image(&head);
        let _ = probe::probe(&*img);
        discover_all(&head);
    }
}
