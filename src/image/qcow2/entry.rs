//! Decoding of L1 and L2 table entries, standard and extended (with subclusters).

use crate::error::{Error, Result};

/// Bits 9..=55 of an L1 entry: the L2 table's file offset.
pub const L1_OFFSET_MASK: u64 = 0x00ff_ffff_ffff_fe00;
/// Bits 0..=8 and 56..=62 of an L1 entry: reserved, must be zero (QEMU's
/// `L1E_RESERVED_MASK`; `qemu-img check` counts them as corruption).
pub const L1_RESERVED: u64 = 0x7f00_0000_0000_01ff;
/// Bits 9..=55 of a standard L2 entry: the data cluster's file offset.
pub const L2_OFFSET_MASK: u64 = 0x00ff_ffff_ffff_fe00;
/// L2 entry bit 62: the cluster is compressed.
pub const L2_COMPRESSED: u64 = 1 << 62;
/// L2 entry bit 0 (standard clusters, version 3): the cluster reads as zeroes.
pub const L2_ZERO: u64 = 1;
/// Compressed data is counted in 512-byte sectors.
const SECTOR: u64 = 512;

/// What one L2 entry says about its guest cluster.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cluster {
    /// Not allocated here: read from the backing file, or zeroes.
    Unallocated,
    /// Reads as zeroes, whatever the backing file holds.
    Zero,
    /// Stored as is in the cluster starting at this file offset.
    Data(u64),
    /// Stored compressed.
    Compressed {
        /// File offset where the compressed bytes start (not aligned).
        offset: u64,
        /// Upper bound of the compressed length: the sectors it spans, less the part of
        /// the first sector before `offset`.
        stored_len: u64,
    },
}

/// Decodes the L2 entry of the guest cluster starting at `guest_offset` in an image with
/// `cluster_bits`. A standard cluster's offset must be cluster aligned.
///
/// QEMU honours the zero flag in version 2 images too (where the spec calls the bit
/// reserved), and so do we.
pub fn decode_l2(entry: u64, cluster_bits: u32, guest_offset: u64) -> Result<Cluster> {
    decode_l2_in(entry, cluster_bits, guest_offset, false)
}

/// L1/L2 entry bit 63 (COPIED): the cluster's refcount is exactly 1.
const COPIED: u64 = 1 << 63;

/// [`decode_l2`] for an image whose data is in an external data file (`data_file`), where
/// host offset 0 is a valid data cluster when the COPIED bit says it is allocated (as
/// QEMU's `qcow2_get_cluster_type`).
#[inline(always)]
pub fn decode_l2_in(
    entry: u64,
    cluster_bits: u32,
    guest_offset: u64,
    data_file: bool,
) -> Result<Cluster> {
    if entry & L2_COMPRESSED != 0 {
        // x = 62 - (cluster_bits - 8) bits of offset, then the count of extra sectors.
        let shift = 62 - (cluster_bits - 8);
        let offset = entry & ((1u64 << shift) - 1);
        let sectors = ((entry >> shift) & ((1u64 << (cluster_bits - 8)) - 1)) + 1;
        return Ok(Cluster::Compressed {
            offset,
            stored_len: sectors * SECTOR - (offset % SECTOR),
        });
    }
    if entry & L2_ZERO != 0 {
        return Ok(Cluster::Zero);
    }
    let host = entry & L2_OFFSET_MASK;
    if host == 0 {
        if data_file && entry & COPIED != 0 {
            return Ok(Cluster::Data(0));
        }
        return Ok(Cluster::Unallocated);
    }
    if host & ((1u64 << cluster_bits) - 1) != 0 {
        return Err(Error::corrupt(format!(
            "qcow2 L2 entry for guest offset {guest_offset:#x} points at host offset {host:#x}, \
             which is not cluster aligned"
        )));
    }
    Ok(Cluster::Data(host))
}

/// Subclusters per cluster with extended L2 entries.
pub const SUBCLUSTERS: u32 = 32;

/// What an extended L2 entry (`entry`, `bitmap`) says about subcluster `index` (0..32)
/// of the guest cluster at `guest_offset`: `Data(host)` is the *cluster's* host offset
/// (the caller adds the subcluster's offset), `Compressed` covers the whole cluster.
///
/// As QEMU's `qcow2_get_subcluster_type`: bit 0 of the entry is not a zero flag here; a
/// compressed cluster must have an empty bitmap; a subcluster cannot be both allocated
/// (bitmap bits 0..31) and zero (bits 32..63); without a host offset none may be allocated.
/// A subcluster neither allocated nor zero is unallocated (read from the backing file),
/// even in an allocated cluster.
pub fn decode_extended_l2(
    entry: u64,
    bitmap: u64,
    index: u32,
    cluster_bits: u32,
    guest_offset: u64,
    data_file: bool,
) -> Result<Cluster> {
    let invalid = |what: &str| {
        Err(Error::corrupt(format!(
            "qcow2 extended L2 entry for guest offset {guest_offset:#x} (subcluster bitmap \
             {bitmap:#018x}) {what}"
        )))
    };
    let entry = if entry & L2_COMPRESSED != 0 {
        if bitmap != 0 {
            return invalid("is compressed but has subcluster bits set");
        }
        return decode_l2(entry, cluster_bits, guest_offset);
    } else {
        entry & !L2_ZERO
    };
    let alloc = bitmap as u32;
    let zero = (bitmap >> 32) as u32;
    if alloc & zero != 0 {
        return invalid("has subclusters both allocated and zero");
    }
    let bit = 1u32 << (index % SUBCLUSTERS);
    match decode_l2_in(entry, cluster_bits, guest_offset, data_file)? {
        Cluster::Data(_) | Cluster::Unallocated if zero & bit != 0 => Ok(Cluster::Zero),
        Cluster::Unallocated if alloc != 0 => {
            invalid("has allocated subclusters but no host offset")
        }
        Cluster::Data(host) if alloc & bit != 0 => Ok(Cluster::Data(host)),
        _ => Ok(Cluster::Unallocated),
    }
}

