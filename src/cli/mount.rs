//! `imgblk mount` / `imgblk umount`: a file system inside an image mounted in one step —
//! attach the piece, mount it with safe options — and undone in one step.

use super::piece::PieceArgs;
use super::{child, Escaped, EXIT_OK};
use crate::error::{Error, ErrorKind, Result};
use crate::image::{open_image, DiskImage, OpenOptions};
use crate::layout::{discover, ContentKind, Layout, Node, NodeKind, PieceId};
use crate::ublk::device;
use std::ffi::OsString;
use std::path::PathBuf;
use std::process::Command;
use std::sync::Arc;

/// Mount a file system inside an image: attach the piece and mount it, in one step.
///
/// Read-only by default, with options that never write, even to replay a journal: ext4
/// is mounted `ro,noload`, xfs `ro,norecovery`, btrfs `ro,rescue=nologreplay`, NTFS
/// through ntfs3 (or ntfs-3g). With --rw the file system is mounted read-write and a
/// journal is replayed. `imgblk umount MOUNTPOINT` unmounts, flushes and detaches.
///
/// The image may come from anywhere, so it is mounted `nosuid,nodev`: a setuid program or
/// a device node it holds gives no one on this host any privilege. `--noexec` also stops
/// its programs from running; `--suid` and `--dev` lift the defaults, for images you
/// trust.
#[derive(Debug, clap::Args)]
#[command(after_help = "Examples:\n  imgblk mount guest.qcow2 --part 1 /mnt\n  \
imgblk mount guest.qcow2 --lv vg0/root /mnt\n  imgblk mount --auto guest.vmdk /mnt\n  \
imgblk mount --noexec evidence.vmdk /mnt\n  imgblk umount /mnt")]
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
    #[command(flatten)]
    safety: MountSafety,
}

/// What the mounted file system may do on this host: `nosuid,nodev` unless lifted.
#[derive(Debug, clap::Args)]
pub struct MountSafety {
    /// Honour the setuid and setgid bits of the image's files (mounted nosuid without
    /// it). Only for an image you trust: its setuid-root programs become usable by anyone
    /// who reaches the mount point.
    #[arg(long)]
    suid: bool,
    /// Let device nodes in the image be opened (mounted nodev without it). Only for an
    /// image you trust: a device node in it can reach this host's disks or memory.
    #[arg(long)]
    dev: bool,
    /// Never run programs from the mounted file system (noexec).
    #[arg(long)]
    noexec: bool,
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
    let node = choose(&layout, &args)?;
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

    let mut attach_args: Vec<OsString> = Vec::new();
    if let Some(format) = args.format {
        attach_args.extend(["--format".into(), format.to_string().into()]);
    }
    if args.rw {
        attach_args.push("--rw".into());
    }
    if let Some(piece) = PieceId::of_node(&node.name) {
        attach_args.extend(piece.cli_args().map(OsString::from));
    }
    attach_args.push("--".into());
    attach_args.extend(images.iter().map(OsString::from));
    let record = child::attach(&attach_args)?;
    let device = record.device.display().to_string();

    let fstype = mount_type(fs);
    let mount_options = mount_options(fstype, args.rw, &args.safety);
    let status = Command::new("mount")
        .args(["-t", fstype, "-o", &mount_options, &device])
        .arg(mountpoint)
        .output()
        .map_err(|e| Error::io("cannot run mount", e))?;
    if !status.status.success() {
        if let Err(e) = child::detach(record.id) {
            tracing::warn!(error = %e, "could not detach {device} after the failed mount");
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
        Escaped(&node.name),
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
    child::detach(id).map_err(|e| {
        Error::new(
            e.kind(),
            format!("unmounted, but {whole} could not be detached: {e}"),
        )
    })?;
    println!("unmounted {} and detached {whole}", target.display());
    Ok(EXIT_OK)
}

/// The piece to mount: as `--part`/`--lv` say, or chosen by `--auto`.
fn choose<'a>(layout: &'a Layout, args: &MountArgs) -> Result<&'a Node> {
    if let Some(piece) = args.piece.piece() {
        crate::serve::select(layout, &piece)?;
        return layout
            .find(&piece.to_string())
            .ok_or_else(|| Error::new(ErrorKind::NotFound, format!("no {piece}")));
    }
    let filesystems: Vec<&Node> = layout
        .nodes()
        .into_iter()
        .filter(|n| {
            n.content
                .as_ref()
                .is_some_and(|c| fs_type(c.kind).is_some())
        })
        .collect();
    let listing = || {
        filesystems
            .iter()
            .map(|n| {
                format!(
                    "{} ({}{})",
                    n.name,
                    n.content.as_ref().map_or("", |c| c.kind.as_str()),
                    n.label()
                        .map(|l| format!(", label {l}"))
                        .unwrap_or_default()
                )
            })
            .collect::<Vec<_>>()
            .join(", ")
    };
    match filesystems.as_slice() {
        [] => Err(Error::new(
            ErrorKind::NotFound,
            "no file system found in the image",
        )),
        [only] => Ok(only),
        _ if args.auto => filesystems
            .iter()
            .copied()
            .find(|n| looks_like_root(n))
            .ok_or_else(|| {
                Error::invalid(format!(
                    "cannot tell which file system is the root; choose with --part or --lv: {}",
                    listing()
                ))
            }),
        _ => Err(Error::invalid(format!(
            "the image holds several file systems; choose with --part, --lv or --auto: {}",
            listing()
        ))),
    }
}

