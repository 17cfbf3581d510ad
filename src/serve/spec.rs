//! [`ServeSpec`]: everything that says what a device serves and how, built by `attach`
//! from its options and by `recover` from the record of a device whose daemon died.

use crate::error::{Error, Result};
use crate::image::{Format, OpenOptions};
use crate::layout::luks::MAX_KEY_LEN;
use crate::layout::PieceId;
use crate::ublk::daemon::refuse_core_dumps;
use crate::ublk::device::DeviceConfig;
use crate::ublk::registry::{self, DeviceRecord};
use std::io::Read;
use std::path::{Path, PathBuf};
use zeroize::Zeroizing;

/// What to serve and how: the images, how to open them, the piece, the LUKS key, the
/// overlay and the device's shape.
#[derive(Debug, Clone)]
pub struct ServeSpec {
    /// The images, as absolute paths: the first is the image; the others are the other
    /// disks of a guest VG spanning several.
    pub images: Vec<PathBuf>,
    /// How to open them.
    pub options: OpenOptions,
    /// The piece to serve, or `None` for the whole (first) image.
    pub piece: Option<PieceId>,
    /// Decrypt the piece as a LUKS volume with this key.
    pub luks: Option<LuksKey>,
    /// Unlock every LUKS volume in the images with this key before choosing the piece, so
    /// that it may be a logical volume inside one.
    pub unlock: Option<LuksKey>,
    /// Where writes go when not to the image.
    pub overlay: Option<Overlay>,
    /// The device's shape (and, for a recovery, the device to take over).
    pub device: DeviceConfig,
}

/// Where the key of a LUKS volume comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LuksKey {
    /// All bytes of this file (as `cryptsetup --key-file`).
    File(PathBuf),
    /// A passphrase typed on the terminal.
    Prompt,
}

/// The key file name that means standard input, as `cryptsetup --key-file -`: the key is
/// read from it, or typed at a prompt when it is a terminal.
pub const STDIN_KEY: &str = "-";

impl LuksKey {
    /// Reads the key: the file's bytes, or a passphrase typed on the terminal. It is wiped
    /// from memory when dropped, and the process holding it becomes undumpable.
    pub fn read(&self) -> Result<Zeroizing<Vec<u8>>> {
        refuse_core_dumps();
        match self {
            LuksKey::File(path) if path.as_os_str() == STDIN_KEY => {
                if std::io::IsTerminal::is_terminal(&std::io::stdin()) {
                    return prompt();
                }
                read_key(
                    std::io::stdin().lock(),
                    64 << 10,
                    Path::new("standard input"),
                )
            }
            LuksKey::File(path) => read_key_file(path),
            LuksKey::Prompt => {
                if !std::io::IsTerminal::is_terminal(&std::io::stdin()) {
                    return Err(Error::invalid(
                        "--luks needs --key-file when standard input is not a terminal",
                    ));
                }
                prompt()
            }
        }
    }

    /// What a device record keeps of it: the key file's absolute path, so that `recover`
    /// can unlock the volume again; nothing for a typed passphrase or a key that cannot
    /// be read again (standard input, `/dev/fd/N` as a shell's `<(...)` gives).
    pub fn recorded_file(&self) -> Result<Option<PathBuf>> {
        match self {
            LuksKey::File(path) if once_only(path) => Ok(None),
            LuksKey::File(path) => std::fs::canonicalize(path)
                .map(Some)
                .map_err(|e| Error::io("cannot find the key file", e).with_path(path)),
            LuksKey::Prompt => Ok(None),
        }
    }
}

/// Whether key file `path` is standard input or an inherited descriptor, gone after
/// this process.
fn once_only(path: &Path) -> bool {
    path.as_os_str() == STDIN_KEY
        || path.starts_with("/dev/fd")
        || path.starts_with("/proc/self/fd")
}

