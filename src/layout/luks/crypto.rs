//! The primitives LUKS needs, all from RustCrypto: PBKDF2 and Argon2 key derivation, the
//! anti-forensic (AF) merge, and per-sector AES (XTS, or CBC with an ESSIV or plain IV).

use crate::error::{Error, Result};
use aes::cipher::{BlockDecryptMut, BlockEncrypt, BlockEncryptMut, KeyInit, KeyIvInit};
use aes::{Aes128, Aes192, Aes256};
use sha2::Digest;
use xts_mode::Xts128;
use zeroize::Zeroizing;

/// Most PBKDF2 iterations a header may ask for.
pub const MAX_PBKDF2_ITERATIONS: u32 = 100_000_000;
/// Most Argon2 memory a header may ask for, in KiB (4 GiB).
pub const MAX_ARGON2_MEMORY_KIB: u32 = 4 << 20;
/// Most Argon2 passes a header may ask for.
pub const MAX_ARGON2_TIME: u32 = 1000;
/// Most Argon2 lanes a header may ask for.
pub const MAX_ARGON2_LANES: u32 = 64;
/// Most AF stripes a key slot may have (cryptsetup always writes 4000).
pub const MAX_STRIPES: u32 = 4000;

/// A hash LUKS names in its headers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hash {
    /// SHA-1 (old LUKS1 headers).
    Sha1,
    /// SHA-256.
    Sha256,
    /// SHA-512.
    Sha512,
}

impl Hash {
    /// Parses a header's hash name (`sha256`).
    pub fn parse(name: &str) -> Result<Hash> {
        match name.to_ascii_lowercase().as_str() {
            "sha1" => Ok(Hash::Sha1),
            "sha256" => Ok(Hash::Sha256),
            "sha512" => Ok(Hash::Sha512),
            other => Err(Error::unsupported(format!("LUKS hash {other:?}"))),
        }
    }

    /// PBKDF2-HMAC with this hash.
    pub fn pbkdf2(
        self,
        password: &[u8],
        salt: &[u8],
        iterations: u32,
        out: &mut [u8],
    ) -> Result<()> {
        if iterations == 0 || iterations > MAX_PBKDF2_ITERATIONS {
            return Err(Error::corrupt(format!(
                "LUKS PBKDF2 iterations {iterations}, must be 1..={MAX_PBKDF2_ITERATIONS}"
            )));
        }
        match self {
            Hash::Sha1 => pbkdf2::pbkdf2_hmac::<sha1::Sha1>(password, salt, iterations, out),
            Hash::Sha256 => pbkdf2::pbkdf2_hmac::<sha2::Sha256>(password, salt, iterations, out),
            Hash::Sha512 => pbkdf2::pbkdf2_hmac::<sha2::Sha512>(password, salt, iterations, out),
        }
        Ok(())
    }

    /// LUKS's diffuse function: each digest-sized block `j` of `buf` becomes
    /// `H(be32(j) || block)`, truncated to the block's length.
    fn diffuse(self, buf: &mut [u8]) {
        match self {
            Hash::Sha1 => diffuse_with::<sha1::Sha1>(buf),
            Hash::Sha256 => diffuse_with::<sha2::Sha256>(buf),
            Hash::Sha512 => diffuse_with::<sha2::Sha512>(buf),
        }
    }
}

fn diffuse_with<D: Digest>(buf: &mut [u8]) {
    let size = <D as Digest>::output_size();
    for (j, block) in buf.chunks_mut(size).enumerate() {
        let mut h = D::new();
        h.update((j as u32).to_be_bytes());
        h.update(&*block);
        let out = h.finalize();
        block.copy_from_slice(&out[..block.len()]);
    }
}

/// Merges `stripes` AF stripes of `key_len` bytes each back into the key.
pub fn af_merge(split: &[u8], key_len: usize, stripes: usize, hash: Hash) -> Result<Vec<u8>> {
    if key_len == 0 || stripes == 0 || split.len() < key_len * stripes {
        return Err(Error::corrupt(
            "LUKS AF material is shorter than its stripes",
        ));
    }
    let mut d = vec![0u8; key_len];
    for stripe in split.chunks_exact(key_len).take(stripes - 1) {
        d.iter_mut().zip(stripe).for_each(|(a, b)| *a ^= b);
        hash.diffuse(&mut d);
    }
    let last = &split[(stripes - 1) * key_len..stripes * key_len];
    d.iter_mut().zip(last).for_each(|(a, b)| *a ^= b);
    Ok(d)
}

