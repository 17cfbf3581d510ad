//! LUKS headers built by hand: a valid LUKS2 volume that must open, and hostile variants
//! that must fail cleanly (no panic, no huge allocation, no endless key derivation).

use super::crypto::{af_split, Hash, SectorCipher};
use super::{luks1, luks2, read_metadata, LuksVolume, SECTOR};
use crate::error::ErrorKind;
use crate::image::io::{fill_from_extents, read_at};
use crate::image::{DiskImage, TransformRead};
use crate::layout::testutil::mem_image;
use base64ct::Encoding;
use proptest::prelude::*;
use sha2::Digest as _;

const PASS: &[u8] = b"hunter2";
const SIZE: usize = 1 << 20;
const DATA: usize = 65536;
const STRIPES: usize = 4;
const MK: [u8; 64] = [7; 64];

fn b64(b: &[u8]) -> String {
    base64ct::Base64::encode_string(b)
}

/// The JSON area of a valid volume, with `kdf` as the key slot's kdf object.
fn json(kdf: &str, stripes: usize) -> String {
    let mut digest = [0u8; 32];
    Hash::Sha256
        .pbkdf2(&MK, b"dsalt", 1000, &mut digest)
        .unwrap();
    format!(
        r#"{{"keyslots":{{"0":{{"type":"luks2","key_size":64,
        "af":{{"type":"luks1","stripes":{stripes},"hash":"sha256"}},
        "area":{{"type":"raw","offset":"32768","size":"4096","encryption":"aes-xts-plain64","key_size":64}},
        "kdf":{kdf}}}}},
        "segments":{{"0":{{"type":"crypt","offset":"{DATA}","size":"dynamic","iv_tweak":"0",
        "encryption":"aes-xts-plain64","sector_size":512}}}},
        "digests":{{"0":{{"type":"pbkdf2","keyslots":["0"],"segments":["0"],"hash":"sha256",
        "iterations":1000,"salt":"{}","digest":"{}"}}}},"config":{{}}}}"#,
        b64(b"dsalt"),
        b64(&digest)
    )
}

fn pbkdf2_kdf() -> String {
    format!(
        r#"{{"type":"pbkdf2","hash":"sha256","iterations":1000,"salt":"{}"}}"#,
        b64(b"ksalt")
    )
}

/// A 16 KiB LUKS2 header around `json`, with a correct checksum.
fn header(json: &str) -> Vec<u8> {
    let mut h = vec![0u8; 16384];
    h[..6].copy_from_slice(super::MAGIC);
    h[6..8].copy_from_slice(&2u16.to_be_bytes());
    h[8..16].copy_from_slice(&16384u64.to_be_bytes());
    h[72..78].copy_from_slice(b"sha256");
    h[168..172].copy_from_slice(b"abcd");
    let j = json.as_bytes();
    h[4096..4096 + j.len().min(12288)].copy_from_slice(&j[..j.len().min(12288)]);
    let sum = sha2::Sha256::digest(&h);
    h[448..480].copy_from_slice(&sum);
    h
}

/// A whole valid volume: header, key slot, and `plain` encrypted at the data offset.
fn volume(plain: &[u8]) -> Vec<u8> {
    let mut disk = vec![0u8; SIZE];
    disk[..16384].copy_from_slice(&header(&json(&pbkdf2_kdf(), STRIPES)));
    let mut derived = [0u8; 64];
    Hash::Sha256
        .pbkdf2(PASS, b"ksalt", 1000, &mut derived)
        .unwrap();
    let mut material = af_split(&MK, &[0x5a; 64 * STRIPES], STRIPES, Hash::Sha256).unwrap();
    material.resize(512, 0);
    SectorCipher::new("aes-xts-plain64", &derived)
        .unwrap()
        .encrypt(&mut material, 512, 0)
        .unwrap();
    disk[32768..32768 + 512].copy_from_slice(&material);
    let mut data = plain.to_vec();
    SectorCipher::new("aes-xts-plain64", &MK)
        .unwrap()
        .encrypt(&mut data, 512, 0)
        .unwrap();
    disk[DATA..DATA + data.len()].copy_from_slice(&data);
    disk
}

