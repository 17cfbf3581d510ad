//! The `imgblk` command line: argument definitions, logging set-up, exit codes, and one
//! module per command.

mod attach;
mod cat;
mod changes;
mod child;
mod config;
mod convert;
mod detach;
mod doctor;
mod escape;
mod files;
mod fsck;
mod get;
mod info;
mod inspect;
mod kernel_fs;
mod list;
mod ls;
mod luks;
mod map;
mod mount;
mod output;
mod pick;
mod piece;
mod progress;
mod recover;
mod tar;

use crate::error::{Error, ErrorKind};
use clap::{Parser, Subcommand};
use escape::Escaped;

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

const EXAMPLES: &str = "Examples:\n  imgblk attach guest.qcow2          # prints /dev/ublkb0\n  \
mount -o ro /dev/ublkb0p1 /mnt\n  umount /mnt; imgblk detach /dev/ublkb0\n  imgblk list --json";

/// What `--help` shows after the options: the examples `-h` shows, then `more`. (clap
/// shows either the short or the long text, not both.)
fn long_help(examples: &str, more: &str) -> String {
    format!("{examples}\n\n{more}")
}

const EXIT_CODES_HELP: &str = "\
Exit status:
  0  success
  1  operational failure (I/O error, an output that cannot be created, daemon died)
  2  bad usage (also a configuration file that cannot be understood)
  3  an input cannot be used: image (or key file) missing, unreadable, corrupt or of an
     unsupported kind (a directory), naming a file the backing-file policy refuses, or
     a LUKS key that opens no key slot
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
    after_help = EXAMPLES,
    after_long_help = long_help(EXAMPLES, EXIT_CODES_HELP)
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
    Convert(convert::ConvertArgs),
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
        Command::Convert(args) => convert::run(args),
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
            eprintln!("imgblk: {}", Escaped(&e));
            exit_code(&e)
        }
    }
}

/// The documented exit status for an error. A permission error about a file (an image or
/// key file that cannot be read, a key that opens no LUKS key slot) is an unusable input,
/// 3; one about no file (not root) is what the system lacks, 4.
pub fn exit_code(error: &Error) -> i32 {
    match error.kind() {
        ErrorKind::NotFound | ErrorKind::Corrupt | ErrorKind::Unsupported => EXIT_IMAGE,
        ErrorKind::Permission if error.path().is_some() => EXIT_IMAGE,
        ErrorKind::Kernel | ErrorKind::Permission => EXIT_SYSTEM,
        ErrorKind::Busy => EXIT_BUSY,
        ErrorKind::InvalidInput => EXIT_USAGE,
        ErrorKind::Io | ErrorKind::ReadOnly => EXIT_FAILURE,
    }
}

/// `--format`'s values: the library's formats by their names, each with a line of help.
impl clap::ValueEnum for crate::image::Format {
    fn value_variants<'a>() -> &'a [Self] {
        &Self::ALL
    }

    fn to_possible_value(&self) -> Option<clap::builder::PossibleValue> {
        use crate::image::Format;
        let help = match self {
            Format::Raw => "A plain byte-for-byte disk (or a block device)",
            Format::Qcow2 => "QEMU copy-on-write v2/v3",
            Format::Vmdk => "VMware virtual disk: a descriptor plus flat or sparse extents",
            Format::Vpc => "Microsoft Virtual PC / VHD (fixed, dynamic, differencing); qemu-img calls it \"vpc\"",
            Format::Vhdx => "Microsoft VHDX (Hyper-V)",
            Format::Vdi => "VirtualBox disk image",
        };
        Some(clap::builder::PossibleValue::new(self.name()).help(help))
    }
}

