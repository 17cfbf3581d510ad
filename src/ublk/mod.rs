//! ublk device plumbing on libublk: creating `/dev/ublkbN` for a [`crate::image::DiskImage`],
//! serving it from per-queue io_uring threads, and keeping records for `list`/`detach`.

pub mod daemon;
pub mod data;
pub mod device;
pub mod kernel;
pub mod offload;
pub mod queue;
pub mod ratelimit;
pub mod registry;
