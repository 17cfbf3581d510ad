//! imgblk: virtual-disk images (raw, qcow2) as Linux block devices through ublk.
//!
//! The crate is layered the way a request flows:
//! - [`image`]: formats behind one trait, each first a *mapper* from guest ranges to host
//!   extents; no kernel dependency, usable on its own (see `examples/`).
//! - [`layout`]: partition tables, LVM volume groups and volume contents, each volume a
//!   [`image::DiskImage`] view over the image it lives in.
//! - [`ublk`]: the device plumbing on libublk; each queue carries out mapped extents on its
//!   own io_uring.
//! - [`serve`]: what a device serves (images, piece, LUKS key, overlay, shape), opening
//!   it and running its daemon; usable without the command line.
//! - [`cli`]: the `imgblk` command.

pub mod cli;
pub mod error;
pub mod files;
pub mod image;
pub mod layout;
pub mod serve;
pub mod ublk;

pub use error::{Error, ErrorKind, Result};
