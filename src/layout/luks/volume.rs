//! [`LuksVolume`]: the decrypted view of a LUKS volume.

use super::crypto::{af_merge, argon2, SectorCipher};
use super::{keycache, read_metadata, wrong_key, Kdf, Keyslot, Metadata, SECTOR};
use crate::error::{Error, Result};
use crate::image::io::{read_at, write_at, write_zeroes_by_writing, writer_of};
use crate::image::{
    check_range, ChainEntry, DiskImage, Extent, Format, ImageWrite, TransformRead, WritePlan,
};
use std::sync::{Arc, Mutex};
use zeroize::Zeroizing;

/// Largest request decrypted in one piece; longer ones are cut. A multiple of every
/// sector size.
const CHUNK: usize = 1 << 20;
/// Locks that serialize the read-modify-write of partly written sectors; a sector takes
/// the lock of its number modulo this.
const RMW_STRIPES: usize = 64;

/// A LUKS volume unlocked with its master key: reads decrypt the inner image's bytes,
/// writes (when the inner image is writable) encrypt them.
pub struct LuksVolume {
    inner: Arc<dyn DiskImage>,
    cipher: SectorCipher,
    offset: u64,
    size: u64,
    sector_size: u64,
    iv_tweak: u64,
    meta: Metadata,
    /// Held across the read-modify-write of a sector that a write covers only in part,
    /// so that two writes to different parts of one sector cannot lose each other's
    /// bytes. Writes of whole sectors take no lock.
    rmw_locks: Box<[Mutex<()>]>,
}

impl LuksVolume {
    /// Unlocks `inner` (a LUKS1 or LUKS2 device) with `key`: a passphrase's bytes or a
    /// key file's contents. A key that opens no slot is an error of kind `Permission`.
    pub fn open(inner: Arc<dyn DiskImage>, key: &[u8]) -> Result<LuksVolume> {
        if key.len() > super::MAX_KEY_LEN {
            return Err(Error::invalid("LUKS key file larger than 8 MiB"));
        }
        let meta = read_metadata(&*inner)?;
        if let Some(master) = keycache::lookup(&meta, key) {
            return Self::with_master_key(inner, meta, &master);
        }
        for slot in &meta.keyslots {
            if let Some(master) = try_slot(&*inner, &meta, slot, key)? {
                keycache::store(&meta, key, &master);
                return Self::with_master_key(inner, meta, &master);
            }
        }
        Err(wrong_key())
    }

    /// The volume decrypted with a known master key (checked against no digest).
    pub fn with_master_key(
        inner: Arc<dyn DiskImage>,
        meta: Metadata,
        master: &[u8],
    ) -> Result<LuksVolume> {
        let seg = &meta.segment;
        let cipher = SectorCipher::new(&seg.cipher, master)?;
        check_range(seg.offset, seg.size, inner.virtual_size())?;
        Ok(LuksVolume {
            inner,
            cipher,
            offset: seg.offset,
            size: seg.size,
            sector_size: u64::from(seg.sector_size),
            iv_tweak: seg.iv_tweak,
            meta,
            rmw_locks: (0..RMW_STRIPES).map(|_| Mutex::new(())).collect(),
        })
    }

    /// The header's contents.
    pub fn metadata(&self) -> &Metadata {
        &self.meta
    }

    /// IV of the data sector starting `rel` bytes into the segment: LUKS counts IVs in
    /// 512-byte units whatever the sector size (dm-crypt without `iv_large_sectors`).
    fn iv_sector(&self, rel: u64) -> u64 {
        rel / SECTOR + self.iv_tweak
    }

    /// Cuts a request of `len` bytes at `offset` into pieces of at most [`CHUNK`] bytes
    /// and calls `f(done, n, start, aligned)` for each: the piece is bytes `done..done + n`
    /// of the request, inside the whole sectors `start..start + aligned` of the volume.
    fn pieces(
        &self,
        offset: u64,
        len: usize,
        mut f: impl FnMut(usize, usize, u64, usize) -> Result<()>,
    ) -> Result<()> {
        let ss = self.sector_size;
        let mut done = 0;
        while done < len {
            let n = (len - done).min(CHUNK);
            let pos = offset + done as u64;
            let start = pos / ss * ss;
            let end = (pos + n as u64).div_ceil(ss) * ss;
            f(done, n, start, (end - start) as usize)?;
            done += n;
        }
        Ok(())
    }

