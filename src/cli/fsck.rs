//! `imgblk fsck`: check (or repair) every file system inside images, each served as a ublk
//! device of its own for the duration of its check.
//!
//! Each check runs `imgblk attach --json [--part N | --lv VG/LV] ...` as a child process
//! (the ordinary daemon machinery), runs the file system's checker on the device, and
//! always runs `imgblk detach` afterwards, also after a checker crash or a SIGINT/SIGTERM.

use super::child::{self, detach};
use super::find_program;
use super::piece::PieceArgs;
use super::{print_json, Escaped};
use crate::error::{Error, Result};
use crate::image::{open_image, DiskImage, Format, OpenOptions};
use crate::layout::{ContentKind, NodeKind};
use crate::serve::{LuksKey, Overlay};
use crate::ublk::device;
use clap::builder::{PossibleValuesParser, TypedValueParser};
use serde::Serialize;
use std::collections::VecDeque;

use std::fs::File;
use std::io::{IsTerminal, Read, Seek};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Exit status bit: file system errors were corrected (in the image).
pub const FSCK_REPAIRED: i32 = 1;
/// Exit status bit: file system errors are left (found read-only, not repairable, or
/// repaired only into a RAM overlay).
pub const FSCK_ERRORS_LEFT: i32 = 4;
/// Exit status bit: a check could not be done (attach failed, checker missing or failed).
pub const FSCK_OPERATIONAL: i32 = 8;
/// Exit status after SIGINT/SIGTERM.
pub const FSCK_INTERRUPTED: i32 = 130;

const FSCK_EXAMPLES: &str = "Examples:\n  imgblk fsck guest.qcow2\n  \
imgblk fsck --jobs 4 vm1.qcow2 vm2.vmdk\n  imgblk fsck --part 2 disk.raw\n  \
imgblk fsck --repair disk.raw\n  imgblk fsck --repair --overlay memory guest.qcow2   # dry-run repair\n  \
imgblk fsck --json --lv vg0/root disk.qcow2\n  \
imgblk fsck --untrusted download.qcow2   # it may name no file outside its folder";

const FSCK_HELP: &str = "\
Checkers:
  ext2/3/4 e2fsck -fn (--repair: e2fsck -fy); xfs xfs_repair -n (xfs_repair);
  vfat fsck.vfat -n (fsck.vfat -a); btrfs btrfs check --readonly (btrfs check --repair);
  ntfs ntfsfix -n (ntfsfix). For xfs, vfat, btrfs and ntfs, --repair first checks
  read-only, repairs only when errors were found, and checks again to tell the outcome.

Results:
  clean, errors (found and left), repaired, missing (checker not installed),
  failed (the device could not be attached, or the checker failed to run).

Exit status:
  Bits OR-ed together, like fsck(8):
  0    every file system is clean
  1    errors were corrected in the image (--repair)
  4    errors are left: found read-only, not repairable, or repaired only into the
       RAM overlay (--repair --overlay memory leaves the image as it was)
  8    operational error: an image could not be opened or attached (another writer
       holds it, for --repair), a checker is not installed, or a checker failed; also
       when the system lacks ublk or root: said once on stderr, before any check
  130  interrupted (SIGINT/SIGTERM); every device this run attached is detached
  2    bad usage
  Images with no file system to check give 0, with a note on stderr.";

/// Check the file systems inside images (e2fsck, xfs_repair, fsck.vfat, btrfs check).
///
/// Finds every file system in the images' partitions and logical volumes (as `inspect`
/// shows them), serves each as a ublk device of its own, runs its checker on it, and
/// detaches it again. Read-only unless --repair; with --repair --overlay memory the repair
/// goes into RAM and the image is left untouched (a dry run of the repair).
#[derive(Debug, clap::Args)]
#[command(
    after_help = FSCK_EXAMPLES,
    after_long_help = super::long_help(FSCK_EXAMPLES, FSCK_HELP)
)]
pub struct FsckArgs {
    /// The images (or block devices); each is checked on its own.
    #[arg(required = true)]
    images: Vec<PathBuf>,
    #[command(flatten)]
    piece: PieceArgs,
    #[command(flatten)]
    key: super::luks::KeyFileArgs,
    /// Image format of all the images; detected from each file's magic when omitted.
    #[arg(short, long, value_enum)]
    format: Option<Format>,
    /// How many file systems to check at once.
    #[arg(short, long, default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..=64))]
    jobs: u16,
    /// Repair what the checkers find (devices are attached read-write; refused while
    /// another writer holds the image).
    #[arg(long)]
    repair: bool,
    /// With --repair: write the repairs into RAM (`memory`), leaving the image as it was.
    /// (Every file system checked gets its own RAM overlay: no overlay file.)
    #[arg(long, value_name = "memory",
          value_parser = PossibleValuesParser::new(["memory"]).map(|_| Overlay::Memory))]
    overlay: Option<Overlay>,
    /// Print the results as a JSON array instead of a table.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    policy: super::config::PolicyArgs,
}

