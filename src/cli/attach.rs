//! `imgblk attach`: open an image, create `/dev/ublkbN` for it, serve it in the background.

use super::piece::PieceArgs;
use super::{print_json, EXIT_OK};
use crate::error::{Error, ErrorKind, Result};
use crate::image::{Format, OpenOptions};
use crate::serve::{self, Launched, Overlay, ServeSpec};
use crate::ublk::device::{self, DeviceConfig, ZeroCopy};
use crate::ublk::registry::{self, DeviceRecord};
use std::path::{Path, PathBuf};

/// Expose an image as a block device /dev/ublkbN.
///
/// Prints the device path once the device is live (its partitions appear as
/// /dev/ublkbNpM) and keeps serving it from a background daemon until `imgblk detach`.
/// The device is read-only unless --rw is given.
///
/// SIGTERM, SIGINT or SIGHUP to the daemon flush the image and remove the device, unless
/// it is in use (mounted, or held by device-mapper): then the daemon exits (status 75)
/// leaving the device for recovery, its I/O waiting until `imgblk recover`, or an attach
/// of the same image, takes it over; nothing written is lost. A device with --overlay
/// memory, or on a kernel without ublk USER_RECOVERY, keeps being served instead.
#[derive(Debug, clap::Args)]
#[command(after_help = "Examples:\n  imgblk attach disk.qcow2\n  \
imgblk attach --rw --queues 2 disk.raw\n  imgblk attach --part 2 disk.vmdk\n  \
imgblk attach --lv vg0/root disk1.qcow2 disk2.qcow2\n  imgblk attach --json --foreground disk.qcow2\n  \
imgblk attach --overlay memory disk.vmdk   # writable; writes kept in RAM, image untouched\n  \
imgblk attach --overlay /tmp/fix.qcow2 disk.vmdk   # writable; writes kept in a new qcow2\n  \
imgblk attach --snapshot before-upgrade disk.qcow2   # an internal snapshot, read-only")]
pub struct AttachArgs {
    /// The image file (or block device) to serve; for --lv of a VG spanning several
    /// disks, all of them.
    #[arg(required = true)]
    images: Vec<PathBuf>,
    #[command(flatten)]
    piece: PieceArgs,
    #[command(flatten)]
    luks: super::luks::LuksArgs,
    /// Image format; detected from the file's magic when omitted.
    #[arg(short, long, value_enum)]
    format: Option<Format>,
    /// Number of queues, each served by its own thread and io_uring.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..=64))]
    queues: u16,
    /// Requests in flight per queue.
    #[arg(short, long, default_value_t = 64, value_parser = clap::value_parser!(u16).range(1..=4096))]
    depth: u16,
    /// How request data moves between the kernel and the image. `auto` uses zero copy
    /// where the kernel offers it (Linux 6.16+: the ublk driver lends the daemon each
    /// request's own pages, and image I/O goes straight between them and the file);
    /// elsewhere, and with `off`, each request is copied once through a buffer in the
    /// daemon. `on` fails on a kernel without zero copy.
    #[arg(long, value_enum, value_name = "WHEN", default_value_t = ZeroCopy::Auto)]
    zero_copy: ZeroCopy,
    /// Allow writes (the image must not be in use by another writer).
    #[arg(long)]
    rw: bool,
    /// Make the device writable but send every write to an overlay, so that the image is
    /// opened read-only, may be shared with other readers, and is never changed. `memory`
    /// keeps the writes in RAM (lost at detach; memory use grows with what is written).
    /// Any other value is the path of a new qcow2 file to create, backed by the image (its
    /// absolute path and format recorded, as `qemu-img create -b IMAGE -F FMT` would):
    /// the writes stay in it after detach, for `qemu-img commit`, a later attach, or
    /// deleting. The file must not exist yet (write `./memory` for a file of that name).
    /// A file overlay needs a whole image: no --part, --lv, --luks or --snapshot.
    #[arg(long, value_name = "memory|FILE", value_parser = Overlay::parse, conflicts_with = "rw")]
    overlay: Option<Overlay>,
    /// Serve this internal snapshot of a qcow2 image (matched by name, then by id, as
    /// `qemu-img snapshot -l` lists them) instead of its current state. Read-only; with
    /// --overlay memory the device is writable and the writes stay in RAM.
    #[arg(long, value_name = "NAME", conflicts_with = "rw")]
    snapshot: Option<String>,
    /// Serve disk N (1 = the first, the default) of an OVA archive: its .vmdk members in
    /// archive order, as `imgblk info` lists them. Read-only.
    #[arg(long, value_name = "N")]
    disk: Option<u32>,
    /// Serve from this process instead of a background daemon; stop with Ctrl-C.
    #[arg(long)]
    foreground: bool,
    /// Print the device's details as JSON instead of its path.
    #[arg(long)]
    json: bool,
    /// Read the image even if another process (a running VM) has it open for writing.
    /// What the device shows may then be inconsistent. Read-only only.
    #[arg(short = 'U', long, conflicts_with = "rw")]
    force_share: bool,
    /// Most MiB of qcow2 L2 tables to cache per image of the chain. By default the chain
    /// shares one budget (memory-mib in /etc/imgblk/config.toml, 256): each image may
    /// cache 16 MiB (every table of a 128 GiB image with 64 KiB clusters), or half of what
    /// the ones above left if that is less; tables load on first use (the device asks the
    /// kernel to read them ahead as it starts).
    #[arg(long, value_name = "MIB")]
    l2_cache_mib: Option<u64>,
    #[command(flatten)]
    policy: super::config::PolicyArgs,
    /// Use buffered I/O on the image file instead of O_DIRECT.
    #[arg(long)]
    no_direct: bool,
}

