//! The `imgblk` command line: argument definitions, logging set-up, exit codes, and one
//! module per command.

mod attach;
mod cat;
mod detach;
mod doctor;
mod files;
mod fsck;
mod get;
mod info;
mod inspect;
mod list;
mod ls;
mod luks;
mod map;
mod mount;
mod pick;
mod piece;
mod recover;
mod tar;

use crate::error::{Error, ErrorKind};
use clap::{Parser, Subcommand};

/// Exit status of a successful command.
pub const EXIT_OK: i32 = 0;
/// Exit status for an operational failure not covered below.
pub const EXIT_FAILURE: i32 = 1;
/// Exit status for bad usage (clap's own choice, kept).
pub const EXIT_USAGE: i32 = 2;
/// Exit status when an image is missing, corrupt or unsupported.
pub const EXIT_IMAGE: i32 = 3;
/// Exit status when the kernel or privileges are lacking (no ublk, not root).
pub const EXIT_SYSTEM: i32 = 4;
/// Exit status when an image or device is busy (another writer, a mounted device).
pub const EXIT_BUSY: i32 = 5;

const EXIT_CODES_HELP: &str = "\
Exit status:
  0  success
  1  operational failure (I/O error, daemon died)
  2  bad usage
  3  image missing, corrupt or of an unsupported kind
  4  the system lacks something: ublk_drv not loaded, not root
  5  busy: the image has another writer, or the device is mounted
  75 attach (daemon): stopped by a signal while the device was in use, and left the
     device for recovery (imgblk recover, or attach of the same image, takes it over)";

/// Serve virtual-disk images (raw, qcow2, VMDK, VHD, VHDX, VDI) as Linux block devices through ublk.
#[derive(Debug, Parser)]
#[command(
    name = "imgblk",
    version,
    about = "Serve virtual-disk images (raw, qcow2, VMDK, VHD, VHDX, VDI) as Linux block devices through ublk",
    long_about = "imgblk puts a virtual-disk image in front of the kernel as a real block device, \
/dev/ublkbN, served by a small daemon through ublk with io_uring on the data path. \
It replaces `modprobe nbd; qemu-nbd -c`, `kpartx` and `losetup -o`: partitions of the image \
appear as /dev/ublkbNpM, and one partition or guest LVM logical volume can be served on its own \
(--part, --lv) or mounted in one step (imgblk mount). Devices are read-only unless --rw is given.",
    after_help = "Examples:\n  imgblk attach guest.qcow2          # prints /dev/ublkb0\n  \
mount -o ro /dev/ublkb0p1 /mnt\n  umount /mnt; imgblk detach /dev/ublkb0\n  imgblk list --json",
    after_long_help = EXIT_CODES_HELP
)]
pub struct Cli {
    /// More log output (-v info, -vv debug, -vvv trace); RUST_LOG overrides.
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    verbose: u8,
    /// Only errors.
    #[arg(short, long, global = true, conflicts_with = "verbose")]
    quiet: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    Attach(attach::AttachArgs),
    Detach(detach::DetachArgs),
    Doctor(doctor::DoctorArgs),
    List(list::ListArgs),
    Map(map::MapArgs),
    Cat(cat::CatArgs),
    Recover(recover::RecoverArgs),
    Mount(mount::MountArgs),
    Umount(mount::UmountArgs),
    Info(info::InfoArgs),
    Inspect(inspect::InspectArgs),
    Fsck(fsck::FsckArgs),
    Ls(ls::LsArgs),
    Get(get::GetArgs),
    Tar(tar::TarArgs),
}

/// Runs the command line; returns the process exit code.
pub fn main() -> i32 {
    // Like any filter, end quietly when the reader of our output goes away (`| head`).
    // SAFETY: setting a signal disposition to a default action, before any thread exists.
    unsafe { libc::signal(libc::SIGPIPE, libc::SIG_DFL) };
    let cli = Cli::parse();
    // A daemon's log should say when its device went live and went away.
    let baseline = u8::from(matches!(cli.command, Command::Attach(_)));
    init_logging(cli.verbose.max(baseline), cli.quiet);
    let result = match cli.command {
        Command::Attach(args) => attach::run(args),
        Command::Detach(args) => detach::run(args),
        Command::Doctor(args) => doctor::run(args),
        Command::List(args) => list::run(args),
        Command::Map(args) => map::run(args),
        Command::Cat(args) => cat::run(args),
        Command::Recover(args) => recover::run(args),
        Command::Mount(args) => mount::run_mount(args),
        Command::Umount(args) => mount::run_umount(args),
        Command::Info(args) => info::run(args),
        Command::Inspect(args) => inspect::run(args),
        Command::Fsck(args) => fsck::run(args),
        Command::Ls(args) => ls::run(args),
        Command::Get(args) => get::run(args),
        Command::Tar(args) => tar::run(args),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("imgblk: {e}");
            exit_code(&e)
        }
    }
}