#[test]
fn hand_built_luks2_opens_and_decrypts() {
    let plain: Vec<u8> = (0..8192u32).map(|i| (i * 7 % 251) as u8).collect();
    let (_t, img) = mem_image(&volume(&plain));
    let v = LuksVolume::open(img, PASS).unwrap();
    assert_eq!(v.virtual_size(), (SIZE - DATA) as u64);
    assert_eq!(v.metadata().uuid, "abcd");
    let mut got = vec![0u8; 5000];
    read_at(&v, &mut got, 1000).unwrap();
    assert_eq!(got, plain[1000..6000]);
}

/// A staged read (the ciphertext's extents read, then decrypted in place, as a ublk queue
/// does) gives what `read_transformed` gives; a range of part sectors is not staged.
#[test]
fn staged_read_equals_read_transformed() {
    let plain: Vec<u8> = (0..65536u32).map(|i| (i * 13 % 241) as u8).collect();
    let (_t, img) = mem_image(&volume(&plain));
    let v = LuksVolume::open(img, PASS).unwrap();
    for (offset, len) in [(0u64, 512u64), (512, 4096), (7168, 40960), (0, 65536)] {
        let mut extents = Vec::new();
        let unit = v.map_stored(offset, len, &mut extents).unwrap();
        assert_eq!(unit, Some(512));
        let mut got = vec![0u8; len as usize];
        fill_from_extents(&extents, &mut got).unwrap();
        v.transform_in_place(offset, &mut got).unwrap();
        let mut want = vec![0u8; len as usize];
        v.read_transformed(offset, &mut want).unwrap();
        assert_eq!(got, want);
        assert_eq!(got, plain[offset as usize..][..len as usize]);
    }
    assert_eq!(v.map_stored(100, 512, &mut Vec::new()).unwrap(), None);
    assert_eq!(v.map_stored(512, 100, &mut Vec::new()).unwrap(), None);
    assert!(v.transform_in_place(100, &mut [0u8; 512]).is_err());
    assert!(v.transform_in_place(0, &mut [0u8; 100]).is_err());
}

#[test]
fn wrong_key_is_permission_error() {
    let (_t, img) = mem_image(&volume(&[0; 512]));
    let e = LuksVolume::open(img, b"wrong").err().unwrap();
    assert_eq!(e.kind(), ErrorKind::Permission);
    assert_eq!(e.to_string(), "no key slot matches the passphrase/key file");
}

fn open_err(disk: &[u8]) -> crate::Error {
    let (_t, img) = mem_image(disk);
    LuksVolume::open(img, PASS)
        .err()
        .expect("a hostile header opened")
}

