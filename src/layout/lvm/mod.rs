//! LVM2: PV labels, metadata areas, the text metadata format, and volume groups assembled
//! across PVs (partitions of one image or several images) into LV images.

pub mod label;
pub mod metadata;
pub mod model;
pub mod vg;

#[cfg(test)]
pub(crate) mod tests;

pub use label::{find_label, read_metadata, DiskArea, MetadataCopy, PvLabel};
pub use model::{LvMeta, PvMeta, SegmentMeta, VgMetadata};
pub use vg::{assemble, AssembledVg, FoundPv, Member};