    fn read_aligned(&self, start: u64, buf: &mut [u8]) -> Result<()> {
        read_at(&*self.inner, buf, self.offset + start)?;
        self.decrypt_aligned(start, buf)
    }

    /// Decrypts `buf`, the ciphertext of whole sectors from `start` (a sector boundary) on.
    fn decrypt_aligned(&self, start: u64, buf: &mut [u8]) -> Result<()> {
        self.cipher
            .decrypt(buf, self.sector_size as usize, self.iv_sector(start))
    }

    /// Encrypts `buf` (whole sectors) in place and writes it at `start` of the volume.
    fn write_aligned(&self, start: u64, buf: &mut [u8]) -> Result<()> {
        self.cipher
            .encrypt(buf, self.sector_size as usize, self.iv_sector(start))?;
        write_at(&*self.inner, buf, self.offset + start)
    }

    /// Writes `part` at byte `skip` of the sector at `start`, keeping the rest of it:
    /// decrypts the sector, patches it and encrypts it again, under the sector's lock.
    fn patch_sector(&self, start: u64, skip: usize, part: &[u8]) -> Result<()> {
        let stripe = (start / self.sector_size) as usize % self.rmw_locks.len();
        let _guard = self.rmw_locks[stripe]
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        let mut sector = vec![0u8; self.sector_size as usize];
        self.read_aligned(start, &mut sector)?;
        sector[skip..skip + part.len()].copy_from_slice(part);
        self.write_aligned(start, &mut sector)
    }
}

/// Tries one key slot; returns the master key if `key` opens it and the digest agrees.
fn try_slot(
    inner: &dyn DiskImage,
    meta: &Metadata,
    slot: &Keyslot,
    key: &[u8],
) -> Result<Option<Zeroizing<Vec<u8>>>> {
    let mut derived = Zeroizing::new(vec![0u8; slot.area_key_len]);
    match &slot.kdf {
        Kdf::Pbkdf2 {
            hash,
            iterations,
            salt,
        } => hash.pbkdf2(key, salt, *iterations, &mut derived)?,
        Kdf::Argon2 {
            id,
            time,
            memory_kib,
            lanes,
            salt,
        } => argon2(*id, key, salt, *time, *memory_kib, *lanes, &mut derived)?,
    }
    let af_len = slot.key_len * slot.stripes as usize;
    let mut material = Zeroizing::new(vec![
        0u8;
        (af_len as u64).div_ceil(SECTOR) as usize
            * SECTOR as usize
    ]);
    if material.len() as u64 > slot.area_size {
        return Err(Error::corrupt(format!(
            "LUKS key slot {} area too small",
            slot.id
        )));
    }
    check_range(
        slot.area_offset,
        material.len() as u64,
        inner.virtual_size(),
    )?;
    read_at(inner, &mut material, slot.area_offset)?;
    SectorCipher::new(&slot.area_cipher, &derived)?.decrypt(&mut material, SECTOR as usize, 0)?;
    let master = Zeroizing::new(af_merge(
        &material,
        slot.key_len,
        slot.stripes as usize,
        slot.af_hash,
    )?);
    for d in meta
        .digests
        .iter()
        .filter(|d| d.keyslots.contains(&slot.id))
    {
        if d.digest.is_empty() || d.digest.len() > 64 {
            continue;
        }
        let mut out = vec![0u8; d.digest.len()];
        d.hash.pbkdf2(&master, &d.salt, d.iterations, &mut out)?;
        if out == d.digest {
            return Ok(Some(master));
        }
    }
    Ok(None)
}

impl DiskImage for LuksVolume {
    fn format(&self) -> Format {
        self.inner.format()
    }

    fn virtual_size(&self) -> u64 {
        self.size
    }