#[test]
fn hostile_headers_fail_cleanly() {
    let good = volume(&[0; 512]);
    let mut bad_magic = good.clone();
    bad_magic[0] = b'X';
    assert!(open_err(&bad_magic).to_string().contains("bad magic"));

    let mut bad_sum = good.clone();
    bad_sum[5000] ^= 1;
    assert!(open_err(&bad_sum).to_string().contains("checksum"));

    let mut huge = good.clone();
    huge[8..16].copy_from_slice(&(1u64 << 40).to_be_bytes());
    assert_eq!(open_err(&huge).kind(), ErrorKind::Corrupt);

    let cases = [
        json(&pbkdf2_kdf(), 1_000_000_000),
        json(&pbkdf2_kdf(), 0),
        json(&pbkdf2_kdf().replace("1000", "4000000000"), STRIPES),
        json(
            r#"{"type":"argon2id","time":4,"memory":4294967295,"cpus":1,"salt":"AAAA"}"#,
            STRIPES,
        ),
        json(
            r#"{"type":"argon2id","time":999999,"memory":64,"cpus":1,"salt":"AAAA"}"#,
            STRIPES,
        ),
        json(r#"{"type":"scrypt","salt":"AAAA"}"#, STRIPES),
        json(&pbkdf2_kdf(), STRIPES).replace("\"32768\"", "\"18446744073709551615\""),
        json(&pbkdf2_kdf(), STRIPES).replace(&format!("\"{DATA}\""), "\"999999999999\""),
        json(&pbkdf2_kdf(), STRIPES).replace("aes-xts-plain64", "serpent-xts-plain64"),
        json(&pbkdf2_kdf(), STRIPES).replace("\"sha256\"", "\"md5\""),
        json(&pbkdf2_kdf(), STRIPES)[..300].to_string(),
        "[]".to_string(),
    ];
    for (i, j) in cases.iter().enumerate() {
        let mut disk = good.clone();
        disk[..16384].copy_from_slice(&header(j));
        let e = open_err(&disk);
        assert!(
            matches!(
                e.kind(),
                ErrorKind::Corrupt | ErrorKind::Unsupported | ErrorKind::Permission
            ),
            "case {i}: {e}"
        );
    }
}

#[test]
fn luks1_header_bounds() {
    let mut h = vec![0u8; 4096];
    h[..6].copy_from_slice(super::MAGIC);
    h[6..8].copy_from_slice(&1u16.to_be_bytes());
    h[8..11].copy_from_slice(b"aes");
    h[40..52].copy_from_slice(b"xts-plain64\0");
    h[72..78].copy_from_slice(b"sha256");
    h[104..108].copy_from_slice(&4096u32.to_be_bytes());
    h[108..112].copy_from_slice(&64u32.to_be_bytes());
    // payload beyond the device
    assert!(luks1::parse(&h, 4096).is_err());
    let meta = luks1::parse(&h, 4 << 20).unwrap();
    assert!(meta.keyslots.is_empty());
    // an enabled slot with absurd stripes
    h[208..212].copy_from_slice(&0x00AC_71F3u32.to_be_bytes());
    h[252..256].copy_from_slice(&u32::MAX.to_be_bytes());
    assert!(luks1::parse(&h, 4 << 20).is_err());
    // a truncated header
    assert!(luks1::parse(&h[..100], 4 << 20).is_err());
    // wrong key size for the cipher
    h[108..112].copy_from_slice(&7u32.to_be_bytes());
    assert!(luks1::parse(&h, 4 << 20).is_err());
    // a key size of 1.6 GiB (fuzz_luks case 18729 allocated a zero key that long)
    h[108..112].copy_from_slice(&0x6800_0020u32.to_be_bytes());
    let e = luks1::parse(&h, 4 << 20).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Unsupported, "{e}");
    assert!(
        SectorCipher::check_spec("aes-xts-plain64", usize::MAX).is_err(),
        "no allocation of usize::MAX bytes"
    );
}

#[test]
fn tiny_device_is_an_error() {
    let (_t, img) = mem_image(&super::MAGIC[..]);
    assert!(read_metadata(&*img).is_err());
    assert_eq!(SECTOR, 512);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn json_parser_never_panics(text in ".{0,400}") {
        let _ = luks2::parse_json(text.as_bytes(), SIZE as u64);
    }

    #[test]
    fn mutated_json_never_panics(edits in prop::collection::vec((0usize..4096, any::<u8>()), 1..16)) {
        let mut j = json(&pbkdf2_kdf(), STRIPES).into_bytes();
        let len = j.len();
        for (at, v) in edits {
            j[at % len] = v;
        }
        let _ = luks2::parse_json(&j, SIZE as u64);
    }

    #[test]
    fn mutated_header_parses_or_fails(edits in prop::collection::vec((0usize..16384, any::<u8>()), 1..16)) {
        let mut disk = volume(&[0; 512]);
        for (at, v) in edits {
            disk[at % 16384] = v;
        }
        let (_t, img) = mem_image(&disk);
        let _ = read_metadata(&*img);
        let _ = luks2::check_binary(&disk[..4096], 0);
    }
}