/// The error kind an imgblk exit status stands for (one of each kind [`exit_code`] maps
/// to it), for commands run as children ([`child`]) whose caller should exit alike.
pub fn error_kind_of_exit(code: i32) -> ErrorKind {
    match code {
        EXIT_IMAGE => ErrorKind::Unsupported,
        EXIT_SYSTEM => ErrorKind::Kernel,
        EXIT_BUSY => ErrorKind::Busy,
        EXIT_USAGE => ErrorKind::InvalidInput,
        _ => ErrorKind::Io,
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
    /// Read disk N (1 = the first, the default) of an OVA archive: its .vmdk members in
    /// archive order, as `info` lists them.
    #[arg(long, value_name = "N")]
    disk: Option<u32>,
    #[command(flatten)]
    policy: config::PolicyArgs,
}

/// Opens an image read-only as `ImageArgs` say.
fn open_for_reading(args: &ImageArgs) -> crate::Result<Box<dyn crate::image::DiskImage>> {
    let options = crate::image::OpenOptions {
        format: args.format,
        force_share: args.force_share,
        disk: args.disk,
        ..args.policy.open_options()?
    };
    crate::image::open_image(&args.image, &options)
}

/// How the commands that only read open images: `--format`, `-U`, `--snapshot`.
#[derive(Debug, clap::Args)]
struct ReadArgs {
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
    /// Read disk N (1 = the first, the default) of an OVA archive: its .vmdk members in
    /// archive order, as `info` lists them.
    #[arg(long, value_name = "N")]
    disk: Option<u32>,
    #[command(flatten)]
    policy: config::PolicyArgs,
}

impl ReadArgs {
    /// The options to open the images with, read-only; an error if the configuration
    /// file cannot be used.
    fn open_options(&self) -> crate::Result<crate::image::OpenOptions> {
        Ok(crate::image::OpenOptions {
            format: self.format,
            force_share: self.force_share,
            snapshot: self.snapshot.clone(),
            disk: self.disk,
            ..self.policy.open_options()?
        })
    }
}

/// The arguments of commands that read guest contents: images plus an optional piece.
#[derive(Debug, clap::Args)]
struct SourceArgs {
    /// The image (or block device); give every disk of the guest for a VG spanning them.
    #[arg(required = true)]
    images: Vec<std::path::PathBuf>,
    #[command(flatten)]
    read: ReadArgs,
    #[command(flatten)]
    piece: piece::PieceArgs,
}

/// Opens what `SourceArgs` name, read-only, as `luks` says: every LUKS volume in the
/// images unlocked first (`--key-file` alone), the chosen piece decrypted (`--luks`).
fn open_source_for_reading(
    args: &SourceArgs,
    luks: &luks::LuksArgs,
) -> crate::Result<std::sync::Arc<dyn crate::image::DiskImage>> {
    let options = args.read.open_options()?;
    let piece = args.piece.piece();
    let unlock = luks.unlock();
    let served = crate::serve::open_piece(&args.images, &options, piece.as_ref(), unlock.as_ref())?;
    luks.apply(served.image)
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

    /// Parses `imgblk ARGS...`, panicking with clap's message on failure.
    pub(super) fn parse(args: &[&str]) -> Command {
        Cli::try_parse_from(std::iter::once("imgblk").chain(args.iter().copied()))
            .unwrap_or_else(|e| panic!("{args:?}: {e}"))
            .command
    }

    #[test]
    fn options_are_accepted_between_positionals() {
        for args in [
            ["mount", "a.img", "--lv", "vg/lv", "/mnt"],
            ["attach", "a.img", "--lv", "vg/lv", "b.img"],
            ["cat", "a.img", "--lv", "vg/lv", "b.img"],
            ["map", "a.img", "--lv", "vg/lv", "b.img"],
            ["fsck", "a.img", "--jobs", "2", "b.img"],
            ["inspect", "a.img", "--format", "raw", "b.img"],
        ] {
            parse(&args);
        }
    }

    #[test]
    fn mount_usage_names_each_positional_once() {
        let usage = Cli::command()
            .find_subcommand_mut("mount")
            .unwrap()
            .render_usage()
            .to_string();
        assert!(
            usage.ends_with("mount [OPTIONS] <IMAGE>... <MOUNTPOINT>"),
            "{usage}"
        );
    }

    #[test]
    fn long_help_shows_the_examples_of_short_help() {
        let mut cli = Cli::command();
        cli.build();
        for command in std::iter::once(&cli).chain(cli.get_subcommands()) {
            let (Some(short), Some(long)) =
                (command.get_after_help(), command.get_after_long_help())
            else {
                continue;
            };
            assert!(
                long.to_string().starts_with(&short.to_string()),
                "{} --help lacks the examples of -h",
                command.get_name()
            );
        }
    }

    #[test]
    fn fsck_overlay_is_memory_only() {
        assert!(matches!(
            parse(&["fsck", "--repair", "--overlay", "memory", "a.img"]),
            Command::Fsck(_)
        ));
        let file = [
            "imgblk",
            "fsck",
            "--repair",
            "--overlay",
            "fix.qcow2",
            "a.img",
        ];
        let e = Cli::try_parse_from(file).unwrap_err();
        assert_eq!(e.kind(), clap::error::ErrorKind::InvalidValue);
    }

    #[test]
    fn pieces_do_not_complete_as_file_names() {
        let cli = Cli::command();
        let attach = cli.find_subcommand("attach").unwrap();
        for piece in ["part", "lv"] {
            let arg = attach
                .get_arguments()
                .find(|a| a.get_id() == piece)
                .unwrap();
            assert_eq!(arg.get_value_hint(), clap::ValueHint::Other, "--{piece}");
        }
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
        let denied = || Error::new(ErrorKind::Permission, "x");
        assert_eq!(exit_code(&denied()), EXIT_SYSTEM);
        assert_eq!(exit_code(&denied().with_path("/img".as_ref())), EXIT_IMAGE);
    }
}