/// Splits `key` into `stripes` AF stripes, the first `stripes - 1` taken from `random`
/// (the inverse of [`af_merge`], for writing key slots and for tests).
pub fn af_split(key: &[u8], random: &[u8], stripes: usize, hash: Hash) -> Result<Vec<u8>> {
    let n = key.len();
    if stripes == 0 || random.len() < n * (stripes - 1) {
        return Err(Error::invalid("AF split needs stripes - 1 random stripes"));
    }
    let mut out = random[..n * (stripes - 1)].to_vec();
    let mut d = vec![0u8; n];
    for stripe in out.chunks_exact(n) {
        d.iter_mut().zip(stripe).for_each(|(a, b)| *a ^= b);
        hash.diffuse(&mut d);
    }
    out.extend(d.iter().zip(key).map(|(a, b)| a ^ b));
    Ok(out)
}

/// Argon2i or Argon2id as LUKS2 parameterises them (memory in KiB).
pub fn argon2(
    id: bool,
    password: &[u8],
    salt: &[u8],
    time: u32,
    memory_kib: u32,
    lanes: u32,
    out: &mut [u8],
) -> Result<()> {
    if !(1..=MAX_ARGON2_TIME).contains(&time)
        || !(8..=MAX_ARGON2_MEMORY_KIB).contains(&memory_kib)
        || !(1..=MAX_ARGON2_LANES).contains(&lanes)
    {
        return Err(Error::corrupt(format!(
            "LUKS Argon2 cost out of bounds: time {time} (1..={MAX_ARGON2_TIME}), memory {memory_kib} KiB \
             (8..={MAX_ARGON2_MEMORY_KIB}), cpus {lanes} (1..={MAX_ARGON2_LANES})"
        )));
    }
    let params = argon2::Params::new(memory_kib, time, lanes, Some(out.len()))
        .map_err(|e| Error::corrupt(format!("LUKS Argon2 parameters: {e}")))?;
    let algorithm = if id {
        argon2::Algorithm::Argon2id
    } else {
        argon2::Algorithm::Argon2i
    };
    argon2::Argon2::new(algorithm, argon2::Version::V0x13, params)
        .hash_password_into(password, salt, out)
        .map_err(|e| Error::corrupt(format!("LUKS Argon2: {e}")))
}

/// How the IV of a sector is made.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum IvMode {
    /// Sector number, 64-bit little-endian.
    Plain64,
    /// Sector number truncated to 32 bits.
    Plain,
    /// The sector number encrypted with SHA-256 of the key (CBC only).
    EssivSha256,
}

enum Mode {
    Xts128(Box<Xts128<Aes128>>),
    Xts256(Box<Xts128<Aes256>>),
    Cbc {
        /// Wiped when the cipher is dropped (the AES key schedules wipe themselves).
        key: Zeroizing<Vec<u8>>,
        essiv: Option<Box<Aes256>>,
    },
}

/// A LUKS cipher spec (`aes-xts-plain64`) keyed: encrypts and decrypts whole sectors.
pub struct SectorCipher {
    mode: Mode,
    iv: IvMode,
}

impl SectorCipher {
    /// Checks a cipher spec (`aes-xts-plain64`, `aes-cbc-essiv:sha256`) and the key size.
    pub fn check_spec(spec: &str, key_len: usize) -> Result<()> {
        // No supported cipher takes more than 64 bytes of key: refuse a hostile length
        // before allocating a key of that size.
        if key_len > 64 {
            return Err(Error::unsupported(format!(
                "LUKS cipher {spec:?} with a {key_len}-byte key"
            )));
        }
        Self::new(spec, &vec![0u8; key_len]).map(|_| ())
    }

