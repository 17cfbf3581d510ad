//! `imgblk attach` and `imgblk detach` run as child processes, for the commands that
//! attach devices on the way (`mount`, `fsck`): the daemon must be forked from a process
//! with a single thread, which `fsck`'s workers are not. The child's record is read back
//! typed, and its exit status turned back into the error kind it stands for, so that
//! the caller exits as `attach` would have.

use super::{error_kind_of_exit, own_exe};
use crate::error::{Error, ErrorKind, Result};
use crate::ublk::registry::DeviceRecord;
use std::ffi::OsStr;
use std::os::unix::process::CommandExt;
use std::process::{Command, Output, Stdio};

/// Runs `imgblk attach --json ARGS...` and returns the record of the device it made.
///
/// The child runs in its own process group, so that a Ctrl-C meant for the caller does
/// not kill it between creating the device and saying which it is.
pub fn attach<I, S>(args: I) -> Result<DeviceRecord>
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    let output = run(Command::new(own_exe()?)
        .args(["attach", "--json"])
        .args(args))?;
    serde_json::from_slice(&output.stdout)
        .map_err(|e| Error::invalid(format!("imgblk attach --json printed no record: {e}")))
}

/// Runs `imgblk detach ID`.
pub fn detach(id: u32) -> Result<()> {
    run(Command::new(own_exe()?).args(["detach", &id.to_string()])).map(drop)
}

/// Runs `command` (an imgblk command) to its end; its failure becomes an error of the
/// kind its exit status stands for, with its message.
fn run(command: &mut Command) -> Result<Output> {
    let output = command
        .stdin(Stdio::null())
        .process_group(0)
        .output()
        .map_err(|e| Error::io("cannot run imgblk", e))?;
    if output.status.success() {
        return Ok(output);
    }
    let message = String::from_utf8_lossy(&output.stderr);
    let message = message.trim().trim_start_matches("imgblk: ");
    let kind = output
        .status
        .code()
        .map_or(ErrorKind::Io, error_kind_of_exit);
    Err(Error::new(kind, message.to_string()))
}
