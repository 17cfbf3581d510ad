//! `imgblk recover`: take over a device whose daemon died, without failing its I/O.

use super::attach::{launch, open_overlay, open_served};
use super::luks::LuksArgs;
use crate::error::{Error, ErrorKind, Result};
use crate::image::{Format, OpenOptions};
use crate::ublk::device::{self, DeviceConfig};
use crate::ublk::registry;
use std::path::Path;

/// Serve again a device whose daemon died (ublk USER_RECOVERY).
///
/// When an imgblk daemon is killed, its device is quiesced: I/O waits instead of failing,
/// and filesystems on top stay mounted. `recover` starts a new daemon for the same image
/// that takes the device over and replays the requests that were in flight. `imgblk list`
/// shows such devices as "orphaned"; `imgblk attach` of the same image recovers too. A
/// LUKS volume is unlocked again with the key file it was attached with (one unlocked
/// with a typed passphrase cannot be recovered).
#[derive(Debug, clap::Args)]
#[command(after_help = "Examples:\n  imgblk recover /dev/ublkb0\n  imgblk recover --all")]
pub struct RecoverArgs {
    /// The device: /dev/ublkbN or its id N.
    #[arg(required_unless_present = "all", conflicts_with = "all")]
    device: Option<String>,
    /// Recover every orphaned device.
    #[arg(long)]
    all: bool,
}

/// Runs `imgblk recover`.
pub fn run(args: RecoverArgs) -> Result<i32> {
    device::check_available()?;
    let records = match &args.device {
        Some(name) => {
            let id = super::detach::parse_device(name)?;
            vec![registry::load(id).ok_or_else(|| {
                Error::new(
                    ErrorKind::NotFound,
                    format!(
                        "imgblk has no record of device {id}; remove it with `imgblk detach {id}`"
                    ),
                )
            })?]
        }
        None => registry::all()
            .into_iter()
            .filter(device::is_recoverable)
            .filter(|r| {
                let lost = r.overlay.as_deref() == Some("memory");
                if lost {
                    tracing::warn!(device = %r.device.display(),
                        "not recovered: its RAM overlay died with its daemon; detach it");
                }
                !lost
            })
            .filter(|r| match LuksArgs::for_record(r) {
                Ok(_) => true,
                Err(e) => {
                    tracing::warn!(error = %e, "not recovered");
                    false
                }
            })
            .collect(),
    };
    for record in records {
        if !device::wait_until_recoverable(&record) {
            return Err(Error::new(
                ErrorKind::Busy,
                format!(
                    "{} is not orphaned (its daemon runs, or the device is gone)",
                    record.device.display()
                ),
            ));
        }
        let luks = LuksArgs::for_record(&record)?;
        let options = OpenOptions {
            format: clap::ValueEnum::from_str(&record.format, true)
                .ok()
                .map(|f: Format| f),
            writable: record.writable,
            direct: true,
            snapshot: record.snapshot.clone(),
            journal_dir: Some(registry::journal_dir()),
            ..OpenOptions::default()
        };
        let image = match record.overlay.as_deref() {
            // The writes lived in the dead daemon's memory: serving the image again would
            // silently undo them under the filesystem on top.
            Some("memory") => {
                return Err(Error::unsupported(format!(
                    "{} had a RAM overlay, lost with its daemon: it cannot be recovered; \
                     unmount what uses it and `imgblk detach {}`",
                    record.device.display(),
                    record.id
                )))
            }
            // The writes are in the overlay file: serve it again (the image stays its
            // read-only backing file).
            Some(file) => open_overlay(Path::new(file), &record.image, &options)?.image,
            None => {
                let mut paths = vec![record.image.clone()];
                paths.extend(record.more_images.iter().cloned());
                luks.apply(open_served(&paths, &options, record.piece.as_deref())?.image)?
            }
        };
        let config = DeviceConfig {
            queues: record.queues,
            depth: record.depth,
            recover: Some(record.id),
            ..DeviceConfig::default()
        };
        launch(image, config, record, false, false)?;
    }
    Ok(super::EXIT_OK)
}
