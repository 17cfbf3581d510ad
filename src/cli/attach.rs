//! `imgblk attach`: open an image, create `/dev/ublkbN` for it, serve it in the background.

use super::piece::{open_source, PieceArgs, Served};
use super::{print_json, EXIT_OK};
use crate::error::{Error, ErrorKind, Result};
use crate::image::overlay::MemoryOverlay;
use crate::image::{qcow2, DiskImage, Format, OpenOptions};
use crate::ublk::daemon::{self, Notifier, Role};
use crate::ublk::device::{self, DeviceConfig, StopFlags, ZeroCopy};
use crate::ublk::registry::{self, DeviceRecord};
use std::path::{Path, PathBuf};
use std::sync::Arc;

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
    #[arg(long, value_name = "memory|FILE", value_parser = parse_overlay, conflicts_with = "rw")]
    overlay: Option<Overlay>,
    /// Serve this internal snapshot of a qcow2 image (matched by name, then by id, as
    /// `qemu-img snapshot -l` lists them) instead of its current state. Read-only; with
    /// --overlay memory the device is writable and the writes stay in RAM.
    #[arg(long, value_name = "NAME", conflicts_with = "rw")]
    snapshot: Option<String>,
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
    /// Most MiB of qcow2 L2 tables to cache per image of the chain. The default (128)
    /// holds every table of a 1 TiB image with 64 KiB clusters; tables load on first use.
    #[arg(long, value_name = "MIB")]
    l2_cache_mib: Option<u64>,
    /// Use buffered I/O on the image file instead of O_DIRECT.
    #[arg(long)]
    no_direct: bool,
}

/// Where `--overlay` sends writes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Overlay {
    /// A throw-away RAM overlay ([`MemoryOverlay`]).
    Memory,
    /// A new qcow2 file backed by the image (see [`qcow2::create::create_overlay`]).
    File(PathBuf),
}

impl Overlay {
    /// The name recorded and shown for it: `memory`, or the overlay file's path.
    pub fn name(&self) -> String {
        match self {
            Overlay::Memory => "memory".to_string(),
            Overlay::File(path) => path.display().to_string(),
        }
    }
}

/// Parses `--overlay`: `memory`, or the path of a qcow2 file to create.
pub fn parse_overlay(value: &str) -> std::result::Result<Overlay, String> {
    match value {
        "memory" => Ok(Overlay::Memory),
        "" => Err("an overlay is `memory` or the path of a new qcow2 file".to_string()),
        path => Ok(Overlay::File(PathBuf::from(path))),
    }
}

/// Wraps `source`'s image in a RAM overlay if asked for (a file overlay is opened in its
/// place instead: [`open_file_overlay`]).
pub(super) fn with_overlay(mut source: Served, overlay: Option<&Overlay>) -> Result<Served> {
    if let Some(Overlay::Memory) = overlay {
        source.image = Arc::new(MemoryOverlay::new(source.image)?);
    }
    Ok(source)
}

/// For `--overlay FILE`: creates the qcow2 `file` over the whole image `base` (opened
/// read-only first, to learn its format and size) and opens it writable; the base stays
/// read-only underneath as its backing file.
fn open_file_overlay(base: &Path, file: &Path, options: &OpenOptions) -> Result<Served> {
    let (format, size) = {
        let source = open_served(&[base.to_path_buf()], options, None)?;
        (source.format, source.image.virtual_size())
    };
    qcow2::create::create_overlay(file, base, format, size)?;
    tracing::info!(overlay = %file.display(), base = %base.display(), "created the overlay");
    open_overlay(file, base, options).inspect_err(|_| {
        // Nothing was written to it yet: do not leave an unusable file behind.
        let _ = std::fs::remove_file(file);
    })
}

/// Opens the existing overlay `file` over the image `base` writable (for attach, and for
/// recover); `base` may be a block device.
pub(super) fn open_overlay(file: &Path, base: &Path, options: &OpenOptions) -> Result<Served> {
    let options = OpenOptions {
        format: Some(Format::Qcow2),
        writable: true,
        user_paths: vec![base.to_path_buf()],
        ..options.clone()
    };
    open_served(&[file.to_path_buf()], &options, None)
}