/// Root-ness by name: an LV called root, or a label that says so.
fn looks_like_root(node: &Node) -> bool {
    let lv_root = node.kind == NodeKind::LogicalVolume
        && node
            .name
            .rsplit('/')
            .next()
            .is_some_and(|n| n == "root" || n == "lv_root");
    let label_root = node
        .label()
        .is_some_and(|l| matches!(l, "root" | "rootfs" | "/" | "cloudimg-rootfs"));
    lv_root || label_root
}

/// The kernel file system type for content `kind`, if it is a mountable file system.
fn fs_type(kind: ContentKind) -> Option<&'static str> {
    Some(match kind {
        ContentKind::Ext2 | ContentKind::Ext3 | ContentKind::Ext4 => "ext4",
        ContentKind::Xfs => "xfs",
        ContentKind::Btrfs => "btrfs",
        ContentKind::Vfat => "vfat",
        ContentKind::Ntfs => "ntfs",
        ContentKind::Iso9660 => "iso9660",
        _ => return None,
    })
}

/// The type to give `mount` for content `kind`, with its kernel module loaded if need be.
fn mount_type(kind: ContentKind) -> &'static str {
    match fs_type(kind).unwrap_or("auto") {
        "ntfs" if kernel_knows("ntfs3") => "ntfs3",
        "ntfs" => "ntfs-3g",
        other => {
            kernel_knows(other);
            other
        }
    }
}

/// The options to give `mount` for a file system of type `fstype`: read-only never
/// writes, not even a journal replay; `nosuid,nodev` unless `safety` lifts them.
fn mount_options(fstype: &str, rw: bool, safety: &MountSafety) -> String {
    let access = match (rw, fstype) {
        (true, _) => "rw",
        (false, "ext4") => "ro,noload",
        (false, "xfs") => "ro,norecovery",
        (false, "btrfs") => "ro,rescue=nologreplay",
        (false, _) => "ro",
    };
    let mut options = vec![access];
    options.extend(
        [
            (!safety.suid).then_some("nosuid"),
            (!safety.dev).then_some("nodev"),
            safety.noexec.then_some("noexec"),
        ]
        .into_iter()
        .flatten(),
    );
    options.join(",")
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

    /// The options `imgblk mount ARGS...` passes for `fstype`.
    fn options_of(fstype: &str, args: &[&str]) -> String {
        #[derive(clap::Parser)]
        struct Cli {
            #[command(flatten)]
            mount: MountArgs,
        }
        let cli = <Cli as clap::Parser>::try_parse_from(
            ["mount"].iter().chain(args).chain(&["disk.img", "/mnt"]),
        )
        .unwrap();
        mount_options(fstype, cli.mount.rw, &cli.mount.safety)
    }

    #[test]
    fn read_only_options_never_replay() {
        assert_eq!(options_of("ext4", &[]), "ro,noload,nosuid,nodev");
        assert_eq!(fs_type(ContentKind::Ext3), Some("ext4"));
        assert_eq!(options_of("xfs", &[]), "ro,norecovery,nosuid,nodev");
        assert_eq!(options_of("xfs", &["--rw"]), "rw,nosuid,nodev");
        assert!(fs_type(ContentKind::Swap).is_none());
    }

    #[test]
    fn hostile_file_systems_get_nosuid_nodev_unless_lifted() {
        assert_eq!(options_of("vfat", &[]), "ro,nosuid,nodev");
        assert_eq!(
            options_of("btrfs", &["--noexec"]),
            "ro,rescue=nologreplay,nosuid,nodev,noexec"
        );
        assert_eq!(options_of("ext4", &["--rw", "--suid"]), "rw,nodev");
        assert_eq!(options_of("ext4", &["--dev", "--suid"]), "ro,noload");
    }
}
