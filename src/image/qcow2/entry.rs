//! Decoding of L1 and L2 table entries (standard, non-extended L2 entries).

use crate::error::{Error, Result};

/// Bits 9..=55 of an L1 entry: the L2 table's file offset.
pub const L1_OFFSET_MASK: u64 = 0x00ff_ffff_ffff_fe00;
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
#[inline(always)]
pub fn decode_l2(entry: u64, cluster_bits: u32, guest_offset: u64) -> Result<Cluster> {
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
