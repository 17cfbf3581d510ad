//! `imgblk detach`: flush and remove a device, waiting until it is gone.

use super::{print_json, Escaped, EXIT_OK};
use crate::error::{Error, ErrorKind, Result};
use crate::image::{open_image, OpenOptions};
use crate::layout::PieceId;
use crate::ublk::device;
use crate::ublk::registry::{self, DeviceRecord};
use serde::Serialize;
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// Remove a device created by `imgblk attach`.
///
/// Asks the serving daemon to flush and stop, and waits until /dev/ublkbN is gone. A device
/// whose daemon died is deleted directly. A device that is mounted (or held by
/// device-mapper) is refused unless --force.
#[derive(Debug, clap::Args)]
#[command(
    after_help = "Examples:\n  imgblk detach /dev/ublkb0\n  imgblk detach 0\n  imgblk detach --all\n  \
imgblk detach --json --all"
)]
pub struct DetachArgs {
    /// The device: /dev/ublkbN or its id N.
    #[arg(required_unless_present = "all", conflicts_with = "all")]
    device: Option<String>,
    /// Detach every imgblk device (and orphaned ublk devices).
    #[arg(long)]
    all: bool,
    /// Detach even if the device is mounted or held (its users will see I/O errors).
    #[arg(long)]
    force: bool,
    /// Seconds to wait for the daemon to stop.
    #[arg(long, default_value_t = 30)]
    timeout: u64,
    /// Print the devices detached as a JSON array (also when some could not be).
    #[arg(long)]
    json: bool,
}

/// What `detach --json` says of a device it removed: the device, and what it served when
/// imgblk had its record (an orphaned ublk device of another program has none).
#[derive(Debug, Serialize)]
struct Detached {
    /// ublk device id.
    id: u32,
    /// Its block device node, `/dev/ublkbN`.
    device: PathBuf,
    /// The image it served.
    #[serde(skip_serializing_if = "Option::is_none")]
    image: Option<PathBuf>,
    /// The piece of the image it served, when not the whole image.
    #[serde(skip_serializing_if = "Option::is_none")]
    piece: Option<PieceId>,
}

impl Detached {
    /// Device `id`, with what its `record` says it served.
    fn new(id: u32, record: Option<&DeviceRecord>) -> Detached {
        Detached {
            id,
            device: PathBuf::from(format!("/dev/ublkb{id}")),
            image: record.map(|r| r.image.clone()),
            piece: record.and_then(|r| r.piece.clone()),
        }
    }
}

/// Runs `imgblk detach`.
pub fn run(args: DetachArgs) -> Result<i32> {
    let ids = match &args.device {
        Some(name) => vec![parse_device(name)?],
        None => all_ids(),
    };
    let timeout = Duration::from_secs(args.timeout);
    let single = ids.len() == 1;
    let mut detached = Vec::new();
    let mut failed = Vec::new();
    for id in ids {
        match detach(id, args.force, timeout) {
            Ok(done) => detached.push(done),
            Err(e) => failed.push((id, e)),
        }
    }
    if args.json {
        print_json(&detached)?;
    }
    if single {
        if let Some((_, e)) = failed.pop() {
            return Err(e);
        }
    }
    for (id, e) in &failed {
        eprintln!("imgblk: /dev/ublkb{id}: {}", Escaped(e));
    }
    if !failed.is_empty() {
        return Err(Error::new(
            ErrorKind::Busy,
            format!("{} device(s) could not be detached", failed.len()),
        ));
    }
    Ok(EXIT_OK)
}

/// Turns `/dev/ublkbN`, `ublkbN` or `N` into the id N.
pub fn parse_device(name: &str) -> Result<u32> {
    let base = name.rsplit('/').next().unwrap_or(name);
    base.strip_prefix("ublkb")
        .unwrap_or(base)
        .parse()
        .map_err(|_| {
            Error::invalid(format!(
                "`{name}` is not a ublk device (expected /dev/ublkbN or N)"
            ))
        })
}

fn all_ids() -> Vec<u32> {
    let mut ids: Vec<u32> = registry::all().iter().map(|r| r.id).collect();
    ids.extend(device::kernel_device_ids());
    ids.sort_unstable();
    ids.dedup();
    ids
}

