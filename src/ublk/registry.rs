//! Records of the devices imgblk serves, one JSON file per device under `/run/imgblk`, so
//! that `list` and `detach` work from any shell without asking the daemons.

use crate::error::{Error, Result};
use crate::image::policy::NamePolicy;
use crate::image::Format;
use crate::layout::PieceId;
use serde::{Deserialize, Serialize};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};

/// What `attach` reports and `list` shows for one device.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct DeviceRecord {
    /// ublk device id.
    pub id: u32,
    /// Block device node, `/dev/ublkbN`.
    pub device: PathBuf,
    /// The image file, as an absolute path.
    pub image: PathBuf,
    /// More images the device draws on (the other PVs of a VG spanning disks).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub more_images: Vec<PathBuf>,
    /// The piece served, when not the whole image: `disk0p2`, `vg0/root`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub piece: Option<PieceId>,
    /// Format of the image.
    pub format: String,
    /// The format was found by probing, not given (`--format`): a recovery probes again,
    /// so that a raw image keeps refusing format magic in sector 0 (see
    /// `image::raw::RawImage::probed`).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub format_probed: bool,
    /// Guest-visible size in bytes.
    pub size: u64,
    /// Hardware queues.
    pub queues: u16,
    /// Depth of each queue.
    pub depth: u16,
    /// Whether request data moves by zero copy (the driver lends the daemon the request's
    /// own pages) rather than through a buffer per tag.
    #[serde(default)]
    pub zero_copy: bool,
    /// Whether the device accepts writes.
    pub writable: bool,
    /// Where writes go when not to the image: `memory` for a RAM overlay (the image is
    /// then only read, and the writes are lost at detach).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub overlay: Option<String>,
    /// Process id of the serving daemon.
    pub pid: u32,
    /// When the daemon started, in clock ticks after boot (field 22 of /proc/PID/stat):
    /// with the pid, it tells the daemon from a later process given the same pid. Records
    /// written before imgblk kept it have none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_time: Option<u64>,
    /// Where the daemon logs, if it runs in the background.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub log: Option<PathBuf>,
    /// The device shows a decrypted LUKS volume (recovering it needs the key again).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub luks: bool,
    /// The absolute path of the key file that unlocked the LUKS volume (never the key),
    /// so that `recover` can unlock it again; `None` when the passphrase was typed. With
    /// `luks` false, the key file unlocked every LUKS volume of the images before the
    /// piece (an LV inside one) was chosen.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_file: Option<PathBuf>,
    /// The qcow2 internal snapshot served instead of the image's active state.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub snapshot: Option<String>,
    /// The disk of an OVA archive served (1-based), if one was picked.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disk: Option<u32>,
    /// Which host files the images may name, as the attach said (its options and the
    /// configuration file then), so that a recovery opens them alike.
    #[serde(default, skip_serializing_if = "is_default_policy")]
    pub policy: NamePolicy,
}

/// Whether `policy` is the default (left out of the record).
fn is_default_policy(policy: &NamePolicy) -> bool {
    *policy == NamePolicy::default()
}

impl DeviceRecord {
    /// Whether the device writes to its image (a writable device with an overlay does not).
    pub fn writes_image(&self) -> bool {
        self.writable && self.overlay.is_none()
    }

    /// Whether the daemon that served the device still runs: process `pid` exists, is no
    /// zombie, and started when the record says (for an old record without a start
    /// time: is called `imgblk`). A process that merely reuses the pid does not count.
    pub fn daemon_alive(&self) -> bool {
        let Some(process) = ProcessStat::read(self.pid) else {
            return false;
        };
        match self.start_time {
            Some(start) => process.start_time == start,
            None => process.comm == "imgblk",
        }
    }

    /// Builds the record of a device serving `image`.
    pub fn new(id: u32, device: PathBuf, image: &Path, format: Format, size: u64) -> Self {
        DeviceRecord {
            id,
            device,
            image: image.to_path_buf(),
            more_images: Vec::new(),
            piece: None,
            format: format.to_string(),
            format_probed: false,
            size,
            queues: 1,
            depth: 64,
            zero_copy: false,
            writable: false,
            overlay: None,
            pid: std::process::id(),
            start_time: process_start_time(std::process::id()),
            log: None,
            luks: false,
            key_file: None,
            snapshot: None,
            disk: None,
            policy: NamePolicy::default(),
        }
    }
}

/// The folder of device records: `$IMGBLK_RUN_DIR`, else `/run/imgblk`.
pub fn run_dir() -> PathBuf {
    std::env::var_os("IMGBLK_RUN_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/run/imgblk"))
}

/// The folder of the writable qcow2 images' metadata journals (`qcow2::journal`): in
/// the run folder, so that they outlive a daemon but never a reboot.
pub fn journal_dir() -> PathBuf {
    run_dir().join("journal")
}

