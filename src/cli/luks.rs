//! LUKS options of the commands: `--luks` and `--key-file` for `cat` and `attach`,
//! `--key-file` for `inspect`, and getting the key (a file, or a passphrase prompt).

use crate::error::{Error, ErrorKind, Result};
use crate::image::DiskImage;
use crate::layout::luks::{LuksVolume, MAX_KEY_LEN};
use crate::layout::{discover, ContentKind, Layout, Node};
use crate::ublk::daemon::refuse_core_dumps;
use crate::ublk::registry::DeviceRecord;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use zeroize::Zeroizing;

/// `--luks` / `--key-file`: decrypt what was selected.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct LuksArgs {
    /// Decrypt the selected partition or LV (or the whole image) as a LUKS1/LUKS2 volume.
    #[arg(long)]
    pub luks: bool,
    /// Read the LUKS key from FILE (all its bytes, as `cryptsetup --key-file`); without
    /// it, the passphrase is asked for on the terminal.
    #[arg(long, value_name = "FILE", requires = "luks")]
    pub key_file: Option<PathBuf>,
}

impl LuksArgs {
    /// `image` itself, or with `--luks` its decrypted contents.
    pub fn apply(&self, image: Arc<dyn DiskImage>) -> Result<Arc<dyn DiskImage>> {
        if !self.luks {
            return Ok(image);
        }
        let key = key(self.key_file.as_deref())?;
        let volume = LuksVolume::open(image, &key).map_err(|e| match &self.key_file {
            Some(path) if e.kind() == ErrorKind::Permission => e.with_path(path),
            _ => e,
        })?;
        Ok(Arc::new(volume))
    }

    /// What a device record keeps of these options: the absolute path of the key file
    /// with `--luks --key-file`, so that `recover` can unlock the volume again.
    pub fn recorded_key_file(&self) -> Result<Option<PathBuf>> {
        match &self.key_file {
            Some(path) if self.luks => std::fs::canonicalize(path)
                .map(Some)
                .map_err(|e| Error::io("cannot find the key file", e).with_path(path)),
            _ => Ok(None),
        }
    }

    /// The options that unlock again the volume a device of `record` shows: none for a
    /// device without LUKS, its recorded key file for one unlocked with `--key-file`,
    /// and an error for one unlocked with a typed passphrase, which imgblk never keeps.
    pub fn for_record(record: &DeviceRecord) -> Result<LuksArgs> {
        if record.luks && record.key_file.is_none() {
            return Err(Error::unsupported(format!(
                "{} shows a LUKS volume unlocked with a typed passphrase, which imgblk does \
                 not keep: recover has no key; detach it and attach again with --luks \
                 (attach with --key-file to make it recoverable)",
                record.device.display()
            )));
        }
        Ok(LuksArgs {
            luks: record.luks,
            key_file: record.key_file.clone(),
        })
    }
}

/// `--key-file` of `inspect`: unlock the LUKS volumes found.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct KeyFileArgs {
    /// Unlock the LUKS volumes found with the key in FILE and show what they hold, as
    /// disks named luks-NODE.
    #[arg(long, value_name = "FILE")]
    pub key_file: Option<PathBuf>,
}

/// The key: the contents of `file`, else a passphrase typed on the terminal. It is wiped
/// from memory when dropped, and the process holding it becomes undumpable.
pub fn key(file: Option<&Path>) -> Result<Zeroizing<Vec<u8>>> {
    refuse_core_dumps();
    if let Some(path) = file {
        let f = std::fs::File::open(path)
            .map_err(|e| Error::io("cannot open the key file", e).with_path(path))?;
        // Room for the whole file up front: a buffer that grew would leave copies behind.
        let room = f.metadata().map_or(0, |m| m.len()).min(MAX_KEY_LEN as u64) + 1;
        let mut key = Zeroizing::new(Vec::with_capacity(room as usize));
        f.take(MAX_KEY_LEN as u64 + 1)
            .read_to_end(&mut key)
            .map_err(|e| Error::io("cannot read the key file", e).with_path(path))?;
        if key.len() > MAX_KEY_LEN {
            return Err(Error::invalid("key file larger than 8 MiB").with_path(path));
        }
        return Ok(key);
    }
    if !std::io::IsTerminal::is_terminal(&std::io::stdin()) {
        return Err(Error::invalid(
            "--luks needs --key-file when standard input is not a terminal",
        ));
    }
    rpassword::prompt_password("Enter passphrase: ")
        .map(|typed| Zeroizing::new(typed.into_bytes()))
        .map_err(|e| Error::io("cannot read the passphrase", e))
}

