//! Records of the devices imgblk serves, one JSON file per device under `/run/imgblk`, so
//! that `list` and `detach` work from any shell without asking the daemons.

use crate::error::{Error, Result};
use crate::image::Format;
use serde::{Deserialize, Serialize};
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
    pub piece: Option<String>,
    /// Format of the image.
    pub format: String,
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
    /// Where the daemon logs, if it runs in the background.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub log: Option<PathBuf>,
    /// The device shows a decrypted LUKS volume (recovering it needs the key again).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub luks: bool,
    /// The absolute path of the key file that unlocked the LUKS volume (never the key),
    /// so that `recover` can unlock it again; `None` when the passphrase was typed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_file: Option<PathBuf>,
    /// The qcow2 internal snapshot served instead of the image's active state.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub snapshot: Option<String>,
}

impl DeviceRecord {
    /// Whether the device writes to its image (a writable device with an overlay does not).
    pub fn writes_image(&self) -> bool {
        self.writable && self.overlay.is_none()
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
            size,
            queues: 1,
            depth: 64,
            zero_copy: false,
            writable: false,
            overlay: None,
            pid: std::process::id(),
            log: None,
            luks: false,
            key_file: None,
            snapshot: None,
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

/// Removes the record of device `id` (missing is fine).
pub fn remove(id: u32) {
    let _ = std::fs::remove_file(record_path(id));
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

/// Whether process `pid` is alive.
pub fn pid_alive(pid: u32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
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
        save(&rec).unwrap();
        assert_eq!(load(7), Some(rec.clone()));
        assert_eq!(all(), vec![rec]);
        remove(7);
        assert_eq!(load(7), None);
        assert!(all().is_empty());
        std::env::remove_var("IMGBLK_RUN_DIR");
    }
}
