//! `imgblk mount` / `imgblk umount`: a file system inside an image mounted in one step —
//! attach the piece, mount it with safe options — and undone in one step.

use super::pick::{choose, fs_type};
use super::piece::PieceArgs;
use super::{child, print_json, Escaped, EXIT_OK};
use crate::error::{Error, ErrorKind, Result};
use crate::image::{open_image, DiskImage, OpenOptions};
use crate::layout::{ContentKind, PieceId};
use crate::ublk::device;
use serde::Serialize;
use std::ffi::OsString;
use std::path::{Path, PathBuf};
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
#[command(
    override_usage = "imgblk mount [OPTIONS] <IMAGE>... <MOUNTPOINT>",
    after_help = "Examples:\n  imgblk mount guest.qcow2 --part 1 /mnt\n  \
imgblk mount guest.qcow2 --lv vg0/root /mnt\n  imgblk mount --auto guest.vmdk /mnt\n  \
imgblk mount --noexec evidence.vmdk /mnt\n  imgblk mount --json guest.qcow2 /mnt\n  \
imgblk umount /mnt"
)]
pub struct MountArgs {
    // One list, not two positionals, so that options may stand between the paths: clap
    // would give a path followed by an option to the last positional.
    /// The image (or block device), every disk of the guest for a VG spanning them, then
    /// the mount point last.
    #[arg(required = true, value_name = "PATH")]
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
    /// Mount from disk N (1 = the first, the default) of an OVA archive: its .vmdk
    /// members in archive order, as `imgblk info` lists them.
    #[arg(long, value_name = "N")]
    disk: Option<u32>,
    /// Print what was mounted as JSON (device, mount point, piece, file system, options).
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    safety: MountSafety,
    #[command(flatten)]
    key: super::luks::KeyFileArgs,
    #[command(flatten)]
    policy: super::config::PolicyArgs,
}

/// What the mounted file system may do on this host: `nosuid,nodev` unless lifted.
#[derive(Debug, Default, clap::Args)]
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
#[command(after_help = "Examples:\n  imgblk umount /mnt\n  imgblk umount --json /mnt")]
pub struct UmountArgs {
    /// The mount point.
    mountpoint: PathBuf,
    /// Print what was unmounted and detached as JSON.
    #[arg(long)]
    json: bool,
}

/// What `mount --json` prints: what was mounted where, through which device.
#[derive(Debug, Serialize)]
struct Mounted {
    /// The mount point, as an absolute path.
    mountpoint: PathBuf,
    /// The device mounted, `/dev/ublkbN`.
    device: PathBuf,
    /// Its ublk id, for `imgblk detach`.
    id: u32,
    /// The image served.
    image: PathBuf,
    /// The piece of the image, when not the whole image.
    piece: Option<PieceId>,
    /// What the piece holds (`ext4`, `xfs`, `ntfs`...).
    content: &'static str,
    /// The kernel file system type mounted (`ext4` for ext2/3/4, `ntfs3`...).
    fstype: String,
    /// The mount options.
    options: String,
    /// Whether the file system is mounted read-write.
    writable: bool,
}

/// What `umount --json` prints: the mount point left and the device detached.
#[derive(Debug, Serialize)]
struct Unmounted {
    /// The mount point, as an absolute path.
    mountpoint: PathBuf,
    /// What was mounted there: `/dev/ublkbN` or `/dev/ublkbNpM`.
    source: String,
    /// The device detached, `/dev/ublkbN`.
    device: PathBuf,
    /// Its ublk id.
    id: u32,
}

impl MountArgs {
    /// The images and the mount point: every path given but the last, and the last.
    fn images_and_mountpoint(&self) -> Result<(&[PathBuf], &Path)> {
        match self.paths.split_last() {
            Some((mountpoint, images)) if !images.is_empty() => Ok((images, mountpoint)),
            _ => Err(Error::invalid(
                "give the image(s), then the mount point: imgblk mount IMAGE... MOUNTPOINT",
            )),
        }
    }
}