/// How one check ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Outcome {
    /// No errors.
    Clean,
    /// Errors found and left.
    Errors,
    /// Errors repaired.
    Repaired,
    /// The checker is not installed.
    Missing,
    /// Could not check.
    Failed,
    /// Stopped by a signal.
    Interrupted,
}

impl Outcome {
    fn as_str(self) -> &'static str {
        match self {
            Outcome::Clean => "clean",
            Outcome::Errors => "errors",
            Outcome::Repaired => "repaired",
            Outcome::Missing => "missing",
            Outcome::Failed => "failed",
            Outcome::Interrupted => "interrupted",
        }
    }
}

/// The result of one file system's check.
#[derive(Debug, Clone, Serialize)]
pub struct CheckResult {
    /// The image.
    pub image: PathBuf,
    /// The layout name of the piece (`disk0`, `disk0p2`, `vg0/root`).
    pub piece: String,
    /// File system type.
    pub fs: String,
    /// How it ended.
    pub result: Outcome,
    /// The checker's exit code (of its last run), if it ran to an exit.
    pub exit: Option<i32>,
    /// Seconds the check took, attach and detach included.
    pub seconds: f64,
    /// Where the writes went: `memory` for --overlay memory.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub overlay: Option<String>,
    /// What went wrong, or the checker's last lines when it found something.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

/// One file system to check.
#[derive(Debug, Clone)]
struct Check {
    image: PathBuf,
    piece: String,
    kind: ContentKind,
}

/// State shared by the workers: the stop flag, and what is to be cleaned up on a signal.
struct Shared {
    stop: Arc<AtomicBool>,
    devices: Mutex<Vec<u32>>,
    mode: Mode,
    format: Option<Format>,
    /// `--key-file`: unlocks the LUKS volumes the checked file systems lie in.
    key_file: Option<PathBuf>,
    /// `--backing-policy`, `--untrusted`, `--allow-devices`, for every attach.
    policy_args: Vec<std::ffi::OsString>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    ReadOnly,
    Repair,
    RepairInMemory,
}

/// Runs `imgblk fsck`.
pub fn run(mut args: FsckArgs) -> Result<i32> {
    if args.overlay.is_some() && !args.repair {
        return Err(Error::invalid(
            "--overlay only matters with --repair (a read-only check writes nothing)",
        ));
    }
    crate::serve::spec::share_stdin_key(&mut args.key.key_file)?;
    let mode = match (args.repair, &args.overlay) {
        (false, _) => Mode::ReadOnly,
        (true, None) => Mode::Repair,
        (true, Some(_)) => Mode::RepairInMemory,
    };
    let stop = Arc::new(AtomicBool::new(false));
    for signal in [libc::SIGINT, libc::SIGTERM] {
        signal_hook::flag::register(signal, stop.clone())
            .map_err(|e| Error::io("cannot install signal handler", e))?;
    }
    let options = OpenOptions {
        format: args.format,
        ..args.policy.open_options()?
    };
    let mut results = Vec::new();
    let mut groups: VecDeque<Vec<Check>> = VecDeque::new();
    for image in &args.images {
        match find_checks(image, &args.piece, &options, args.key.key().as_ref()) {
            Ok(checks) if mode == Mode::Repair => groups.push_back(checks),
            Ok(checks) => groups.extend(checks.into_iter().map(|c| vec![c])),
            Err(e) => results.push(CheckResult {
                image: image.clone(),
                piece: "-".into(),
                fs: "-".into(),
                result: Outcome::Failed,
                exit: None,
                seconds: 0.0,
                overlay: None,
                message: Some(e.to_string()),
            }),
        }
    }
    groups.retain(|g| !g.is_empty());
    if groups.is_empty() && results.is_empty() {
        eprintln!("imgblk: no file systems found");
    }
    if !groups.is_empty() {
        // once, not once per file system: every check would fail alike; exit 8, fsck's
        // operational error, not 4, which says a file system has errors
        if let Err(e) = device::check_available() {
            eprintln!("imgblk: {}", Escaped(&e));
            return Ok(FSCK_OPERATIONAL);
        }
    }
    let shared = Arc::new(Shared {
        stop: stop.clone(),
        devices: Mutex::new(Vec::new()),
        mode,
        format: args.format,
        key_file: args.key.key_file.clone(),
        policy_args: args.policy.cli_args(),
    });
    let progress = Progress::new(!args.json || std::io::stderr().is_terminal());
    results.extend(run_all(&shared, groups, args.jobs.into(), &progress));
    // anything a worker could not detach (it should never remain): detach it now
    let left: Vec<u32> = std::mem::take(&mut *lock(&shared.devices));
    for id in left {
        if let Err(e) = detach(id) {
            eprintln!("imgblk: /dev/ublkb{id}: {}", Escaped(&e));
        }
    }
    if args.json {
        print_json(&results)?;
    } else {
        print_table(&results);
    }
    if stop.load(Ordering::SeqCst) {
        return Ok(FSCK_INTERRUPTED);
    }
    Ok(exit_status(&results))
}

/// The fsck-style exit status of a set of results.
pub fn exit_status(results: &[CheckResult]) -> i32 {
    results.iter().fold(0, |code, r| {
        code | match r.result {
            Outcome::Clean => 0,
            Outcome::Repaired if r.overlay.is_some() => FSCK_ERRORS_LEFT,
            Outcome::Repaired => FSCK_REPAIRED,
            Outcome::Errors => FSCK_ERRORS_LEFT,
            Outcome::Missing | Outcome::Failed => FSCK_OPERATIONAL,
            Outcome::Interrupted => 0,
        }
    })
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

/// The file systems of `image` (only the piece asked for, if any).
fn find_checks(
    image: &Path,
    piece: &PieceArgs,
    options: &OpenOptions,
    key: Option<&LuksKey>,
) -> Result<Vec<Check>> {
    // opened (shared lock) only for the discovery, and closed before any attach
    let opened: Arc<dyn DiskImage> = Arc::from(open_image(image, options)?);
    let layout = crate::serve::discover_with(&[opened], key)?;
    let wanted = piece.piece().map(|p| p.to_string());
    let checks: Vec<Check> = layout
        .nodes()
        .into_iter()
        .filter(|n| n.kind != NodeKind::Extended)
        .filter(|n| wanted.as_deref().is_none_or(|w| n.name == w))
        .filter_map(|n| {
            let kind = n.content.as_ref()?.kind;
            checker(kind, false).map(|_| Check {
                image: image.to_path_buf(),
                piece: n.name.clone(),
                kind,
            })
        })
        .collect();
    if let (Some(w), true) = (&wanted, checks.is_empty()) {
        if let (None, Some(piece)) = (layout.find(w), piece.piece()) {
            crate::serve::select(&layout, &piece)?;
        }
        return Err(Error::invalid(format!(
            "{w} holds no file system imgblk can check"
        )));
    }
    Ok(checks)
}

/// Every file system fsck checks, with its checker program and the package that has it
/// (for `doctor`).
pub(super) const CHECKERS: [(ContentKind, &str, &str); 5] = [
    (ContentKind::Ext4, "e2fsck", "e2fsprogs"),
    (ContentKind::Xfs, "xfs_repair", "xfsprogs"),
    (ContentKind::Vfat, "fsck.vfat", "dosfstools"),
    (ContentKind::Btrfs, "btrfs", "btrfs-progs"),
    (ContentKind::Ntfs, "ntfsfix", "ntfs-3g"),
];

/// The checker command for `kind`: read-only, or repairing.
fn checker(kind: ContentKind, repair: bool) -> Option<(&'static str, &'static [&'static str])> {
    Some(match (kind, repair) {
        (ContentKind::Ext2 | ContentKind::Ext3 | ContentKind::Ext4, false) => ("e2fsck", &["-fn"]),
        (ContentKind::Ext2 | ContentKind::Ext3 | ContentKind::Ext4, true) => ("e2fsck", &["-fy"]),
        (ContentKind::Xfs, false) => ("xfs_repair", &["-n"]),
        (ContentKind::Xfs, true) => ("xfs_repair", &[]),
        (ContentKind::Vfat, false) => ("fsck.vfat", &["-n"]),
        (ContentKind::Vfat, true) => ("fsck.vfat", &["-a"]),
        (ContentKind::Btrfs, false) => ("btrfs", &["check", "--readonly"]),
        (ContentKind::Btrfs, true) => ("btrfs", &["check", "--repair"]),
        (ContentKind::Ntfs, false) => ("ntfsfix", &["-n"]),
        (ContentKind::Ntfs, true) => ("ntfsfix", &[]),
        _ => return None,
    })
}

/// Runs the groups on `jobs` threads (a group's checks one after the other).
fn run_all(
    shared: &Arc<Shared>,
    groups: VecDeque<Vec<Check>>,
    jobs: usize,
    progress: &Progress,
) -> Vec<CheckResult> {
    let order: Vec<(PathBuf, String)> = groups
        .iter()
        .flatten()
        .map(|c| (c.image.clone(), c.piece.clone()))
        .collect();
    let queue = Mutex::new(groups);
    let results = Mutex::new(Vec::new());
    std::thread::scope(|scope| {
        for _ in 0..jobs.max(1) {
            scope.spawn(|| loop {
                let Some(group) = lock(&queue).pop_front() else {
                    break;
                };
                for check in group {
                    let result = if shared.stop.load(Ordering::SeqCst) {
                        None
                    } else {
                        let bar = progress.start(&check);
                        let result = run_check(shared, &check);
                        progress.finish(bar, &result);
                        Some(result)
                    };
                    lock(&results).extend(result);
                }
            });
        }
    });
    let mut results = results.into_inner().unwrap_or_else(|e| e.into_inner());
    results.sort_by_key(|r| {
        order
            .iter()
            .position(|(i, p)| *i == r.image && *p == r.piece)
            .unwrap_or(usize::MAX)
    });
    results
}

/// Checks one file system: attach, run the checker(s), detach.
fn run_check(shared: &Shared, check: &Check) -> CheckResult {
    let start = Instant::now();
    let mut result = CheckResult {
        image: check.image.clone(),
        piece: check.piece.clone(),
        fs: check.kind.as_str().to_string(),
        result: Outcome::Failed,
        exit: None,
        seconds: 0.0,
        overlay: (shared.mode == Mode::RepairInMemory).then(|| "memory".to_string()),
        message: None,
    };
    let (program, _) = checker(check.kind, false).expect("only checkable kinds are queued");
    if find_program(program).is_none() {
        result.result = Outcome::Missing;
        result.message = Some(format!("{program} is not installed"));
    } else {
        match attach(shared, check) {
            Ok(id) => {
                let device = PathBuf::from(format!("/dev/ublkb{id}"));
                let (outcome, exit, message) = match wait_for_node(&device) {
                    Ok(()) => check_device(shared, check.kind, &device),
                    Err(e) => (Outcome::Failed, None, Some(e.to_string())),
                };
                (result.result, result.exit, result.message) = (outcome, exit, message);
                match detach(id) {
                    Ok(()) => lock(&shared.devices).retain(|&d| d != id),
                    Err(e) => {
                        result.result = Outcome::Failed;
                        result.message = Some(format!("cannot detach /dev/ublkb{id}: {e}"));
                    }
                }
            }
            Err(e) => {
                let hint = if shared.mode == Mode::Repair {
                    " (--repair --overlay memory repairs into RAM instead)"
                } else {
                    ""
                };
                result.message = Some(format!("{e}{hint}"));
            }
        }
    }
    result.seconds = (start.elapsed().as_secs_f64() * 10.0).round() / 10.0;
    result
}

/// `imgblk attach --json ...` for the check; returns the device id.
fn attach(shared: &Shared, check: &Check) -> Result<u32> {
    let mut args =
        child::piece_args(&check.piece, shared.key_file.as_deref()).ok_or_else(|| {
            Error::unsupported(format!(
                "{} cannot be attached on its own; attach its decrypted volume and check that \
             device",
                Escaped(&check.piece)
            ))
        })?;
    match shared.mode {
        Mode::ReadOnly => {}
        Mode::Repair => args.push("--rw".into()),
        Mode::RepairInMemory => args.extend(["--overlay".into(), "memory".into()]),
    }
    if let Some(format) = shared.format {
        args.extend(["--format".into(), format.to_string().into()]);
    }
    args.extend(shared.policy_args.iter().cloned());
    args.extend(["--".into(), check.image.clone().into()]);
    let record =
        child::attach(&args).map_err(|e| Error::new(e.kind(), format!("attach failed: {e}")))?;
    lock(&shared.devices).push(record.id);
    Ok(record.id)
}

fn wait_for_node(device: &Path) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !device.exists() {
        if Instant::now() > deadline {
            return Err(Error::new(
                crate::error::ErrorKind::Kernel,
                format!("{} did not appear", device.display()),
            ));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(())
}

/// Runs the checker(s) on `device` and classifies the outcome.
fn check_device(
    shared: &Shared,
    kind: ContentKind,
    device: &Path,
) -> (Outcome, Option<i32>, Option<String>) {
    let ext = matches!(
        kind,
        ContentKind::Ext2 | ContentKind::Ext3 | ContentKind::Ext4
    );
    let repair = shared.mode != Mode::ReadOnly;
    let run = |repairing: bool| match run_checker(shared, kind, repairing, device) {
        Ok(Some((status, output))) => Ok((status, output)),
        Ok(None) => Err((Outcome::Interrupted, None, Some("interrupted".to_string()))),
        Err(e) => Err((Outcome::Failed, None, Some(e.to_string()))),
    };
    let classify = |status: ExitStatus, output: String, repairing: bool| {
        let Some(code) = status.code() else {
            let message = format!("checker killed by signal {:?}\n{output}", status.signal());
            return (Outcome::Failed, None, Some(message.trim().to_string()));
        };
        let outcome = match (ext, code) {
            (_, 0) => Outcome::Clean,
            (true, 1 | 2) if repairing => Outcome::Repaired,
            (true, 1..=7) => Outcome::Errors,
            (true, _) => Outcome::Failed,
            (false, 1) => Outcome::Errors,
            (false, _) => Outcome::Failed,
        };
        let message = (outcome != Outcome::Clean).then(|| tail(&output, 10));
        (outcome, Some(code), message)
    };
    let first = match run(ext && repair) {
        Ok((status, output)) => classify(status, output, ext && repair),
        Err(stopped) => return stopped,
    };
    if ext || !repair || first.0 != Outcome::Errors {
        return first;
    }
    // others: errors found read-only; repair, then check again to see what is left
    match run(true) {
        Ok((status, _)) if status.code() == Some(0) => {}
        Ok((status, output)) => return classify(status, output, true),
        Err(stopped) => return stopped,
    }
    match run(false) {
        Ok((status, output)) => match classify(status, output, false) {
            (Outcome::Clean, code, _) => (Outcome::Repaired, code, None),
            other => other,
        },
        Err(stopped) => stopped,
    }
}

/// Runs a checker to its end: its exit status and combined output, or `None` when a
/// signal asked us to stop (the checker is then killed).
fn run_checker(
    shared: &Shared,
    kind: ContentKind,
    repair: bool,
    device: &Path,
) -> Result<Option<(ExitStatus, String)>> {
    let (program, args) = checker(kind, repair).expect("checkable kind");
    let program = find_program(program).unwrap_or_else(|| PathBuf::from(program));
    let mut output = scratch_file()?;
    let sink = || {
        output
            .try_clone()
            .map_err(|e| Error::io("cannot duplicate a descriptor", e))
    };
    let mut child = Command::new(&program)
        .args(args)
        .arg(device)
        .stdin(Stdio::null())
        .stdout(sink()?)
        .stderr(sink()?)
        .process_group(0)
        .spawn()
        .map_err(|e| Error::io(format!("cannot run {}", program.display()), e))?;
    let status = loop {
        if shared.stop.load(Ordering::SeqCst) {
            kill(&mut child);
            return Ok(None);
        }
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) => std::thread::sleep(Duration::from_millis(50)),
            Err(e) => return Err(Error::io("cannot wait for the checker", e)),
        }
    };
    let mut text = String::new();
    let _ = output.rewind();
    let _ = output.read_to_string(&mut text);
    Ok(Some((status, text)))
}

/// SIGTERM to the checker's group, SIGKILL if it lingers; reaps it.
fn kill(child: &mut Child) {
    let group = nix::unistd::Pid::from_raw(-(child.id() as i32));
    let _ = nix::sys::signal::kill(group, nix::sys::signal::Signal::SIGTERM);
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = nix::sys::signal::kill(group, nix::sys::signal::Signal::SIGKILL);
    let _ = child.wait();
}

/// An unlinked temporary file for a checker's output.
fn scratch_file() -> Result<File> {
    let dir = std::env::temp_dir();
    for attempt in 0..100u32 {
        let path = dir.join(format!(".imgblk-fsck-{}-{attempt}", std::process::id()));
        let opened = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&path);
        match opened {
            Ok(file) => {
                let _ = std::fs::remove_file(&path);
                return Ok(file);
            }
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(Error::io("cannot create a temporary file", e).with_path(&path)),
        }
    }
    Err(Error::invalid("cannot create a temporary file"))
}

/// The last `lines` non-empty lines of `text`.
fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// Spinners on a terminal, else one line per finished check (on stderr).
struct Progress {
    bars: Option<indicatif::MultiProgress>,
    lines: bool,
}

impl Progress {
    fn new(lines: bool) -> Self {
        let bars = std::io::stderr()
            .is_terminal()
            .then(indicatif::MultiProgress::new);
        Progress { bars, lines }
    }