    fn map<'a>(&'a self, offset: u64, len: u64, out: &mut Vec<Extent<'a>>) -> Result<()> {
        check_range(offset, len, self.size)?;
        if len > 0 {
            out.push(Extent::transformed(self, offset, len));
        }
        Ok(())
    }

    fn logical_block_size(&self) -> u32 {
        self.sector_size as u32
    }

    fn chain(&self) -> Vec<ChainEntry> {
        self.inner.chain()
    }

    fn writer(&self) -> Option<&dyn ImageWrite> {
        self.inner.writer().map(|_| self as &dyn ImageWrite)
    }

    /// Sector for sector: plaintext sector `n` is ciphertext sector `n` of the payload.
    fn source_ranges<'a>(
        &'a self,
        offset: u64,
        len: u64,
        f: &mut dyn FnMut(&'a dyn DiskImage, u64, u64) -> Result<()>,
    ) -> Result<bool> {
        check_range(offset, len, self.size)?;
        f(&*self.inner, self.offset + offset, len)?;
        Ok(true)
    }
}

impl ImageWrite for LuksVolume {
    fn map_write<'a>(
        &'a self,
        offset: u64,
        len: u64,
        _out: &mut Vec<Extent<'a>>,
    ) -> Result<WritePlan> {
        check_range(offset, len, self.size)?;
        if self.inner.writer().is_none() {
            return Err(Error::new(
                crate::error::ErrorKind::ReadOnly,
                "LUKS volume is open read-only",
            ));
        }
        Ok(WritePlan::Synchronous)
    }

    /// Encrypts whole sectors without a lock; a sector written only in part (at either
    /// end of an unaligned request, which the ublk device never sends since its logical
    /// block is the sector, but library callers may) is read, patched and written back
    /// under its lock ([`Self::patch_sector`]).
    fn write_sync(&self, offset: u64, buf: &[u8]) -> Result<()> {
        check_range(offset, buf.len() as u64, self.size)?;
        let ss = self.sector_size as usize;
        let mut done = 0;
        while done < buf.len() {
            let pos = offset + done as u64;
            let skip = (pos % ss as u64) as usize;
            let left = buf.len() - done;
            let n = if skip != 0 || left < ss {
                let n = (ss - skip).min(left);
                self.patch_sector(pos - skip as u64, skip, &buf[done..done + n])?;
                n
            } else {
                let n = (left / ss * ss).min(CHUNK);
                self.write_aligned(pos, &mut buf[done..done + n].to_vec())?;
                n
            };
            done += n;
        }
        Ok(())
    }

    fn flush(&self) -> Result<()> {
        writer_of(&*self.inner)?.flush()
    }

    fn write_zeroes(&self, offset: u64, len: u64) -> Result<()> {
        write_zeroes_by_writing(self, offset, len)
    }
}

impl TransformRead for LuksVolume {
    fn read_transformed(&self, offset: u64, buf: &mut [u8]) -> Result<()> {
        check_range(offset, buf.len() as u64, self.size)?;
        self.pieces(offset, buf.len(), |done, n, start, len| {
            let out = &mut buf[done..done + n];
            if len == n {
                return self.read_aligned(start, out);
            }
            let mut tmp = vec![0u8; len];
            self.read_aligned(start, &mut tmp)?;
            let skip = (offset + done as u64 - start) as usize;
            out.copy_from_slice(&tmp[skip..skip + n]);
            Ok(())
        })
    }

    /// Whole sectors only: plaintext sector `n` is ciphertext sector `n` of the payload,
    /// wherever the inner image keeps it.
    fn map_stored<'a>(
        &'a self,
        offset: u64,
        len: u64,
        out: &mut Vec<Extent<'a>>,
    ) -> Result<Option<u64>> {
        check_range(offset, len, self.size)?;
        let ss = self.sector_size;
        if offset % ss != 0 || len % ss != 0 {
            return Ok(None);
        }
        self.inner.map(self.offset + offset, len, out)?;
        Ok(Some(ss))
    }

    fn transform_in_place(&self, offset: u64, buf: &mut [u8]) -> Result<()> {
        check_range(offset, buf.len() as u64, self.size)?;
        if offset % self.sector_size != 0 {
            return Err(Error::invalid(format!(
                "LUKS decryption at byte {offset}, not on a {}-byte sector boundary",
                self.sector_size
            )));
        }
        self.decrypt_aligned(offset, buf)
    }
}