fn record_path(id: u32) -> PathBuf {
    run_dir().join(format!("ublkb{id}.json"))
}

/// Writes (atomically) the record of a live device.
pub fn save(record: &DeviceRecord) -> Result<()> {
    let dir = run_dir();
    std::fs::create_dir_all(&dir)
        .map_err(|e| Error::io("cannot create the run folder", e).with_path(&dir))?;
    let path = record_path(record.id);
    let tmp = path.with_extension("json.tmp");
    let text = serde_json::to_string_pretty(record).map_err(|e| Error::invalid(e.to_string()))?;
    std::fs::write(&tmp, text)
        .map_err(|e| Error::io("cannot write device record", e).with_path(&tmp))?;
    std::fs::rename(&tmp, &path)
        .map_err(|e| Error::io("cannot write device record", e).with_path(&path))
}

/// Reads the record of device `id`, if there is one.
pub fn load(id: u32) -> Option<DeviceRecord> {
    let text = std::fs::read_to_string(record_path(id)).ok()?;
    serde_json::from_str(&text).ok()
}

/// Every record, sorted by id. Unreadable files are skipped.
pub fn all() -> Vec<DeviceRecord> {
    let mut records: Vec<DeviceRecord> = std::fs::read_dir(run_dir())
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| e.path().extension().is_some_and(|x| x == "json"))
        .filter_map(|e| serde_json::from_str(&std::fs::read_to_string(e.path()).ok()?).ok())
        .collect();
    records.sort_by_key(|r| r.id);
    records
}

/// Removes the record of device `id` if daemon `pid` is the one it names (missing is
/// fine). Device ids are reused at once: a record under the same id that another daemon
/// wrote since belongs to a new device, and is not this one's to remove.
pub fn remove_if_served_by(id: u32, pid: u32) {
    if load(id).is_some_and(|record| record.pid == pid) {
        let _ = std::fs::remove_file(record_path(id));
    }
}

/// The systemd unit (e.g. `imgblk@vm1.service`) whose cgroup holds process `pid`, if any.
pub fn systemd_unit(pid: u32) -> Option<String> {
    let cgroup = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).ok()?;
    unit_from_cgroup(&cgroup)
}

fn unit_from_cgroup(cgroup: &str) -> Option<String> {
    cgroup
        .lines()
        .flat_map(|line| line.rsplit(':').next().unwrap_or("").split('/'))
        .rfind(|part| part.ends_with(".service"))
        .map(str::to_string)
}

/// When process `pid` started (field 22 of /proc/PID/stat, clock ticks after boot), if
/// it runs (a zombie does not).
pub fn process_start_time(pid: u32) -> Option<u64> {
    ProcessStat::read(pid).map(|process| process.start_time)
}

/// What imgblk needs of /proc/PID/stat.
struct ProcessStat {
    /// The command name (field 2).
    comm: String,
    /// Field 22.
    start_time: u64,
}

impl ProcessStat {
    /// Reads process `pid`'s stat; `None` if there is no such process or it is a zombie.
    fn read(pid: u32) -> Option<ProcessStat> {
        if pid == 0 {
            return None;
        }
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        Self::parse(&stat)
    }

    /// Parses "PID (COMM) STATE PPID ...": the name may hold spaces and parentheses, so
    /// the fields after it are counted from the last ')'.
    fn parse(stat: &str) -> Option<ProcessStat> {
        let (head, rest) = stat.rsplit_once(')')?;
        let comm = head.split_once('(')?.1.to_string();
        let mut fields = rest.split_whitespace();
        // fields[0] is field 3 (the state), so field 22 is fields[19]
        let state = fields.next()?;
        if matches!(state, "Z" | "X") {
            return None;
        }
        let start_time = fields.nth(18)?.parse().ok()?;
        Some(ProcessStat { comm, start_time })
    }
}

/// Sends `signal` to the daemon of `record` if it still runs, through a pidfd opened
/// before the check, so the signal cannot reach a process that took the pid over in
/// between. Returns whether it was sent: `false` when the daemon is gone (whatever
/// process has its pid now is left alone).
pub fn signal_daemon(record: &DeviceRecord, signal: libc::c_int) -> Result<bool> {
    if record.pid == 0 {
        return Ok(false);
    }
    let pid = record.pid;
    // SAFETY: pidfd_open takes a pid and flags and returns a new fd or -1.
    let opened = unsafe { libc::syscall(libc::SYS_pidfd_open, pid as libc::pid_t, 0) };
    let Some(fd) = process_call(opened, || format!("cannot open process {pid}"))? else {
        return Ok(false);
    };
    // SAFETY: the fd was just returned by pidfd_open and is owned by no one else.
    let pidfd = unsafe { OwnedFd::from_raw_fd(fd as libc::c_int) };
    // The pidfd names whatever process had the pid when it was opened; if that process
    // is the daemon now, it was then too (a live process keeps its pid).
    if !record.daemon_alive() {
        return Ok(false);
    }
    // SAFETY: pidfd_send_signal with a valid pidfd, a signal number, no siginfo, no flags.
    let sent = unsafe {
        libc::syscall(
            libc::SYS_pidfd_send_signal,
            pidfd.as_raw_fd(),
            signal,
            std::ptr::null::<libc::siginfo_t>(),
            0,
        )
    };
    Ok(process_call(sent, || format!("cannot signal daemon {pid}"))?.is_some())
}