/// Runs `imgblk mount`.
pub fn run_mount(mut args: MountArgs) -> Result<i32> {
    crate::serve::spec::share_stdin_key(&mut args.key.key_file)?;
    let (images, mountpoint) = args.images_and_mountpoint()?;
    if !mountpoint.is_dir() {
        return Err(
            Error::new(ErrorKind::NotFound, "mount point is not a directory").with_path(mountpoint),
        );
    }
    let options = OpenOptions {
        format: args.format,
        disk: args.disk,
        ..args.policy.open_options()?
    };
    let mut opened: Vec<Arc<dyn DiskImage>> = Vec::new();
    for path in images {
        opened.push(Arc::from(open_image(path, &options)?));
    }
    let layout = crate::serve::discover_with(&opened, args.key.key().as_ref())?;
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

    let mut attach_args: Vec<OsString> = Vec::new();
    if let Some(format) = args.format {
        attach_args.extend(["--format".into(), format.to_string().into()]);
    }
    if let Some(disk) = args.disk {
        attach_args.extend(["--disk".into(), disk.to_string().into()]);
    }
    if args.rw {
        attach_args.push("--rw".into());
    }
    attach_args.extend(args.policy.cli_args());
    let piece = child::piece_args(&node.name, args.key.key_file.as_deref()).ok_or_else(|| {
        Error::unsupported(format!(
            "{} cannot be attached on its own; attach its decrypted volume and mount from \
             that device",
            Escaped(&node.name)
        ))
    })?;
    attach_args.extend(piece);
    attach_args.push("--".into());
    attach_args.extend(images.iter().map(OsString::from));
    let record = child::attach(&attach_args)?;
    let device = record.device.display().to_string();

    let fstype = mount_type(fs);
    let options = mount_options(fstype, args.rw, &args.safety);
    let status = Command::new("mount")
        .args(["-t", fstype, "-o", &options, &device])
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
    if args.json {
        print_json(&Mounted {
            mountpoint: std::fs::canonicalize(mountpoint).unwrap_or_else(|_| mountpoint.into()),
            device: record.device,
            id: record.id,
            image: record.image,
            piece: record.piece,
            content: fs.as_str(),
            fstype: fstype.to_string(),
            options,
            writable: args.rw,
        })?;
    } else {
        println!(
            "{} ({}, {}) mounted on {} via {device}",
            Escaped(&node.name),
            fs.as_str(),
            if args.rw { "rw" } else { "ro" },
            mountpoint.display()
        );
    }
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
    if args.json {
        print_json(&Unmounted {
            mountpoint: target,
            source: mount.source,
            device: whole.into(),
            id,
        })?;
    } else {
        println!("unmounted {} and detached {whole}", target.display());
    }
    Ok(EXIT_OK)
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
    use crate::cli::tests::parse;
    use crate::cli::Command as Parsed;

    /// `mount`'s arguments from `imgblk mount ARGS...`.
    fn mount_args(args: &[&str]) -> MountArgs {
        match parse(&[&["mount"], args].concat()) {
            Parsed::Mount(args) => args,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn the_mount_point_is_the_last_path_wherever_options_are() {
        let m = mount_args(&["a.qcow2", "--lv", "vg/root", "b.qcow2", "/mnt"]);
        let (images, mountpoint) = m.images_and_mountpoint().unwrap();
        assert_eq!(images, [PathBuf::from("a.qcow2"), "b.qcow2".into()]);
        assert_eq!(mountpoint, Path::new("/mnt"));
        assert_eq!(m.piece.piece().unwrap().to_string(), "vg/root");
        let m = mount_args(&["a.qcow2", "--part", "1", "/mnt", "--rw"]);
        let (images, mountpoint) = m.images_and_mountpoint().unwrap();
        assert_eq!(
            (images.len(), mountpoint, m.rw),
            (1, Path::new("/mnt"), true)
        );
        let lone = mount_args(&["/mnt"]).images_and_mountpoint().unwrap_err();
        assert_eq!(lone.kind(), ErrorKind::InvalidInput);
    }

    #[test]
    fn json_says_what_was_mounted_where() {
        let fstype = mount_type(ContentKind::Ext3).to_string();
        let options = mount_options(&fstype, false, &MountSafety::default());
        let mounted = Mounted {
            mountpoint: "/mnt".into(),
            device: "/dev/ublkb0".into(),
            id: 0,
            image: "/img/disk.qcow2".into(),
            piece: Some(PieceId::Partition(2)),
            content: ContentKind::Ext3.as_str(),
            fstype,
            options,
            writable: false,
        };
        assert_eq!(
            serde_json::to_value(mounted).unwrap(),
            serde_json::json!({"mountpoint": "/mnt", "device": "/dev/ublkb0", "id": 0,
                "image": "/img/disk.qcow2", "piece": "disk0p2", "content": "ext3",
                "fstype": "ext4", "options": "ro,noload,nosuid,nodev", "writable": false})
        );
    }

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
