//! `imgblk mount` / `imgblk umount`: a file system inside an image mounted in one step —
//! attach the piece, mount it with safe options — and undone in one step.

use super::pick::{choose, fs_type};
use super::piece::PieceArgs;
use super::EXIT_OK;
use crate::error::{Error, ErrorKind, Result};
use crate::image::{open_image, DiskImage, OpenOptions};
use crate::layout::{discover, ContentKind, NodeKind};
use crate::ublk::device;
use std::path::PathBuf;
use std::process::Command;
use std::sync::Arc;

/// Mount a file system inside an image: attach the piece and mount it, in one step.
///
/// Read-only by default, with options that never write, even to replay a journal: ext4
/// is mounted `ro,noload`, xfs `ro,norecovery`, btrfs `ro,rescue=nologreplay`, NTFS
/// through ntfs3 (or ntfs-3g). With --rw the file system is mounted read-write and a
/// journal is replayed. `imgblk umount MOUNTPOINT` unmounts, flushes and detaches.
#[derive(Debug, clap::Args)]
#[command(after_help = "Examples:\n  imgblk mount guest.qcow2 --part 1 /mnt\n  \
imgblk mount guest.qcow2 --lv vg0/root /mnt\n  imgblk mount --auto guest.vmdk /mnt\n  imgblk umount /mnt")]
pub struct MountArgs {
    /// The image(s), then the mount point last.
    #[arg(required = true, num_args = 2.., value_name = "IMAGE... MOUNTPOINT")]
    paths: Vec<PathBuf>,
    #[command(flatten)]
    piece: PieceArgs,
    /// Pick the guest's root file system (or the only one), or list the choices.
    #[arg(long, conflicts_with_all = ["part", "lv"])]
    auto: bool,
    /// Mount read-write (the image must not be in use by another writer).
    #[arg(long)]
    rw: bool,
    /// Image format; detected when omitted.
    #[arg(short, long, value_enum)]
    format: Option<crate::image::Format>,
}

/// Unmount what `imgblk mount` mounted, flush, and detach its device.
#[derive(Debug, clap::Args)]
#[command(after_help = "Examples:\n  imgblk umount /mnt")]
pub struct UmountArgs {
    /// The mount point.
    mountpoint: PathBuf,
}

/// Runs `imgblk mount`.
pub fn run_mount(args: MountArgs) -> Result<i32> {
    let (mountpoint, images) = args
        .paths
        .split_last()
        .ok_or_else(|| Error::invalid("no mount point"))?;
    if !mountpoint.is_dir() {
        return Err(
            Error::new(ErrorKind::NotFound, "mount point is not a directory").with_path(mountpoint),
        );
    }
    let options = OpenOptions {
        format: args.format,
        ..OpenOptions::default()
    };
    let mut opened: Vec<Arc<dyn DiskImage>> = Vec::new();
    for path in images {
        opened.push(Arc::from(open_image(path, &options)?));
    }
    let layout = discover(&opened);
    drop(opened); // release the read locks before the daemon takes its own
    let node = choose(&layout, &args.piece, args.auto)?;
    let fs = node
        .content
        .as_ref()
        .map(|c| c.kind)
        .filter(|k| fs_type(*k).is_some())
        .ok_or_else(|| {
            let what = node
                .content
                .as_ref()
                .map_or("nothing recognisable", |c| c.kind.as_str());
            Error::new(
                ErrorKind::Unsupported,
                format!(
                    "{} holds {what}, not a file system imgblk can mount",
                    node.name
                ),
            )
        })?;

    let mut attach = Command::new(super::own_exe()?);
    attach.args(["attach", "--json"]).args(images);
    if let Some(format) = args.format {
        attach.args(["--format", &format.to_string()]);
    }
    if args.rw {
        attach.arg("--rw");
    }
    match node.kind {
        NodeKind::LogicalVolume => {
            attach.args(["--lv", &node.name]);
        }
        NodeKind::Partition => {
            attach.args(["--part", node.name.trim_start_matches("disk0p")]);
        }
        _ => {}
    }
    let out = attach
        .output()
        .map_err(|e| Error::io("cannot run imgblk attach", e))?;
    if !out.status.success() {
        return Err(Error::new(
            ErrorKind::Io,
            String::from_utf8_lossy(&out.stderr)
                .trim()
                .trim_start_matches("imgblk: ")
                .to_string(),
        ));
    }
    let record: serde_json::Value = serde_json::from_slice(&out.stdout)
        .map_err(|e| Error::invalid(format!("attach printed no JSON: {e}")))?;
    let device = record["device"].as_str().unwrap_or_default().to_string();

    let (fstype, mount_options) = mount_options(fs, args.rw);
    let status = Command::new("mount")
        .args(["-t", &fstype, "-o", &mount_options, &device])
        .arg(mountpoint)
        .output()
        .map_err(|e| Error::io("cannot run mount", e))?;
    if !status.status.success() {
        let detach = Command::new(super::own_exe()?)
            .args(["detach", &device])
            .status();
        if !matches!(detach, Ok(s) if s.success()) {
            tracing::warn!("could not detach {device} after the failed mount");
        }
        let why = String::from_utf8_lossy(&status.stderr).trim().to_string();
        let hint = if args.rw {
            "run `imgblk fsck --repair` on the image first"
        } else {
            "the file system may need a repair (imgblk fsck) or a journal replay (--rw)"
        };
        return Err(Error::new(
            ErrorKind::Io,
            format!("mounting {} ({fstype}) failed: {why}; {hint}", node.name),
        ));
    }
    println!(
        "{} ({}, {}) mounted on {} via {device}",
        node.name,
        fs.as_str(),
        if args.rw { "rw" } else { "ro" },
        mountpoint.display()
    );
    Ok(EXIT_OK)
}