/// The outcome of a system call on a process that returned `ret`: its value, `None` if
/// the process is gone (`ESRCH`), or the error, described by `what`.
fn process_call(ret: libc::c_long, what: impl FnOnce() -> String) -> Result<Option<libc::c_long>> {
    if ret >= 0 {
        return Ok(Some(ret));
    }
    let error = std::io::Error::last_os_error();
    match error.raw_os_error() {
        Some(libc::ESRCH) => Ok(None),
        _ => Err(Error::io(what(), error)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unit_is_read_from_the_cgroup_path() {
        assert_eq!(
            unit_from_cgroup("0::/system.slice/system-imgblk.slice/imgblk@vm1.service\n")
                .as_deref(),
            Some("imgblk@vm1.service")
        );
        assert_eq!(
            unit_from_cgroup("0::/user.slice/user-0.slice/session-3.scope\n"),
            None
        );
    }

    fn record_of(pid: u32, start_time: Option<u64>) -> DeviceRecord {
        DeviceRecord {
            pid,
            start_time,
            ..DeviceRecord::new(0, "/dev/ublkb0".into(), Path::new("/a"), Format::Raw, 512)
        }
    }

    #[test]
    fn stat_fields_are_counted_after_the_name() {
        let stat = "42 (a (b) c) S 1 42 42 0 -1 4194560 100 0 0 0 1 2 0 0 20 0 1 0 \
                    123456 1000 10 18446744073709551615";
        let process = ProcessStat::parse(stat).unwrap();
        assert_eq!(process.comm, "a (b) c");
        assert_eq!(process.start_time, 123456);
        assert!(ProcessStat::parse(&stat.replace(") S", ") Z")).is_none());
    }

    #[test]
    fn the_daemon_is_alive_only_with_its_start_time() {
        let me = std::process::id();
        let start = process_start_time(me).expect("own start time");
        assert!(record_of(me, Some(start)).daemon_alive());
        assert!(!record_of(me, Some(start + 1)).daemon_alive());
        assert!(!record_of(0, Some(start)).daemon_alive());
        // No start time (an old record): only a process called imgblk counts.
        assert!(!record_of(me, None).daemon_alive());
    }

    /// PID reuse: the daemon was killed and an unrelated process got its pid. The record
    /// must say dead, and detach's signal must not reach that process.
    #[test]
    fn a_process_reusing_the_pid_is_neither_alive_nor_signalled() {
        let mut other = std::process::Command::new("sleep")
            .arg("100")
            .spawn()
            .unwrap();
        let pid = other.id();
        let start = process_start_time(pid).expect("start time of sleep");
        for record in [record_of(pid, Some(start - 1)), record_of(pid, None)] {
            assert!(!record.daemon_alive(), "{record:?}");
            assert!(!signal_daemon(&record, libc::SIGTERM).unwrap());
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
        let still_running = other.try_wait().unwrap().is_none();
        // The real daemon (right start time) does get the signal.
        let record = record_of(pid, Some(start));
        assert!(record.daemon_alive());
        assert!(signal_daemon(&record, libc::SIGKILL).unwrap());
        let status = other.wait().unwrap();
        assert!(
            still_running,
            "sleep was signalled through a record that is not its"
        );
        assert!(!status.success());
        assert!(!signal_daemon(&record, libc::SIGTERM).unwrap());
    }

    #[test]
    fn save_load_all_remove() {
        let dir = tempfile::tempdir().unwrap();
        std::env::set_var("IMGBLK_RUN_DIR", dir.path());
        let mut rec = DeviceRecord::new(
            7,
            "/dev/ublkb7".into(),
            Path::new("/img/a.qcow2"),
            Format::Qcow2,
            1 << 30,
        );
        rec.queues = 2;
        rec.pid = 100;
        save(&rec).unwrap();
        assert_eq!(load(7), Some(rec.clone()));
        assert_eq!(all(), vec![rec.clone()]);
        // another daemon's device under the same id keeps its record
        remove_if_served_by(7, 101);
        assert_eq!(load(7), Some(rec));
        remove_if_served_by(7, 100);
        assert_eq!(load(7), None);
        assert!(all().is_empty());
        std::env::remove_var("IMGBLK_RUN_DIR");
    }
}
