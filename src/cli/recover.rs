//! `imgblk recover`: take over a device whose daemon died, without failing its I/O.

use crate::error::{Error, ErrorKind, Result};
use crate::serve::{self, Launched, ServeSpec};
use crate::ublk::device;
use crate::ublk::registry;

/// Serve again a device whose daemon died (ublk USER_RECOVERY).
///
/// When an imgblk daemon is killed, its device is quiesced: I/O waits instead of failing,
/// and filesystems on top stay mounted. `recover` starts a new daemon for the same image
/// that takes the device over and replays the requests that were in flight. `imgblk list`
/// shows such devices as "orphaned"; `imgblk attach` of the same image recovers too. A
/// LUKS volume is unlocked again with the key file it was attached with (one unlocked
/// with a typed passphrase cannot be recovered).
#[derive(Debug, clap::Args)]
#[command(
    after_help = "Examples:\n  imgblk recover /dev/ublkb0\n  imgblk recover --all\n  imgblk recover --json --all"
)]
pub struct RecoverArgs {
    /// The device: /dev/ublkbN or its id N.
    #[arg(required_unless_present = "all", conflicts_with = "all")]
    device: Option<String>,
    /// Recover every orphaned device.
    #[arg(long)]
    all: bool,
    /// Print the records of the devices served again as a JSON array (as `attach --json`
    /// prints one).
    #[arg(long)]
    json: bool,
}

/// Runs `imgblk recover`.
pub fn run(args: RecoverArgs) -> Result<i32> {
    let id = args
        .device
        .as_deref()
        .map(super::detach::parse_device)
        .transpose()?;
    device::check_available()?;
    let records = match id {
        Some(id) => {
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
            .filter(|r| match ServeSpec::from_record(r) {
                Ok(_) => true,
                Err(e) => {
                    tracing::warn!(error = %e, "not recovered");
                    false
                }
            })
            .collect(),
    };
    let mut recovered = Vec::new();
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
        let spec = ServeSpec::from_record(&record)?;
        let served = serve::open(&spec)?;
        match serve::launch(served.image, spec.device, record, false, |_| {})? {
            Launched::Started(record) => recovered.push(record),
            // This is the daemon now: it must not go on to recover the next device.
            Launched::Served(result) => return result.map(|()| super::EXIT_OK),
        }
    }
    if args.json {
        super::print_json(&recovered)?;
    }
    Ok(super::EXIT_OK)
}
