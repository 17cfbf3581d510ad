//! Kernel tests: the `imgblk` binary against a real ublk driver.
//!
//! Every test here is `#[ignore]`d, so a plain `cargo test` (on any machine) skips them.
//! `ci/test` runs them with `--ignored --test-threads=1`: on the host when it has
//! `/dev/ublk-control` (or can `modprobe ublk_drv`), else inside a throwaway VM (`ci/vm`).
//! They need root, and the tools `ci/install-deps` installs (qemu-img, sfdisk, mkfs.ext4,
//! debugfs, e2fsck, blockdev, mount).
//!
//! Run one by hand on a machine with ublk:
//! `cargo test --test kernel -- --ignored --test-threads=1 qcow2_backing_chain`
//!
//! Fixtures live in a fresh folder under `$IMGBLK_SCRATCH` (the VM sets it to an ext4, as
//! imgblk opens images with O_DIRECT, which tmpfs lacks), else under /var/tmp.
//!
//! Layout: `kernel/harness.rs` has the helpers (running commands, the [`harness::Device`]
//! guard that detaches on drop, fixtures, comparisons); each other module is one area.

#[path = "kernel/harness.rs"]
mod harness;

#[path = "kernel/data_path.rs"]
mod data_path;
#[path = "kernel/errors.rs"]
mod errors;
#[path = "kernel/filesystems.rs"]
mod filesystems;
#[path = "kernel/formats.rs"]
mod formats;
#[path = "kernel/fsck.rs"]
mod fsck;
#[path = "kernel/host_inputs.rs"]
mod host_inputs;
#[path = "kernel/lifecycle.rs"]
mod lifecycle;
#[path = "kernel/luks.rs"]
mod luks;
#[path = "kernel/mount.rs"]
mod mount;
#[path = "kernel/partitions.rs"]
mod partitions;
#[path = "kernel/pieces.rs"]
mod pieces;
#[path = "kernel/qcow2_rw.rs"]
mod qcow2_rw;
#[path = "kernel/restore.rs"]
mod restore;
#[path = "kernel/safety.rs"]
mod safety;
#[path = "kernel/signals.rs"]
mod signals;
#[path = "kernel/vdisk.rs"]
mod vdisk;