/// With a key file, unlocks every LUKS volume of `layout` and discovers `images` again
/// together with them (so that a VG inside LUKS is assembled); the unlocked volumes are
/// the disks named `luks-NODE`. Volumes the key does not open get a warning.
pub fn unlock_all(
    args: &KeyFileArgs,
    images: &[Arc<dyn DiskImage>],
    layout: Layout,
) -> Result<Layout> {
    let Some(path) = &args.key_file else {
        return Ok(layout);
    };
    let key = key(Some(path))?;
    let mut all = images.to_vec();
    let mut names = Vec::new();
    let mut failures = Vec::new();
    for node in layout.nodes() {
        if node.content.as_ref().map(|c| c.kind) != Some(ContentKind::Luks) {
            continue;
        }
        match node.image().and_then(|image| LuksVolume::open(image, &key)) {
            Ok(volume) => {
                all.push(Arc::new(volume));
                names.push(format!("luks-{}", node.name));
            }
            Err(e) => failures.push(format!("{}: cannot unlock: {e}", node.name)),
        }
    }
    if names.is_empty() {
        let mut layout = layout;
        layout.warnings.extend(failures);
        return Ok(layout);
    }
    let mut layout = discover(&all);
    for (i, name) in names.iter().enumerate() {
        let old = format!("disk{}", images.len() + i);
        if let Some(disk) = layout.disks.get_mut(images.len() + i) {
            rename(disk, &old, name);
        }
        for pv in layout.volume_groups.iter_mut().flat_map(|vg| &mut vg.pvs) {
            if let Some(device) = pv.device.as_mut() {
                if let Some(rest) = device.strip_prefix(&old) {
                    *device = format!("{name}{rest}");
                }
            }
        }
    }
    layout.warnings.extend(failures);
    Ok(layout)
}

fn rename(node: &mut Node, old: &str, new: &str) {
    if let Some(rest) = node.name.strip_prefix(old) {
        node.name = format!("{new}{rest}");
    }
    for child in &mut node.children {
        rename(child, old, new);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::image::Format;

    #[test]
    fn reading_a_key_makes_the_process_undumpable() {
        let file = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(file.path(), b"secret").unwrap();
        assert_eq!(key(Some(file.path())).unwrap().as_slice(), b"secret");
        // SAFETY: prctl with integer arguments only.
        let dumpable = unsafe { libc::prctl(libc::PR_GET_DUMPABLE, 0, 0, 0, 0) };
        assert_eq!(dumpable, 0, "a process holding a key can dump core");
    }

    fn record(luks: bool, key_file: Option<&str>) -> DeviceRecord {
        DeviceRecord {
            luks,
            key_file: key_file.map(PathBuf::from),
            ..DeviceRecord::new(
                3,
                "/dev/ublkb3".into(),
                Path::new("/i"),
                Format::Raw,
                1 << 20,
            )
        }
    }

    #[test]
    fn a_record_unlocks_again_only_with_its_key_file() {
        let plain = LuksArgs::for_record(&record(false, None)).unwrap();
        assert!(!plain.luks && plain.key_file.is_none());
        let keyed = LuksArgs::for_record(&record(true, Some("/etc/k"))).unwrap();
        assert!(keyed.luks && keyed.key_file == Some(PathBuf::from("/etc/k")));
        let typed = LuksArgs::for_record(&record(true, None)).unwrap_err();
        assert!(typed.to_string().contains("typed passphrase"), "{typed}");
        assert!(typed.to_string().contains("/dev/ublkb3"), "{typed}");
    }

    #[test]
    fn only_a_luks_key_file_is_recorded_as_an_absolute_path() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("k"), b"key").unwrap();
        let args = |luks| LuksArgs {
            luks,
            key_file: Some(dir.path().join(".").join("k")),
        };
        let recorded = args(true).recorded_key_file().unwrap().unwrap();
        assert_eq!(recorded, dir.path().canonicalize().unwrap().join("k"));
        assert_eq!(args(false).recorded_key_file().unwrap(), None);
    }
}