/// Decodes an L1 entry: the file offset of its L2 table, or `None` if it has none.
/// The offset must be cluster aligned.
pub fn decode_l1(entry: u64, cluster_bits: u32, l1_index: usize) -> Result<Option<u64>> {
    let host = entry & L1_OFFSET_MASK;
    if host == 0 {
        return Ok(None);
    }
    if host & ((1u64 << cluster_bits) - 1) != 0 {
        return Err(Error::corrupt(format!(
            "qcow2 L1 entry {l1_index} points at L2 table offset {host:#x}, which is not cluster aligned"
        )));
    }
    Ok(Some(host))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn standard_entries() {
        assert_eq!(decode_l2(0, 16, 0).unwrap(), Cluster::Unallocated);
        assert_eq!(decode_l2(1 << 63, 16, 0).unwrap(), Cluster::Unallocated);
        assert_eq!(
            decode_l2((1 << 63) | 0x5_0000, 16, 0).unwrap(),
            Cluster::Data(0x5_0000)
        );
        assert_eq!(
            decode_l2(0x5_0000 | 1, 16, 0).unwrap(),
            Cluster::Zero,
            "preallocated zero"
        );
        assert_eq!(decode_l2(1, 16, 0).unwrap(), Cluster::Zero);
    }

    #[test]
    fn unaligned_data_offset_names_guest_offset() {
        let err = decode_l2(0x5_0200, 16, 0x1234_0000).unwrap_err();
        let msg = err.to_string();
        assert!(
            msg.contains("0x12340000") && msg.contains("0x50200"),
            "{msg}"
        );
        // With 512-byte clusters every offset the mask keeps is aligned.
        assert_eq!(decode_l2(0x5_0200, 9, 0).unwrap(), Cluster::Data(0x5_0200));
    }

    #[test]
    fn offset_zero_in_a_data_file() {
        assert_eq!(decode_l2(COPIED, 16, 0).unwrap(), Cluster::Unallocated);
        assert_eq!(decode_l2_in(COPIED, 16, 0, true).unwrap(), Cluster::Data(0));
        assert_eq!(decode_l2_in(0, 16, 0, true).unwrap(), Cluster::Unallocated);
        assert_eq!(
            decode_extended_l2(COPIED, 1, 0, 16, 0, true).unwrap(),
            Cluster::Data(0)
        );
    }

    #[test]
    fn compressed_entries() {
        // 64 KiB clusters: x = 54; offset 0x12345 (0x145 into its sector), 3 extra sectors.
        let entry = L2_COMPRESSED | (3u64 << 54) | 0x12345;
        assert_eq!(
            decode_l2(entry, 16, 0).unwrap(),
            Cluster::Compressed {
                offset: 0x12345,
                stored_len: 4 * 512 - 0x145
            }
        );
        // 2 MiB clusters: x = 49, 13 bits of sector count, all set.
        let entry = L2_COMPRESSED | (0x1fff << 49) | 0x200;
        assert_eq!(
            decode_l2(entry, 21, 0).unwrap(),
            Cluster::Compressed {
                offset: 0x200,
                stored_len: 0x2000 * 512
            }
        );
        // 512-byte clusters: x = 61, one bit of count.
        let entry = L2_COMPRESSED | (1 << 61) | 0x3ff;
        assert_eq!(
            decode_l2(entry, 9, 0).unwrap(),
            Cluster::Compressed {
                offset: 0x3ff,
                stored_len: 2 * 512 - 0x1ff
            }
        );
    }

    #[test]
    fn extended_entries() {
        let host = (1u64 << 63) | 0x5_0000;
        let bitmap = 0b0110 | (0b1000u64 << 32); // 1, 2 allocated; 3 zero
        let sub = |i| decode_extended_l2(host, bitmap, i, 16, 0, false).unwrap();
        assert_eq!(
            sub(0),
            Cluster::Unallocated,
            "allocated cluster, clear bits"
        );
        assert_eq!(sub(1), Cluster::Data(0x5_0000));
        assert_eq!(sub(3), Cluster::Zero);
        assert_eq!(
            decode_extended_l2(1, 0, 0, 16, 0, false).unwrap(),
            Cluster::Unallocated,
            "bit 0 is no zero flag"
        );
        assert_eq!(
            decode_extended_l2(0, 1 << 40, 8, 16, 0, false).unwrap(),
            Cluster::Zero,
            "zero without a host offset"
        );
        let err = |entry, bitmap| {
            decode_extended_l2(entry, bitmap, 0, 16, 0x7_0000, false)
                .unwrap_err()
                .to_string()
        };
        assert!(err(host, 1 | (1 << 32)).contains("both"));
        assert!(err(0, 1).contains("no host offset"));
        assert!(err(L2_COMPRESSED | 0x1234, 1).contains("compressed"));
        assert!(err(0x5_0200, 2).contains("0x70000"), "unaligned");
    }

    #[test]
    fn l1_entries() {
        assert_eq!(decode_l1(0, 16, 0).unwrap(), None);
        assert_eq!(
            decode_l1((1 << 63) | 0x3_0000, 16, 0).unwrap(),
            Some(0x3_0000)
        );
        let msg = decode_l1(0x3_0200, 16, 7).unwrap_err().to_string();
        assert!(msg.contains("L1 entry 7"), "{msg}");
    }
}
