//! Running a served device: in this process, or from a forked daemon (as `qemu-nbd -c`
//! does), with its record in the registry while it is live, stop signals handled, and
//! systemd told when it is ready.

use crate::error::{Error, Result};
use crate::image::DiskImage;
use crate::ublk::daemon::{self, Notifier, Role};
use crate::ublk::device::{self, DeviceConfig, StopFlags};
use crate::ublk::registry::{self, DeviceRecord};
use std::sync::Arc;

/// How [`launch`] ended, in this process.
pub enum Launched {
    /// A daemon serves the device now, and reported it live with this record.
    Started(Box<DeviceRecord>),
    /// This process served the device (in the foreground, or as the daemon) until it
    /// was stopped; the result of serving. The daemon has told its parent of a failure.
    Served(Result<()>),
}

/// Serves `image` as `config` says: in this process with `foreground` (calling `on_live`
/// once the device is live), else from a forked daemon, waiting until it reports the
/// device live. `template` is the device's record, to be completed when it is live.
///
/// In the daemon, this returns [`Launched::Served`] when it stops (its parent has been
/// told of a failure): the caller should exit as the result calls for, printing nothing
/// but the error (to the daemon's log).
pub fn launch(
    image: Arc<dyn DiskImage>,
    config: DeviceConfig,
    template: DeviceRecord,
    foreground: bool,
    on_live: impl FnOnce(&DeviceRecord) + Send + Sync + 'static,
) -> Result<Launched> {
    if foreground {
        return Ok(Launched::Served(serve(
            image,
            config,
            template,
            Notifier::default(),
            on_live,
        )));
    }
    let log = registry::run_dir().join(format!("daemon-{}.log", std::process::id()));
    std::fs::create_dir_all(registry::run_dir()).map_err(|e| {
        Error::io("cannot create the run folder", e).with_path(&registry::run_dir())
    })?;
    match daemon::fork_daemon(&log)? {
        Role::Parent(pipe) => {
            // The daemon serves the image now: this copy must not flush it, nor close its
            // metadata journal (which removes the file the daemon goes on writing).
            std::mem::forget(image);
            Ok(Launched::Started(Box::new(daemon::wait_for_report(
                pipe, &log,
            )?)))
        }
        Role::Daemon(notifier) => {
            let template = DeviceRecord {
                log: Some(log),
                ..template
            };
            let result = serve(image, config, template, notifier.clone(), |_| {});
            if let Err(e) = &result {
                notifier.failed(e);
            }
            Ok(Launched::Served(result))
        }
    }
}

/// Serves `image` until a signal or `detach`; records the device while it is live.
/// SIGTERM, SIGINT and SIGHUP stop it (removing the device unless it is in use, see
/// [`device::stop_action`]); SIGUSR1 (`detach --force`) removes it even while in use.
fn serve(
    image: Arc<dyn DiskImage>,
    config: DeviceConfig,
    template: DeviceRecord,
    notifier: Notifier,
    on_live: impl FnOnce(&DeviceRecord) + Send + Sync + 'static,
) -> Result<()> {
    let stop = StopFlags::default();
    let handlers = [
        (libc::SIGTERM, &stop.stop),
        (libc::SIGINT, &stop.stop),
        (libc::SIGHUP, &stop.stop),
        (libc::SIGUSR1, &stop.force),
        (libc::SIGUSR1, &stop.stop),
    ];
    for (signal, flag) in handlers {
        signal_hook::flag::register(signal, flag.clone())
            .map_err(|e| Error::io("cannot install signal handler", e))?;
    }
    let recorded = Arc::new(std::sync::Mutex::new(None));
    let recorded_id = recorded.clone();
    let prefetched = image.clone();
    let result = std::thread::scope(|scope| {
        // Joined before serve returns, so the image is never dropped (flushed) after it.
        scope.spawn(move || prefetch(&*prefetched));
        device::serve(image, config, stop, move |live| {
            let log = template.log.as_deref().and_then(|log| {
                let named = log.with_file_name(format!("ublkb{}.log", live.id));
                std::fs::rename(log, &named).ok().map(|()| named)
            });
            let record = DeviceRecord {
                id: live.id,
                device: live.block_path.clone(),
                zero_copy: live.zero_copy,
                pid: std::process::id(),
                start_time: registry::process_start_time(std::process::id()),
                log: log.or(template.log),
                ..template
            };
            if let Err(e) = registry::save(&record) {
                tracing::warn!(error = %e, "cannot record the device; `imgblk list` will not show it");
            }
            if let Ok(mut slot) = recorded_id.lock() {
                *slot = Some(record.id);
            }
            notifier.live(&record);
            tell_systemd_ready(&record);
            on_live(&record);
        })
    });
    let _ = sd_notify::notify(&[sd_notify::NotifyState::Stopping]);
    if let Some(id) = recorded.lock().ok().and_then(|slot| *slot) {
        registry::remove_if_served_by(id, std::process::id());
    }
    result
}

/// Most bytes of image tables a device asks the kernel to read ahead as it starts: every
/// L2 table of 2 TiB of qcow2 data with 64 KiB clusters.
pub const PREFETCH_BUDGET: u64 = 256 << 20;

/// Asks the kernel to read `image`'s tables ahead ([`DiskImage::prefetch_metadata`]).
fn prefetch(image: &dyn DiskImage) {
    let mut budget = PREFETCH_BUDGET;
    match image.prefetch_metadata(0, image.virtual_size(), &mut budget) {
        Ok(()) => tracing::debug!(
            bytes = PREFETCH_BUDGET - budget,
            "asked for the image's tables"
        ),
        Err(e) => tracing::debug!(error = %e, "cannot read the image's tables ahead"),
    }
}

/// Under systemd (`Type=notify`), says the device is live. Does nothing elsewhere.
fn tell_systemd_ready(record: &DeviceRecord) {
    let status = format!(
        "serving {} on {}",
        record.image.display(),
        record.device.display()
    );
    if let Err(e) = sd_notify::notify(&[
        sd_notify::NotifyState::Ready,
        sd_notify::NotifyState::Status(&status),
    ]) {
        tracing::warn!(error = %e, "cannot notify systemd");
    }
}
