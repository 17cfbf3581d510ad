//! Helpers shared by the VMDK, VHD, VHDX and VDI readers: bounds-checked field access and
//! checksums ([`bytes`]), lazily loaded lookup tables ([`lazy`]), the block walker that turns
//! a block map into extents ([`walk`]) and parent (backing) file handling ([`chain`]).

pub mod bytes;
pub mod chain;
pub mod lazy;
#[cfg(test)]
pub mod testutil;
pub mod walk;