/// Refuses `--overlay FILE` where a qcow2 backing reference cannot express what is served.
fn check_file_overlay(args: &AttachArgs, piece: Option<&str>) -> Result<()> {
    let why = if piece.is_some() {
        Some("a partition or LV")
    } else if args.luks.luks {
        Some("a decrypted LUKS volume")
    } else if args.snapshot.is_some() {
        Some("an internal snapshot")
    } else if args.images.len() > 1 {
        Some("several images")
    } else {
        None
    };
    match why {
        Some(what) => Err(Error::unsupported(format!(
            "--overlay FILE makes a qcow2 backed by a whole image, which cannot stand for {what}; \
             use --overlay memory"
        ))),
        None => Ok(()),
    }
}

/// Runs `imgblk attach`.
pub fn run(args: AttachArgs) -> Result<i32> {
    let paths = canonical_paths(&args.images)?;
    device::check_available()?;
    let piece = args.piece.node_name();
    let orphan = registry::all().into_iter().find(|r| {
        r.image == paths[0]
            && r.piece == piece
            && r.writable == args.rw
            && r.overlay.is_none()
            && args.overlay.is_none()
            && r.luks == args.luks.luks
            && r.snapshot == args.snapshot
            && device::wait_until_recoverable(r)
    });
    if orphan.is_none() {
        for path in &paths {
            refuse_conflicting_writer(path, args.rw)?;
        }
    }
    if args.force_share {
        tracing::warn!("--force-share: no image locks; a writer may change data under the device");
    }
    let options = OpenOptions {
        format: args.format,
        writable: args.rw,
        direct: !args.no_direct,
        force_share: args.force_share,
        l2_cache_bytes: args.l2_cache_mib.map(|mib| mib << 20),
        snapshot: args.snapshot.clone(),
        journal_dir: Some(registry::journal_dir()),
        ..OpenOptions::default()
    };
    let source = if let Some(Overlay::File(file)) = &args.overlay {
        check_file_overlay(&args, piece.as_deref())?;
        open_file_overlay(&paths[0], file, &options)?
    } else {
        let mut source = open_served(&paths, &options, piece.as_deref())?;
        source.image = args.luks.apply(source.image)?;
        with_overlay(source, args.overlay.as_ref())?
    };
    let mut config = DeviceConfig {
        queues: args.queues,
        depth: args.depth,
        zero_copy: args.zero_copy,
        lost_on_exit: args.overlay == Some(Overlay::Memory),
        ..DeviceConfig::default()
    };
    if let Some(orphan) = &orphan {
        tracing::info!(device = %orphan.device.display(), "recovering the orphaned device of this image");
        config.queues = orphan.queues;
        config.depth = orphan.depth;
        config.recover = Some(orphan.id);
    }
    let template = DeviceRecord {
        queues: config.queues,
        depth: config.depth,
        writable: args.rw || args.overlay.is_some(),
        overlay: args.overlay.as_ref().map(Overlay::name),
        more_images: paths[1..].to_vec(),
        piece: source.piece,
        luks: args.luks.luks,
        key_file: args.luks.recorded_key_file()?,
        snapshot: args.snapshot,
        ..DeviceRecord::new(
            0,
            PathBuf::new(),
            &paths[0],
            source.format,
            source.image.virtual_size(),
        )
    };
    launch(source.image, config, template, args.foreground, args.json)
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

/// Opens what a device will serve (an image, or a piece of images) and checks it can be one.
pub(super) fn open_served(
    paths: &[PathBuf],
    options: &OpenOptions,
    piece: Option<&str>,
) -> Result<Served> {
    let source = open_source(paths, options, piece)?;
    if source.image.virtual_size() < 512 {
        let path = paths.first().map(PathBuf::as_path).unwrap_or(Path::new(""));
        return Err(Error::invalid("image is smaller than one 512-byte sector").with_path(path));
    }
    Ok(source)
}

/// Serves `image`: in this process with `foreground`, else from a forked daemon once it
/// reports the device live. Prints the device path, or its record as JSON.
pub(super) fn launch(
    image: Arc<dyn DiskImage>,
    config: DeviceConfig,
    template: DeviceRecord,
    foreground: bool,
    json: bool,
) -> Result<i32> {
    daemon::refuse_core_dumps();
    let report = move |record: &DeviceRecord| {
        if json {
            let _ = print_json(record);
        } else {
            println!("{}", record.device.display());
        }
    };
    if foreground {
        serve(image, config, template, Notifier::default(), report)?;
        return Ok(EXIT_OK);
    }

    let log = registry::run_dir().join(format!("daemon-{}.log", std::process::id()));
    std::fs::create_dir_all(registry::run_dir()).map_err(|e| {
        Error::io("cannot create the run folder", e).with_path(&registry::run_dir())
    })?;
    match daemon::fork_daemon(&log)? {
        Role::Parent(pipe) => {
            // The daemon serves the image now: this copy must not flush it, nor close its
            // metadata journal (which removes the file the daemon goes on writing).
            std::mem::forget(image);
            report(&daemon::wait_for_report(pipe, &log)?);
            Ok(EXIT_OK)
        }
        Role::Daemon(notifier) => {
            let template = DeviceRecord {
                log: Some(log),
                ..template
            };
            if let Err(e) = serve(image, config, template, notifier.clone(), |_| {}) {
                tracing::error!(error = %e, "daemon failed");
                notifier.failed(&e);
                std::process::exit(super::exit_code(&e));
            }
            std::process::exit(EXIT_OK);
        }
    }
}

/// Serves `image` until a signal or `detach`; records the device while it is live.
/// SIGTERM, SIGINT and SIGHUP stop it (removing the device unless it is in use, see
/// [`device::stop_action`]); SIGUSR1 (`detach --force`) removes it even while in use.
fn serve(
    image: Arc<dyn DiskImage>,
    config: DeviceConfig,
    template: DeviceRecord,
    notifier: Notifier,
    on_live: impl FnOnce(&DeviceRecord) + Send + Sync + 'static,
) -> Result<()> {
    let stop = StopFlags::default();
    let handlers = [
        (libc::SIGTERM, &stop.stop),
        (libc::SIGINT, &stop.stop),
        (libc::SIGHUP, &stop.stop),
        (libc::SIGUSR1, &stop.force),
        (libc::SIGUSR1, &stop.stop),
    ];
    for (signal, flag) in handlers {
        signal_hook::flag::register(signal, flag.clone())
            .map_err(|e| Error::io("cannot install signal handler", e))?;
    }
    let recorded = Arc::new(std::sync::Mutex::new(None));
    let recorded_id = recorded.clone();
    let result = device::serve(image, config, stop, move |live| {
        let log = template.log.as_deref().and_then(|log| {
            let named = log.with_file_name(format!("ublkb{}.log", live.id));
            std::fs::rename(log, &named).ok().map(|()| named)
        });
        let record = DeviceRecord {
            id: live.id,
            device: live.block_path.clone(),
            zero_copy: live.zero_copy,
            pid: std::process::id(),
            start_time: registry::process_start_time(std::process::id()),
            log: log.or(template.log),
            ..template
        };
        if let Err(e) = registry::save(&record) {
            tracing::warn!(error = %e, "cannot record the device; `imgblk list` will not show it");
        }
        if let Ok(mut slot) = recorded_id.lock() {
            *slot = Some(record.id);
        }
        notifier.live(&record);
        tell_systemd_ready(&record);
        on_live(&record);
    });
    let _ = sd_notify::notify(&[sd_notify::NotifyState::Stopping]);
    if let Some(id) = recorded.lock().ok().and_then(|slot| *slot) {
        registry::remove(id);
    }
    result
}

/// Under systemd (`Type=notify`), says the device is live. Does nothing elsewhere.
fn tell_systemd_ready(record: &DeviceRecord) {
    let status = format!(
        "serving {} on {}",
        record.image.display(),
        record.device.display()
    );
    if let Err(e) = sd_notify::notify(&[
        sd_notify::NotifyState::Ready,
        sd_notify::NotifyState::Status(&status),
    ]) {
        tracing::warn!(error = %e, "cannot notify systemd");
    }
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