/// Detaches device `id`; says what was detached.
fn detach(id: u32, force: bool, timeout: Duration) -> Result<Detached> {
    let record = registry::load(id);
    let done = Detached::new(id, record.as_ref());
    if !device::kernel_has_device(id) {
        if let Some(record) = &record {
            registry::remove_if_served_by(id, record.pid);
            return Ok(done);
        }
        return Err(Error::new(
            ErrorKind::NotFound,
            format!("no ublk device {id}"),
        ));
    }
    let user = device::device_user(id);
    if let (Some(user), false) = (&user, force) {
        return Err(Error::new(
            ErrorKind::Busy,
            format!("in use: {user}; unmount it first, or use --force"),
        ));
    }
    // A daemon asked to stop (SIGTERM) leaves a device in use for recovery; SIGUSR1
    // makes it remove the device all the same.
    let signal = if user.is_some() {
        libc::SIGUSR1
    } else {
        libc::SIGTERM
    };
    let daemon = record.as_ref().filter(|r| is_server(id, r));
    let signalled = match daemon {
        Some(record) => registry::signal_daemon(record, signal)?,
        None => false,
    };
    match daemon {
        Some(record) if signalled => wait_for_daemon(id, record, force, timeout)?,
        _ => {
            device::force_delete(id)?;
            if let Some(record) = &record {
                settle_journal(record);
            }
        }
    }
    if let Some(record) = &record {
        registry::remove_if_served_by(id, record.pid);
    }
    Ok(done)
}

/// After deleting the device of a daemon that died: replays into the image what the
/// daemon's metadata journal kept (see `qcow2::journal`), so that the writes it completed
/// are in the file for whatever opens it next, not only for imgblk's next writable open.
fn settle_journal(record: &DeviceRecord) {
    if !record.writable || record.overlay.as_deref() == Some("memory") {
        return;
    }
    let files = match &record.overlay {
        Some(file) => vec![std::path::PathBuf::from(file)],
        None => std::iter::once(&record.image)
            .chain(&record.more_images)
            .cloned()
            .collect(),
    };
    let options = OpenOptions {
        writable: true,
        journal_dir: Some(registry::journal_dir()),
        policy: record.policy,
        ..OpenOptions::default()
    };
    for file in files {
        // Opening replays and flushes; closing removes the journal.
        if let Err(e) = open_image(&file, &options) {
            tracing::warn!(image = %file.display(), error = %e,
                "cannot replay the metadata journal of the dead daemon; the next `imgblk attach --rw` will");
        }
    }
}

/// Whether the kernel agrees that `record`'s daemon serves device `id` (it names the pid
/// that started or last recovered the device; a kernel that cannot be asked is trusted).
fn is_server(id: u32, record: &DeviceRecord) -> bool {
    match device::server_pid(id) {
        Some(pid) if pid != record.pid => {
            tracing::warn!(
                device = id,
                recorded = record.pid,
                kernel = pid,
                "the kernel names another daemon than the record; not signalling"
            );
            false
        }
        _ => true,
    }
}

/// Waits, after the signal, for `record`'s daemon to go, then looks at what it left. A
/// daemon that exits leaving its device behind found it in use (mounted since the check)
/// and left it for recovery: with `force` the device is deleted then, else that is the
/// error. The device is told apart from a new one under the same id by its server pid
/// (see [`device::still_served_by`]).
fn wait_for_daemon(id: u32, record: &DeviceRecord, force: bool, timeout: Duration) -> Result<()> {
    let deadline = Instant::now() + timeout;
    while record.daemon_alive() {
        if Instant::now() > deadline {
            return Err(Error::new(
                ErrorKind::Busy,
                format!(
                    "daemon {} did not stop within {}s",
                    record.pid,
                    timeout.as_secs()
                ),
            ));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    match (device::still_served_by(id, record.pid), force) {
        (false, _) => Ok(()),
        (true, true) => device::force_delete(id),
        (true, false) => Err(Error::new(
            ErrorKind::Busy,
            format!(
                "daemon {} left /dev/ublkb{id} for recovery, as it is in use: \
                 `imgblk recover {id}` serves it again; unmounted, detach removes it",
                record.pid
            ),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn device_names_parse() {
        assert_eq!(parse_device("/dev/ublkb3").unwrap(), 3);
        assert_eq!(parse_device("ublkb12").unwrap(), 12);
        assert_eq!(parse_device("7").unwrap(), 7);
        assert!(parse_device("/dev/sda").is_err());
    }

    #[test]
    fn json_names_the_device_and_what_it_served() {
        let record: DeviceRecord = serde_json::from_value(serde_json::json!({
            "id": 3, "device": "/dev/ublkb3", "image": "/img/disk.qcow2", "piece": "vg0/root",
            "format": "qcow2", "size": 4096, "queues": 1, "depth": 64, "writable": false,
            "pid": 1,
        }))
        .unwrap();
        assert_eq!(
            serde_json::to_value(Detached::new(3, Some(&record))).unwrap(),
            serde_json::json!({"id": 3, "device": "/dev/ublkb3",
                "image": "/img/disk.qcow2", "piece": "vg0/root"})
        );
        assert_eq!(
            serde_json::to_value(Detached::new(5, None)).unwrap(),
            serde_json::json!({"id": 5, "device": "/dev/ublkb5"})
        );
    }
}