    /// Keys the cipher named by `spec` with `key`.
    pub fn new(spec: &str, key: &[u8]) -> Result<SectorCipher> {
        let unsupported = || {
            Error::unsupported(format!(
                "LUKS cipher {spec:?} with a {}-byte key",
                key.len()
            ))
        };
        let (cipher, mode) = spec.split_once('-').ok_or_else(unsupported)?;
        if cipher != "aes" {
            return Err(unsupported());
        }
        let (chain, iv) = mode.split_once('-').ok_or_else(unsupported)?;
        let iv = match iv {
            "plain64" => IvMode::Plain64,
            "plain" => IvMode::Plain,
            "essiv:sha256" => IvMode::EssivSha256,
            _ => return Err(unsupported()),
        };
        let mode =
            match (chain, iv, key.len()) {
                ("xts", IvMode::Plain64 | IvMode::Plain, 32) => Mode::Xts128(Box::new(
                    Xts128::new(Aes128::new(key[..16].into()), Aes128::new(key[16..].into())),
                )),
                ("xts", IvMode::Plain64 | IvMode::Plain, 64) => Mode::Xts256(Box::new(
                    Xts128::new(Aes256::new(key[..32].into()), Aes256::new(key[32..].into())),
                )),
                ("cbc", _, 16 | 24 | 32) => {
                    let essiv = (iv == IvMode::EssivSha256)
                        .then(|| Box::new(Aes256::new(&sha2::Sha256::digest(key))));
                    Mode::Cbc {
                        key: Zeroizing::new(key.to_vec()),
                        essiv,
                    }
                }
                _ => return Err(unsupported()),
            };
        Ok(SectorCipher { mode, iv })
    }

    fn iv(&self, sector: u64) -> [u8; 16] {
        let n = if self.iv == IvMode::Plain {
            sector & 0xffff_ffff
        } else {
            sector
        };
        let mut iv = [0u8; 16];
        iv[..8].copy_from_slice(&n.to_le_bytes());
        iv
    }

    /// Decrypts `buf`, made of `sector_size`-byte sectors; the first one's IV is `first`,
    /// each next one's `sector_size / 512` more.
    pub fn decrypt(&self, buf: &mut [u8], sector_size: usize, first: u64) -> Result<()> {
        self.crypt(buf, sector_size, first, false)
    }

    /// Encrypts `buf`, with IVs as [`SectorCipher::decrypt`] counts them.
    pub fn encrypt(&self, buf: &mut [u8], sector_size: usize, first: u64) -> Result<()> {
        self.crypt(buf, sector_size, first, true)
    }

    fn crypt(&self, buf: &mut [u8], sector_size: usize, first: u64, enc: bool) -> Result<()> {
        if sector_size == 0 || sector_size % 16 != 0 || buf.len() % sector_size != 0 {
            return Err(Error::invalid("LUKS sectors are not whole cipher blocks"));
        }
        for (i, sector) in buf.chunks_exact_mut(sector_size).enumerate() {
            let n = first + (i * sector_size / 512) as u64;
            match &self.mode {
                Mode::Xts128(x) => self.xts(x.as_ref(), sector, n, enc),
                Mode::Xts256(x) => self.xts(x.as_ref(), sector, n, enc),
                Mode::Cbc { key, essiv } => {
                    let mut v = self.iv(n);
                    if let Some(essiv) = essiv {
                        essiv.encrypt_block((&mut v).into());
                    }
                    cbc_crypt(key, &v, sector, enc)?;
                }
            }
        }
        Ok(())
    }

    fn xts<C>(&self, x: &Xts128<C>, sector: &mut [u8], n: u64, enc: bool)
    where
        C: aes::cipher::BlockCipher
            + BlockEncrypt
            + aes::cipher::BlockDecrypt
            + aes::cipher::BlockSizeUser<BlockSize = aes::cipher::consts::U16>,
    {
        let tweak = self.iv(n);
        if enc {
            x.encrypt_sector(sector, tweak);
        } else {
            x.decrypt_sector(sector, tweak);
        }
    }
}

fn cbc_crypt(key: &[u8], iv: &[u8; 16], data: &mut [u8], enc: bool) -> Result<()> {
    use aes::cipher::block_padding::NoPadding;
    let len = data.len();
    macro_rules! run {
        ($aes:ty) => {
            if enc {
                cbc::Encryptor::<$aes>::new(key.into(), iv.into())
                    .encrypt_padded_mut::<NoPadding>(data, len)
                    .map(|_| ())
                    .map_err(|_| Error::invalid("CBC data is not whole blocks"))
            } else {
                cbc::Decryptor::<$aes>::new(key.into(), iv.into())
                    .decrypt_padded_mut::<NoPadding>(data)
                    .map(|_| ())
                    .map_err(|_| Error::invalid("CBC data is not whole blocks"))
            }
        };
    }
    match key.len() {
        16 => run!(Aes128),
        24 => run!(Aes192),
        32 => run!(Aes256),
        n => Err(Error::corrupt(format!("AES key of {n} bytes"))),
    }
}
