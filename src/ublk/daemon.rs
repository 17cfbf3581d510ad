//! Running a device in the background like `qemu-nbd -c`: `attach` forks, the child becomes
//! the daemon and reports "live" (or its error) through a pipe, and only then does the
//! parent print the device and exit. Fork happens before any thread or io_uring exists.

use super::registry::DeviceRecord;
use crate::error::{Error, ErrorKind, Result};
use serde::{Deserialize, Serialize};
use std::fs::File;
use std::io::{BufRead, BufReader, Write};
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::Path;
use std::sync::{Arc, Mutex};

/// The one message the daemon sends its parent.
#[derive(Debug, Serialize, Deserialize)]
enum Report {
    /// The device is live.
    Live(Box<DeviceRecord>),
    /// Setting up failed; the daemon is exiting.
    Failed { kind: ErrorKind, message: String },
}

/// The daemon's end of the pipe to the waiting `attach`. Clones share the pipe; the first
/// report sent wins and later ones do nothing.
#[derive(Debug, Clone, Default)]
pub struct Notifier {
    pipe: Arc<Mutex<Option<File>>>,
}

impl Notifier {
    /// Tells the parent the device is live. Later calls do nothing.
    pub fn live(&self, record: &DeviceRecord) {
        self.send(&Report::Live(Box::new(record.clone())));
    }

    /// Tells the parent setting up failed. Later calls do nothing.
    pub fn failed(&self, error: &Error) {
        self.send(&Report::Failed {
            kind: error.kind(),
            message: error.to_string(),
        });
    }

    fn send(&self, report: &Report) {
        let pipe = self.pipe.lock().ok().and_then(|mut slot| slot.take());
        if let Some(mut pipe) = pipe {
            if let Ok(line) = serde_json::to_string(report) {
                let _ = writeln!(pipe, "{line}");
            }
        }
    }
}

/// Which side of the fork we are on.
pub enum Role {
    /// The original process: wait for the daemon's report with [`wait_for_report`].
    Parent(File),
    /// The daemon: serve, and report through the notifier.
    Daemon(Notifier),
}

/// Makes this process not dumpable (`PR_SET_DUMPABLE` 0, inherited by a forked daemon):
/// no core dump, and no ptrace or `/proc/PID/mem` for other users. A process that serves
/// a device holds guest data, and one that unlocked LUKS the volume's master key; neither
/// may land in a core file.
pub fn refuse_core_dumps() {
    // SAFETY: prctl with integer arguments only.
    if unsafe { libc::prctl(libc::PR_SET_DUMPABLE, 0, 0, 0, 0) } != 0 {
        tracing::warn!(error = %std::io::Error::last_os_error(),
            "cannot make the process undumpable: a core dump could hold guest data or keys");
    }
}

/// Forks. The child starts a new session, moves to `/`, and sends stdin/stdout to
/// /dev/null and stderr (the log) to `log`.
pub fn fork_daemon(log: &Path) -> Result<Role> {
    let (read_end, write_end): (OwnedFd, OwnedFd) =
        nix::unistd::pipe().map_err(|e| Error::io("pipe failed", e.into()))?;
    let log_file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .map_err(|e| Error::io("cannot open the daemon log", e).with_path(log))?;
    // SAFETY: imgblk is single-threaded here (no queue threads, no runtime yet), so the
    // child may run arbitrary code after fork.
    match unsafe { nix::unistd::fork() }.map_err(|e| Error::io("fork failed", e.into()))? {
        nix::unistd::ForkResult::Parent { .. } => {
            drop(write_end);
            Ok(Role::Parent(File::from(read_end)))
        }
        nix::unistd::ForkResult::Child => {
            drop(read_end);
            // A daemon must not die because `attach` stopped listening: get EPIPE instead.
            // SAFETY: setting a signal disposition; the child has a single thread.
            unsafe { libc::signal(libc::SIGPIPE, libc::SIG_IGN) };
            let _ = nix::unistd::setsid();
            let _ = std::env::set_current_dir("/");
            if let Ok(null) = std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .open("/dev/null")
            {
                let _ = nix::unistd::dup2(null.as_raw_fd(), 0);
                let _ = nix::unistd::dup2(null.as_raw_fd(), 1);
            }
            let _ = nix::unistd::dup2(log_file.as_raw_fd(), 2);
            Ok(Role::Daemon(Notifier {
                pipe: Arc::new(Mutex::new(Some(File::from(write_end)))),
            }))
        }
    }
}

/// Waits for the daemon's report: the live device's record, or the daemon's error.
pub fn wait_for_report(pipe: File, log: &Path) -> Result<DeviceRecord> {
    let mut line = String::new();
    BufReader::new(pipe)
        .read_line(&mut line)
        .map_err(|e| Error::io("reading the daemon's report failed", e))?;
    match serde_json::from_str::<Report>(line.trim()) {
        Ok(Report::Live(record)) => Ok(*record),
        Ok(Report::Failed { kind, message }) => Err(Error::new(kind, message)),
        Err(_) => Err(Error::new(
            ErrorKind::Io,
            format!(
                "the daemon exited before the device came up; see {}",
                log.display()
            ),
        )),
    }
}