/// With key file `-` in `key_file`: reads the key now (from standard input, or typed at
/// a prompt) into a memory file that the commands this process runs inherit, and names
/// that file instead (`/proc/self/fd/N`), so that the key is asked for once and each child
/// reads it from there. Other key files are left as they are.
pub fn share_stdin_key(key_file: &mut Option<PathBuf>) -> Result<()> {
    if key_file.as_ref().is_none_or(|p| p.as_os_str() != STDIN_KEY) {
        return Ok(());
    }
    let key = LuksKey::File(STDIN_KEY.into()).read()?;
    // SAFETY: a valid C string; no flags, so that the descriptor is inherited.
    let fd = unsafe { libc::memfd_create(c"imgblk-luks-key".as_ptr(), 0) };
    if fd < 0 {
        return Err(Error::io(
            "cannot keep the key for the commands run",
            std::io::Error::last_os_error(),
        ));
    }
    // SAFETY: the descriptor was just created and is owned here alone.
    let file = unsafe { <std::fs::File as std::os::fd::FromRawFd>::from_raw_fd(fd) };
    std::io::Write::write_all(&mut &file, &key)
        .map_err(|e| Error::io("cannot keep the key for the commands run", e))?;
    // open until this process ends, for every child it starts
    let fd = std::os::fd::IntoRawFd::into_raw_fd(file);
    // /proc rather than /dev/fd, which a minimal /dev (no udev) lacks
    *key_file = Some(PathBuf::from(format!("/proc/self/fd/{fd}")));
    Ok(())
}

/// A passphrase typed on the terminal.
fn prompt() -> Result<Zeroizing<Vec<u8>>> {
    rpassword::prompt_password("Enter passphrase: ")
        .map(|typed| Zeroizing::new(typed.into_bytes()))
        .map_err(|e| Error::io("cannot read the passphrase", e))
}

/// The bytes of key file `path`, at most [`MAX_KEY_LEN`].
fn read_key_file(path: &Path) -> Result<Zeroizing<Vec<u8>>> {
    let file = std::fs::File::open(path)
        .map_err(|e| Error::io("cannot open the key file", e).with_path(path))?;
    let room = file.metadata().map_or(0, |m| m.len());
    read_key(file, room, path)
}

/// The bytes `reader` gives, at most [`MAX_KEY_LEN`]; `room` is how many are expected.
/// `what` names the source in errors.
fn read_key(reader: impl Read, room: u64, what: &Path) -> Result<Zeroizing<Vec<u8>>> {
    // Room for the whole key up front: a buffer that grew would leave copies behind.
    let room = room.min(MAX_KEY_LEN as u64) + 1;
    let mut key = Zeroizing::new(Vec::with_capacity(room as usize));
    reader
        .take(MAX_KEY_LEN as u64 + 1)
        .read_to_end(&mut key)
        .map_err(|e| Error::io("cannot read the key file", e).with_path(what))?;
    if key.len() > MAX_KEY_LEN {
        return Err(Error::invalid("key file larger than 8 MiB").with_path(what));
    }
    Ok(key)
}

/// Where a writable device sends its writes instead of the image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Overlay {
    /// A throw-away RAM overlay (`image::overlay::MemoryOverlay`): lost with the daemon.
    Memory,
    /// A qcow2 file backed by the image (see `qcow2::create::create_overlay`).
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

    /// Parses `--overlay` (and a record's `overlay`): `memory`, or a qcow2 file's path.
    pub fn parse(value: &str) -> std::result::Result<Overlay, String> {
        match value {
            "memory" => Ok(Overlay::Memory),
            "" => Err("an overlay is `memory` or the path of a new qcow2 file".to_string()),
            path => Ok(Overlay::File(PathBuf::from(path))),
        }
    }
}

impl ServeSpec {
    /// Whether the device accepts writes (to the image, or to its overlay).
    pub fn writable(&self) -> bool {
        self.options.writable || self.overlay.is_some()
    }