/// Runs `imgblk umount`.
pub fn run_umount(args: UmountArgs) -> Result<i32> {
    let target = std::fs::canonicalize(&args.mountpoint)
        .map_err(|e| Error::io("no such mount point", e).with_path(&args.mountpoint))?;
    let mount = device::ublk_mounts()
        .into_iter()
        .rev()
        .find(|m| m.target == target)
        .ok_or_else(|| {
            Error::new(ErrorKind::NotFound, "no imgblk device is mounted there").with_path(&target)
        })?;
    let status = Command::new("umount")
        .arg(&target)
        .status()
        .map_err(|e| Error::io("cannot run umount", e))?;
    if !status.success() {
        return Err(Error::new(ErrorKind::Busy, "umount failed (in use?)").with_path(&target));
    }
    let id = mount.id;
    let whole = format!("/dev/ublkb{id}");
    let detached = Command::new(super::own_exe()?)
        .args(["detach", &whole])
        .status()
        .map_err(|e| Error::io("cannot run imgblk detach", e))?;
    if !detached.success() {
        return Err(Error::new(
            ErrorKind::Busy,
            format!("unmounted, but {whole} could not be detached"),
        ));
    }
    println!("unmounted {} and detached {whole}", target.display());
    Ok(EXIT_OK)
}

/// Type and options for `mount`: read-only never writes, not even a journal replay.
fn mount_options(kind: ContentKind, rw: bool) -> (String, String) {
    let fstype = fs_type(kind).unwrap_or("auto");
    let fstype = match fstype {
        "ntfs" if kernel_knows("ntfs3") => "ntfs3",
        "ntfs" => "ntfs-3g",
        other => {
            kernel_knows(other);
            other
        }
    };
    let options = match (rw, fstype) {
        (true, _) => "rw",
        (false, "ext4") => "ro,noload",
        (false, "xfs") => "ro,norecovery",
        (false, "btrfs") => "ro,rescue=nologreplay",
        (false, _) => "ro",
    };
    (fstype.to_string(), options.to_string())
}

/// Whether the kernel has file system `fstype`, loading its module if needed (the kernel's
/// own module autoloading is not available everywhere, e.g. in minimal VMs).
fn kernel_knows(fstype: &str) -> bool {
    let known = || {
        std::fs::read_to_string("/proc/filesystems").is_ok_and(|t| {
            t.lines()
                .any(|l| l.split_whitespace().last() == Some(fstype))
        })
    };
    if known() {
        return true;
    }
    let _ = Command::new("modprobe").args(["-q", fstype]).status();
    known()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn read_only_options_never_replay() {
        assert_eq!(mount_options(ContentKind::Ext4, false).1, "ro,noload");
        assert_eq!(
            mount_options(ContentKind::Ext3, false),
            ("ext4".into(), "ro,noload".into())
        );
        assert_eq!(mount_options(ContentKind::Xfs, false).1, "ro,norecovery");
        assert_eq!(mount_options(ContentKind::Xfs, true).1, "rw");
        assert!(fs_type(ContentKind::Swap).is_none());
    }
}
