//! `imgblk attach` and `imgblk detach` run as child processes, for the commands that
//! attach devices on the way (`mount`, `fsck`): the daemon must be forked from a process
//! with a single thread, which `fsck`'s workers are not. The child's record is read back
//! typed, and its exit status turned back into the error kind it stands for, so that
//! the caller exits as `attach` would have.

use super::{error_kind_of_exit, own_exe};
use crate::error::{Error, ErrorKind, Result};
use crate::layout::PieceId;
use crate::ublk::registry::DeviceRecord;
use std::ffi::{OsStr, OsString};
use std::os::unix::process::CommandExt;
use std::path::Path;
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

/// The `imgblk attach` options that serve layout node `name` of the first image: none for
/// the whole disk, `--part N` or `--lv VG/LV` for a piece (with `--key-file` when the
/// layout was discovered with LUKS volumes unlocked by it), `--part N --luks --key-file`
/// for the decrypted partition `luks-disk0pN`; `None` for a node attach cannot name on
/// its own (a partition inside a decrypted volume, another disk's partition).
pub fn piece_args(name: &str, key_file: Option<&Path>) -> Option<Vec<OsString>> {
    let key = key_file.map(|k| vec![OsString::from("--key-file"), k.into()]);
    if name == "disk0" {
        return Some(Vec::new());
    }
    if let Some(piece) = PieceId::of_node(name) {
        let mut args: Vec<OsString> = piece.cli_args().map(OsString::from).to_vec();
        args.extend(key.unwrap_or_default());
        return Some(args);
    }
    match (name.strip_prefix("luks-").map(PieceId::of_node), key) {
        (Some(Some(PieceId::Partition(n))), Some(key)) => {
            let mut args: Vec<OsString> =
                vec!["--part".into(), n.to_string().into(), "--luks".into()];
            args.extend(key);
            Some(args)
        }
        _ => None,
    }
}

/// Runs `imgblk mount ARGS...` (the images and the mount point last), for a caller that
/// reads the mounted tree itself.
pub fn mount<I, S>(args: I) -> Result<()>
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    run(Command::new(own_exe()?).arg("mount").args(args)).map(drop)
}

/// Runs `imgblk umount MOUNTPOINT`: unmounts, flushes and detaches.
pub fn umount(mountpoint: &Path) -> Result<()> {
    run(Command::new(own_exe()?).arg("umount").arg(mountpoint)).map(drop)
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

#[cfg(test)]
mod tests {
    use super::*;

    fn shown(args: Option<Vec<OsString>>) -> Option<String> {
        args.map(|a| a.join(OsStr::new(" ")).to_string_lossy().into_owned())
    }

    #[test]
    fn nodes_become_attach_options() {
        let key = Path::new("/k");
        assert_eq!(shown(piece_args("disk0", None)).as_deref(), Some(""));
        assert_eq!(
            shown(piece_args("disk0p2", None)).as_deref(),
            Some("--part 2")
        );
        assert_eq!(
            shown(piece_args("vg/root", Some(key))).as_deref(),
            Some("--lv vg/root --key-file /k")
        );
        assert_eq!(
            shown(piece_args("luks-disk0p1", Some(key))).as_deref(),
            Some("--part 1 --luks --key-file /k")
        );
        assert_eq!(piece_args("luks-disk0p1", None), None);
        assert_eq!(piece_args("luks-disk0p1p2", Some(key)), None);
        assert_eq!(piece_args("disk1p1", None), None);
    }
}