    /// Refuses `--overlay FILE` where a qcow2 backing reference cannot express what is
    /// served: a piece, a decrypted volume, a snapshot, several images.
    pub fn check_file_overlay(&self) -> Result<()> {
        if !matches!(self.overlay, Some(Overlay::File(_))) {
            return Ok(());
        }
        let why = if self.piece.is_some() {
            Some("a partition or LV")
        } else if self.luks.is_some() || self.unlock.is_some() {
            Some("a decrypted LUKS volume")
        } else if self.options.snapshot.is_some() {
            Some("an internal snapshot")
        } else if self.images.len() > 1 {
            Some("several images")
        } else {
            None
        };
        match why {
            Some(what) => Err(Error::unsupported(format!(
                "--overlay FILE makes a qcow2 backed by a whole image, which cannot stand \
                 for {what}; use --overlay memory"
            ))),
            None => Ok(()),
        }
    }

    /// Whether `record` is a device serving what this spec describes, so that serving
    /// the spec again may take that device over if its daemon died.
    pub fn matches(&self, record: &DeviceRecord) -> bool {
        record.image == self.images[0]
            && record.piece == self.piece
            && record.writable == self.options.writable
            && record.overlay.is_none()
            && self.overlay.is_none()
            && record.luks == self.luks.is_some()
            && record.key_file.is_some() == (self.luks.is_some() || self.unlock.is_some())
            && record.snapshot == self.options.snapshot
    }

    /// What serving `record`'s device again takes: its images, piece, key file, overlay
    /// and shape, set to take the device over. Refused for a RAM overlay (its writes died
    /// with the daemon) and for a LUKS volume unlocked with a typed passphrase (imgblk
    /// never keeps one).
    pub fn from_record(record: &DeviceRecord) -> Result<ServeSpec> {
        let overlay = record
            .overlay
            .as_deref()
            .map(Overlay::parse)
            .transpose()
            .map_err(Error::invalid)?;
        if overlay == Some(Overlay::Memory) {
            // Serving the image again would silently undo those writes under the file
            // system on top.
            return Err(Error::unsupported(format!(
                "{} had a RAM overlay, lost with its daemon: it cannot be recovered; \
                 unmount what uses it and `imgblk detach {}`",
                record.device.display(),
                record.id
            )));
        }
        let (luks, unlock) = match (record.luks, &record.key_file) {
            (false, None) => (None, None),
            // the key file unlocked every LUKS volume before the piece was chosen
            (false, Some(file)) => (None, Some(LuksKey::File(file.clone()))),
            (true, Some(file)) => (Some(LuksKey::File(file.clone())), None),
            (true, None) => {
                return Err(Error::unsupported(format!(
                    "{} shows a LUKS volume unlocked with a typed passphrase, which imgblk \
                     does not keep: recover has no key; detach it and attach again with \
                     --luks (attach with --key-file to make it recoverable)",
                    record.device.display()
                )))
            }
        };
        let format = match record.format_probed {
            true => None,
            false => record.format.parse::<Format>().ok(),
        };
        let mut images = vec![record.image.clone()];
        images.extend(record.more_images.iter().cloned());
        Ok(ServeSpec {
            images,
            options: OpenOptions {
                format,
                writable: record.writable && overlay.is_none(),
                direct: true,
                snapshot: record.snapshot.clone(),
                disk: record.disk,
                journal_dir: Some(registry::journal_dir()),
                policy: record.policy,
                ..OpenOptions::default()
            },
            piece: record.piece.clone(),
            luks,
            unlock,
            overlay,
            device: DeviceConfig {
                queues: record.queues,
                depth: record.depth,
                recover: Some(record.id),
                ..DeviceConfig::default()
            },
        })
    }