/// The documented exit status for an error.
pub fn exit_code(error: &Error) -> i32 {
    match error.kind() {
        ErrorKind::NotFound | ErrorKind::Corrupt | ErrorKind::Unsupported => EXIT_IMAGE,
        ErrorKind::Kernel | ErrorKind::Permission => EXIT_SYSTEM,
        ErrorKind::Busy => EXIT_BUSY,
        ErrorKind::InvalidInput => EXIT_USAGE,
        ErrorKind::Io | ErrorKind::ReadOnly => EXIT_FAILURE,
    }
}

fn init_logging(verbose: u8, quiet: bool) {
    let default = match (quiet, verbose) {
        (true, _) => "error",
        (false, 0) => "warn",
        (false, 1) => "info",
        (false, 2) => "debug",
        _ => "trace",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        // fatfs warns about layouts mkfs.vfat makes by default (reserved sectors != 1).
        .unwrap_or_else(|_| {
            tracing_subscriber::EnvFilter::new(format!("imgblk={default},warn,fatfs=error"))
        });
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(ansi)
        .with_target(false)
        .without_time()
        .try_init();
}

/// The arguments every command that reads an image takes.
#[derive(Debug, clap::Args)]
struct ImageArgs {
    /// The image file (or block device).
    image: std::path::PathBuf,
    /// Image format; detected from the file's magic when omitted.
    #[arg(short, long, value_enum)]
    format: Option<crate::image::Format>,
    /// Read the image even while another process (a running VM) writes it; what is read
    /// may then be inconsistent.
    #[arg(short = 'U', long)]
    force_share: bool,
}

/// Opens an image read-only as `ImageArgs` say.
fn open_for_reading(args: &ImageArgs) -> crate::Result<Box<dyn crate::image::DiskImage>> {
    let options = crate::image::OpenOptions {
        format: args.format,
        force_share: args.force_share,
        ..crate::image::OpenOptions::default()
    };
    crate::image::open_image(&args.image, &options)
}

/// The arguments of commands that read guest contents: images plus an optional piece.
#[derive(Debug, clap::Args)]
struct SourceArgs {
    /// The image (or block device); give every disk of the guest for a VG spanning them.
    #[arg(required = true)]
    images: Vec<std::path::PathBuf>,
    /// Image format of all the images; detected from each file's magic when omitted.
    #[arg(short, long, value_enum)]
    format: Option<crate::image::Format>,
    /// Read the images even while another process (a running VM) writes them; what is
    /// read may then be inconsistent.
    #[arg(short = 'U', long)]
    force_share: bool,
    /// Read this internal snapshot of a qcow2 image (by name, then by id) instead of its
    /// current state.
    #[arg(long, value_name = "NAME")]
    snapshot: Option<String>,
    #[command(flatten)]
    piece: piece::PieceArgs,
}

/// Opens what `SourceArgs` name, read-only.
fn open_source_for_reading(
    args: &SourceArgs,
) -> crate::Result<std::sync::Arc<dyn crate::image::DiskImage>> {
    let options = crate::image::OpenOptions {
        format: args.format,
        force_share: args.force_share,
        snapshot: args.snapshot.clone(),
        ..crate::image::OpenOptions::default()
    };
    let name = args.piece.node_name();
    Ok(piece::open_source(&args.images, &options, name.as_deref())?.image)
}

/// Whether `program` is found in $PATH (or the sbin folders, which root's PATH may lack).
pub(crate) fn find_program(program: &str) -> Option<std::path::PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/sbin", "/usr/bin", "/bin"].map(std::path::PathBuf::from))
        .map(|dir| dir.join(program))
        .find(|p| {
            std::fs::metadata(p).is_ok_and(|m| {
                m.is_file()
                    && std::os::unix::fs::PermissionsExt::mode(&m.permissions()) & 0o111 != 0
            })
        })
}

/// This very program, for commands that run other imgblk commands as child processes
/// (each attached device gets its own daemon).
pub(crate) fn own_exe() -> crate::Result<std::path::PathBuf> {
    std::env::current_exe().map_err(|e| Error::io("cannot find the imgblk executable", e))
}

/// Prints `value` as pretty JSON on stdout.
fn print_json<T: serde::Serialize>(value: &T) -> crate::Result<()> {
    let text = serde_json::to_string_pretty(value).map_err(|e| Error::invalid(e.to_string()))?;
    println!("{text}");
    Ok(())
}

/// Formats a byte count the way people read sizes (1.5 GiB).
fn human_size(bytes: u64) -> String {
    const UNITS: [&str; 6] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn sizes_read_naturally() {
        assert_eq!(human_size(512), "512 B");
        assert_eq!(human_size(3 << 29), "1.5 GiB");
    }

    #[test]
    fn error_kinds_map_to_documented_codes() {
        assert_eq!(exit_code(&Error::corrupt("x")), EXIT_IMAGE);
        assert_eq!(exit_code(&Error::new(ErrorKind::Kernel, "x")), EXIT_SYSTEM);
        assert_eq!(exit_code(&Error::new(ErrorKind::Busy, "x")), EXIT_BUSY);
    }
}