    fn label(check: &Check) -> String {
        format!(
            "{} {} ({})",
            Escaped(check.image.display()),
            Escaped(&check.piece),
            check.kind.as_str()
        )
    }

    fn start(&self, check: &Check) -> Option<indicatif::ProgressBar> {
        let bars = self.bars.as_ref()?;
        let bar = bars.add(indicatif::ProgressBar::new_spinner());
        if let Ok(style) = indicatif::ProgressStyle::with_template("{spinner} [{elapsed:>4}] {msg}")
        {
            bar.set_style(style);
        }
        bar.set_message(format!("{}: checking", Self::label(check)));
        bar.enable_steady_tick(Duration::from_millis(120));
        Some(bar)
    }

    fn finish(&self, bar: Option<indicatif::ProgressBar>, result: &CheckResult) {
        let line = format!(
            "{} {} ({}): {} ({:.1}s)",
            Escaped(result.image.display()),
            Escaped(&result.piece),
            Escaped(&result.fs),
            result.result.as_str(),
            result.seconds
        );
        match bar {
            Some(bar) => bar.finish_with_message(line),
            None if self.lines => eprintln!("{line}"),
            None => {}
        }
    }
}

/// The final table, and the checker's last lines for what was not clean.
fn print_table(results: &[CheckResult]) {
    if results.is_empty() {
        return;
    }
    println!(
        "{:<32} {:<12} {:<6} {:<12} {:>4} {:>8}",
        "IMAGE", "PIECE", "FS", "RESULT", "EXIT", "TIME"
    );
    for r in results {
        let result = match (&r.overlay, r.result) {
            (Some(_), Outcome::Repaired) => "repaired-ram",
            _ => r.result.as_str(),
        };
        println!(
            "{:<32} {:<12} {:<6} {:<12} {:>4} {:>7.1}s",
            Escaped(r.image.display()),
            Escaped(&r.piece),
            Escaped(&r.fs),
            result,
            r.exit.map_or("-".to_string(), |c| c.to_string()),
            r.seconds
        );
    }
    for r in results.iter().filter(|r| r.message.is_some()) {
        println!("\n{} {}:", Escaped(r.image.display()), Escaped(&r.piece));
        for line in r.message.iter().flat_map(|m| m.lines()) {
            println!("  {}", Escaped(line));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn result(outcome: Outcome, overlay: bool) -> CheckResult {
        CheckResult {
            image: "x".into(),
            piece: "disk0p1".into(),
            fs: "ext4".into(),
            result: outcome,
            exit: Some(0),
            seconds: 0.0,
            overlay: overlay.then(|| "memory".into()),
            message: None,
        }
    }

    #[test]
    fn exit_status_ors_like_fsck() {
        assert_eq!(exit_status(&[]), 0);
        assert_eq!(exit_status(&[result(Outcome::Clean, false)]), 0);
        assert_eq!(exit_status(&[result(Outcome::Repaired, false)]), 1);
        assert_eq!(exit_status(&[result(Outcome::Repaired, true)]), 4);
        assert_eq!(
            exit_status(&[
                result(Outcome::Errors, false),
                result(Outcome::Missing, false)
            ]),
            12
        );
    }

    #[test]
    fn every_file_system_has_both_checkers() {
        for (kind, program, _) in CHECKERS {
            for repair in [false, true] {
                assert_eq!(
                    checker(kind, repair).map(|c| c.0),
                    Some(program),
                    "{kind:?}"
                );
            }
        }
        assert!(checker(ContentKind::Swap, false).is_none());
    }

    #[test]
    fn tail_keeps_the_last_lines() {
        assert_eq!(tail("a\n\nb\nc\n", 2), "b\nc");
    }
}