    /// The record of the device this spec serves, once opened as `served`; the daemon
    /// fills in the device id, node and pid when the device is live.
    pub fn record(&self, served: &super::Served) -> Result<DeviceRecord> {
        let key_file = match self.luks.as_ref().or(self.unlock.as_ref()) {
            Some(key) => key.recorded_file()?,
            None => None,
        };
        Ok(DeviceRecord {
            queues: self.device.queues,
            depth: self.device.depth,
            writable: self.writable(),
            overlay: self.overlay.as_ref().map(Overlay::name),
            more_images: self.images[1..].to_vec(),
            piece: served.piece.clone(),
            luks: self.luks.is_some(),
            key_file,
            snapshot: self.options.snapshot.clone(),
            disk: self.options.disk,
            policy: self.options.policy,
            format_probed: self.options.format.is_none() && self.overlay.is_none(),
            ..DeviceRecord::new(
                0,
                PathBuf::new(),
                &self.images[0],
                served.format,
                served.image.virtual_size(),
            )
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(luks: bool, key_file: Option<&str>, overlay: Option<&str>) -> DeviceRecord {
        DeviceRecord {
            luks,
            key_file: key_file.map(PathBuf::from),
            overlay: overlay.map(str::to_string),
            writable: true,
            piece: Some(PieceId::Partition(2)),
            ..DeviceRecord::new(
                3,
                "/dev/ublkb3".into(),
                Path::new("/i"),
                Format::Qcow2,
                1 << 20,
            )
        }
    }

    #[test]
    fn a_record_is_served_again_as_it_was() {
        let spec = ServeSpec::from_record(&record(true, Some("/etc/k"), None)).unwrap();
        assert_eq!(spec.luks, Some(LuksKey::File("/etc/k".into())));
        assert_eq!(spec.piece, Some(PieceId::Partition(2)));
        assert_eq!(spec.options.format, Some(Format::Qcow2));
        assert!(spec.options.writable && spec.options.journal_dir.is_some());
        assert_eq!(spec.device.recover, Some(3));
        let file = ServeSpec::from_record(&record(false, None, Some("/o.qcow2"))).unwrap();
        assert_eq!(file.overlay, Some(Overlay::File("/o.qcow2".into())));
        assert!(!file.options.writable && file.writable());
    }

    #[test]
    fn lost_writes_and_typed_passphrases_are_not_recovered() {
        let typed = ServeSpec::from_record(&record(true, None, None)).unwrap_err();
        assert!(typed.to_string().contains("typed passphrase"), "{typed}");
        assert!(typed.to_string().contains("/dev/ublkb3"), "{typed}");
        let memory = ServeSpec::from_record(&record(false, None, Some("memory"))).unwrap_err();
        assert!(memory.to_string().contains("RAM overlay"), "{memory}");
    }

    #[test]
    fn reading_a_key_makes_the_process_undumpable() {
        let file = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(file.path(), b"secret").unwrap();
        let key = LuksKey::File(file.path().to_path_buf()).read().unwrap();
        assert_eq!(key.as_slice(), b"secret");
        // SAFETY: prctl with integer arguments only.
        let dumpable = unsafe { libc::prctl(libc::PR_GET_DUMPABLE, 0, 0, 0, 0) };
        assert_eq!(dumpable, 0, "a process holding a key can dump core");
    }

    #[test]
    fn only_a_key_file_is_recorded_as_an_absolute_path() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("k"), b"key").unwrap();
        let key = LuksKey::File(dir.path().join(".").join("k"));
        let recorded = key.recorded_file().unwrap().unwrap();
        assert_eq!(recorded, dir.path().canonicalize().unwrap().join("k"));
        assert_eq!(LuksKey::Prompt.recorded_file().unwrap(), None);
        for once in ["-", "/dev/fd/63", "/proc/self/fd/5"] {
            let key = LuksKey::File(once.into());
            assert_eq!(key.recorded_file().unwrap(), None, "{once}");
        }
        let mut named = Some(PathBuf::from("/etc/keys/disk.key"));
        share_stdin_key(&mut named).unwrap();
        assert_eq!(
            named,
            Some(PathBuf::from("/etc/keys/disk.key")),
            "left as it is"
        );
    }
}