/// Runs `imgblk attach`.
pub fn run(args: AttachArgs) -> Result<i32> {
    let spec = spec(&args)?;
    serve::check_selection(&spec)?;
    device::check_available()?;
    let orphan = registry::all()
        .into_iter()
        .find(|r| spec.matches(r) && device::wait_until_recoverable(r));
    if orphan.is_none() {
        for path in &spec.images {
            refuse_conflicting_writer(path, args.rw)?;
        }
    }
    if args.force_share {
        tracing::warn!("--force-share: no image locks; a writer may change data under the device");
    }
    let served = serve::create_overlay_and_open(&spec)?;
    let mut template = spec.record(&served)?;
    let mut config = spec.device;
    if let Some(orphan) = &orphan {
        tracing::info!(device = %orphan.device.display(), "recovering the orphaned device of this image");
        config.queues = orphan.queues;
        config.depth = orphan.depth;
        config.recover = Some(orphan.id);
        template.queues = orphan.queues;
        template.depth = orphan.depth;
    }
    let json = args.json;
    let launched = serve::launch(
        served.image,
        config,
        template,
        args.foreground,
        move |record| report(record, json),
    )?;
    finish(launched, json)
}

/// What attach's options describe.
fn spec(args: &AttachArgs) -> Result<ServeSpec> {
    let spec = ServeSpec {
        images: canonical_paths(&args.images)?,
        options: OpenOptions {
            format: args.format,
            writable: args.rw,
            direct: !args.no_direct,
            force_share: args.force_share,
            l2_cache_bytes: args.l2_cache_mib.map(|mib| mib << 20),
            snapshot: args.snapshot.clone(),
            disk: args.disk,
            journal_dir: Some(registry::journal_dir()),
            ..args.policy.open_options()?
        },
        piece: args.piece.piece(),
        luks: args.luks.key(),
        unlock: args.luks.unlock(),
        overlay: args.overlay.clone(),
        device: DeviceConfig {
            queues: args.queues,
            depth: args.depth,
            zero_copy: args.zero_copy,
            lost_on_exit: args.overlay == Some(Overlay::Memory),
            ..DeviceConfig::default()
        },
    };
    spec.check_file_overlay()?;
    Ok(spec)
}

/// Prints a live device: its path, or its record as JSON.
fn report(record: &DeviceRecord, json: bool) {
    if json {
        let _ = print_json(record);
    } else {
        println!("{}", record.device.display());
    }
}

/// The outcome once [`serve::launch`] returned: the started daemon's device is printed;
/// a daemon (or a foreground attach) ends as its serving did.
fn finish(launched: Launched, json: bool) -> Result<i32> {
    match launched {
        Launched::Started(record) => {
            report(&record, json);
            Ok(EXIT_OK)
        }
        Launched::Served(result) => result.map(|()| EXIT_OK),
    }
}

/// Absolute paths of the images, so that records mean the same from any directory.
fn canonical_paths(images: &[PathBuf]) -> Result<Vec<PathBuf>> {
    images
        .iter()
        .map(|p| {
            std::fs::canonicalize(p).map_err(|e| Error::io("cannot open image", e).with_path(p))
        })
        .collect()
}

/// Refuses a second writer, or a writer next to readers, among imgblk's own devices.
fn refuse_conflicting_writer(image: &Path, writable: bool) -> Result<()> {
    let conflict = registry::all()
        .into_iter()
        .find(|r| r.image == image && r.daemon_alive() && (writable || r.writes_image()));
    match conflict {
        Some(r) => Err(Error::new(
            ErrorKind::Busy,
            format!(
                "already served {} by {} (pid {}); detach it first",
                if r.writes_image() {
                    "read-write"
                } else {
                    "read-only"
                },
                r.device.display(),
                r.pid
            ),
        )
        .with_path(image)),
        None => Ok(()),
    }
}
