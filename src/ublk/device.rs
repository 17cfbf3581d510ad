//! Creating a ublk device for an image, serving it, and tearing it down.
//!
//! libublk 0.4.8 keeps the control ring thread-local: every control command of a device
//! (add, start, stop, delete) is sent from the thread that created it, which is the thread
//! that calls [`serve`]. Queue threads only touch their own io_uring.

use super::queue::{run_queue, Gate};
use crate::error::{Error, ErrorKind, Result};
use crate::image::{io, DiskImage};
use libublk::ctrl::{UblkCtrl, UblkCtrlBuilder};
use libublk::io::UblkDev;
use libublk::{sys, UblkError, UblkFlags};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The control node the ublk driver creates.
pub const CONTROL_PATH: &str = "/dev/ublk-control";

/// Shape of the device: queues, depth and the largest single I/O.
#[derive(Debug, Clone, Copy)]
pub struct DeviceConfig {
    /// Number of hardware queues, each served by its own thread and io_uring.
    pub queues: u16,
    /// In-flight requests per queue.
    pub depth: u16,
    /// Largest request in bytes; a device that copies may get less (see [`request_bytes`]),
    /// as it keeps a buffer this size per tag.
    pub io_buf_bytes: u32,
    /// Whether request data moves by zero copy (see [`super::data`]).
    pub zero_copy: ZeroCopy,
    /// Take over this existing device, left quiesced by a daemon that died, instead of
    /// adding a new one (ublk USER_RECOVERY).
    pub recover: Option<u32>,
    /// The device's data lives only in this daemon (a RAM overlay), so no successor
    /// could take the device over: a stop signal while it is in use is refused.
    pub lost_on_exit: bool,
}

impl Default for DeviceConfig {
    fn default() -> Self {
        DeviceConfig {
            queues: 1,
            depth: 64,
            io_buf_bytes: 512 << 10,
            zero_copy: ZeroCopy::Auto,
            recover: None,
            lost_on_exit: false,
        }
    }
}

/// When a device moves request data by zero copy rather than through a buffer per tag.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum ZeroCopy {
    /// Where the kernel offers it (Linux 6.16+).
    #[default]
    Auto,
    /// Always: fail on a kernel without it.
    On,
    /// Never: copy through the daemon's buffers on every kernel.
    Off,
}

/// The ublk features zero copy is built on: the driver registers each request's pages
/// in the queue's io_uring (`AUTO_BUF_REG`), and the daemon writes bytes it computes into
/// them with `pwrite` on `/dev/ublkcN` (`USER_COPY`).
const ZERO_COPY_FLAGS: u64 = sys::UBLK_F_AUTO_BUF_REG as u64 | sys::UBLK_F_USER_COPY as u64;

/// Whether a ublk driver offering `features` (`UBLK_U_CMD_GET_FEATURES`, or a device's
/// flags) can move request data by zero copy.
pub fn offers_zero_copy(features: u64) -> bool {
    features & ZERO_COPY_FLAGS == ZERO_COPY_FLAGS
}

impl ZeroCopy {
    /// The device flags that carry out this choice on a driver offering `features`.
    fn flags(self, features: u64) -> Result<u64> {
        let offered = offers_zero_copy(features);
        match self {
            ZeroCopy::Off => Ok(0),
            ZeroCopy::Auto => Ok(if offered { ZERO_COPY_FLAGS } else { 0 }),
            ZeroCopy::On if offered => Ok(ZERO_COPY_FLAGS),
            ZeroCopy::On => Err(Error::new(
                ErrorKind::Kernel,
                format!(
                    "zero copy needs a ublk driver with UBLK_F_AUTO_BUF_REG and \
                     UBLK_F_USER_COPY (Linux 6.16 or later); this one offers {features:#x}"
                ),
            )),
        }
    }
}

/// A device that is up and serving.
#[derive(Debug, Clone)]
pub struct LiveDevice {
    /// ublk device id (`N` in `/dev/ublkbN`).
    pub id: u32,
    /// The block device node.
    pub block_path: PathBuf,
    /// Whether request data moves by zero copy.
    pub zero_copy: bool,
}

/// Where the ublk driver stands on this host: what `attach` and `doctor` say to do when
/// the control device is missing differs with it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Driver {
    /// `/dev/ublk-control` is there.
    Ready,
    /// The kernel has the module ublk_drv, not loaded.
    NotLoaded,
    /// The driver is loaded, but this process sees no control device: a container that
    /// was not given the device nodes.
    Hidden,
    /// This kernel has no ublk driver (or its modules are not visible here).
    Absent,
}

impl Driver {
    /// The state of the driver on this host.
    pub fn probe() -> Driver {
        if Path::new(CONTROL_PATH).exists() {
            Driver::Ready
        } else if Path::new("/sys/module/ublk_drv").exists() {
            Driver::Hidden
        } else if module_installed() {
            Driver::NotLoaded
        } else {
            Driver::Absent
        }
    }

    /// What is wrong, for a missing control device.
    pub fn problem(self) -> String {
        match self {
            Driver::Ready => format!("{CONTROL_PATH} present"),
            Driver::NotLoaded => "the ublk driver (ublk_drv) is installed but not loaded".into(),
            Driver::Hidden => format!(
                "the ublk driver is loaded, but {CONTROL_PATH} is missing here (a container?)"
            ),
            Driver::Absent => "this kernel has no ublk driver (ublk_drv)".into(),
        }
    }

    /// How to fix it.
    pub fn fix(self) -> &'static str {
        match self {
            Driver::Ready => "",
            Driver::NotLoaded => {
                "modprobe ublk_drv  (list it in /etc/modules-load.d/ to load it at boot)"
            }
            Driver::Hidden => {
                "give the container /dev/ublk-control and the device nodes it creates: \
                 /dev/ublkcN (char) and /dev/ublkbN (block), e.g. docker run \
                 --device /dev/ublk-control --device-cgroup-rule 'b 259:* rwm' \
                 --device-cgroup-rule 'c <ublk-char major, /proc/devices>:* rwm' \
                 -v /dev:/dev, or --privileged"
            }
            Driver::Absent => {
                "boot a kernel built with CONFIG_BLK_DEV_UBLK (Linux >= 6.0; Debian and \
                 Ubuntu kernels have it as the module ublk_drv)"
            }
        }
    }
}

/// Whether this kernel's modules include ublk_drv (loadable, or built in).
fn module_installed() -> bool {
    let base = Path::new("/lib/modules").join(super::kernel::release());
    let listed = |file: &str| {
        std::fs::read_to_string(base.join(file)).is_ok_and(|text| text.contains("ublk_drv.ko"))
    };
    listed("modules.dep") || listed("modules.builtin")
}

/// Checks that this kernel and process can create ublk devices, with an actionable error.
pub fn check_available() -> Result<()> {
    let driver = Driver::probe();
    if driver != Driver::Ready {
        return Err(Error::new(
            ErrorKind::Kernel,
            format!(
                "{CONTROL_PATH} does not exist: {}. Fix: {} (imgblk doctor checks the rest)",
                driver.problem(),
                driver.fix()
            ),
        ));
    }
    if !nix::unistd::geteuid().is_root() {
        return Err(Error::new(
            ErrorKind::Permission,
            "creating ublk devices needs root (CAP_SYS_ADMIN); run imgblk with sudo",
        ));
    }
    Ok(())
}

/// Maps libublk's errors to ours, naming what was being done.
pub fn ublk_error(what: &str, e: UblkError) -> Error {
    let errno = match e {
        UblkError::OtherError(code) | UblkError::UringIOError(code) => -code,
        UblkError::IOError(ref io) => io.raw_os_error().unwrap_or(libc::EIO),
        _ => libc::EIO,
    };
    Error::io(
        format!("{what} ({e})"),
        std::io::Error::from_raw_os_error(errno),
    )
}

/// What asks a daemon to stop serving its device; set from signal handlers.
#[derive(Debug, Clone, Default)]
pub struct StopFlags {
    /// Stop (SIGTERM, SIGINT, SIGHUP): remove the device if nothing uses it; else see
    /// [`stop_action`].
    pub stop: Arc<AtomicBool>,
    /// Remove the device even while it is in use (`imgblk detach --force`, SIGUSR1).
    pub force: Arc<AtomicBool>,
}

/// Exit status of a daemon that was asked to stop while its device was in use, and left
/// the device for a successor to take over (see [`stop_action`]).
pub const EXIT_LEFT_FOR_RECOVERY: i32 = 75;

/// What a daemon asked to stop does with its device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StopAction {
    /// Nothing uses it: flush the image, then remove the device.
    Remove,
    /// It is in use (what uses it is said): flush the image and exit without removing
    /// the device, which the kernel quiesces (USER_RECOVERY) until a new daemon takes it
    /// over, as after a crash; what is mounted on it stays mounted and loses nothing.
    LeaveForRecovery(String),
    /// It is in use and no successor could take it over (why is said): keep serving.
    KeepServing(String),
}

/// Decides what a stop signal does to a device used by `user` (`None`: unused), created
/// with USER_RECOVERY or not (`recovery`), whose data lives only in the daemon or not
/// (`lost_on_exit`). A device in use is never removed: that would throw away what the
/// file system on it has not written back, exactly what `detach` refuses to do.
pub fn stop_action(user: Option<String>, recovery: bool, lost_on_exit: bool) -> StopAction {
    match user {
        None => StopAction::Remove,
        Some(user) if lost_on_exit => StopAction::KeepServing(format!(
            "{user}, and its writes live in this daemon's RAM overlay, which no new daemon \
             could take over"
        )),
        Some(user) if !recovery => StopAction::KeepServing(format!(
            "{user}, and this kernel's ublk driver lacks USER_RECOVERY, so no new daemon \
             could take it over"
        )),
        Some(user) => StopAction::LeaveForRecovery(user),
    }
}

/// Creates `/dev/ublkbN` for `image` and serves it until a stop is asked for or the
/// device is removed from outside. `on_live` runs once the block device node exists. On
/// the way out the image is flushed and the device deleted, unless it is in use: then
/// [`stop_action`] decides, and the process may exit ([`EXIT_LEFT_FOR_RECOVERY`]) leaving
/// the device for recovery.
pub fn serve<F>(
    image: Arc<dyn DiskImage>,
    config: DeviceConfig,
    stop: StopFlags,
    on_live: F,
) -> Result<()>
where
    F: FnOnce(&LiveDevice) + Send + Sync + 'static,
{
    check_available()?;
    mark_io_flusher();
    let (id, dev_flags, what) = match config.recover {
        Some(id) => (
            id as i32,
            UblkFlags::UBLK_DEV_F_RECOVER_DEV,
            "cannot recover the ublk device",
        ),
        None => (
            -1,
            UblkFlags::UBLK_DEV_F_ADD_DEV,
            "cannot add a ublk device",
        ),
    };
    let features = UblkCtrl::get_features().unwrap_or(0);
    let zero_copy_flags = config.zero_copy.flags(features)?;
    let config = DeviceConfig {
        io_buf_bytes: request_bytes(&config, zero_copy_flags != 0),
        ..config
    };
    let ctrl = UblkCtrlBuilder::default()
        .name("imgblk")
        .id(id)
        .nr_queues(config.queues)
        .depth(config.depth)
        .io_buf_bytes(config.io_buf_bytes)
        .ctrl_flags(recovery_flags(features) | zero_copy_flags)
        .dev_flags(dev_flags)
        .build()
        .map_err(|e| ublk_error(what, e))?;
    if let Some(id) = config.recover {
        tracing::info!(device = id, "recovering the device of a daemon that died");
        ctrl.start_user_recover()
            .map_err(|e| ublk_error("cannot start recovering the ublk device", e))?;
    }

    let live_queues = Arc::new(AtomicUsize::new(config.queues as usize));
    let gate = Arc::new(Gate::default());
    let queue_image = image.clone();
    let queue_count = live_queues.clone();
    let queue_gate = gate.clone();
    let run = move |qid: u16, dev: &UblkDev| {
        run_queue(qid, dev, queue_image.clone(), queue_gate.clone());
        queue_count.fetch_sub(1, Ordering::SeqCst);
    };
    let target_image = image.clone();
    let init = move |dev: &mut UblkDev| {
        set_params(dev, &*target_image, config);
        Ok(())
    };
    let flush_image = image.clone();
    let supervise = move |ctrl: &UblkCtrl| {
        let info = ctrl.dev_info();
        let live = LiveDevice {
            id: info.dev_id,
            block_path: PathBuf::from(ctrl.get_bdev_path()),
            zero_copy: offers_zero_copy(info.flags),
        };
        wait_for_node(&live.block_path);
        tracing::info!(device = %live.block_path.display(), "device is live");
        on_live(&live);
        let recovery = info.flags & u64::from(sys::UBLK_F_USER_RECOVERY) != 0;
        loop {
            while !stop.stop.load(Ordering::SeqCst) && live_queues.load(Ordering::SeqCst) > 0 {
                std::thread::sleep(Duration::from_millis(100));
            }
            if live_queues.load(Ordering::SeqCst) == 0 || stop.force.load(Ordering::SeqCst) {
                break;
            }
            match stop_action(device_user(live.id), recovery, config.lost_on_exit) {
                StopAction::Remove => break,
                StopAction::LeaveForRecovery(user) => {
                    leave_for_recovery(&live, &user, &gate, &*flush_image)
                }
                StopAction::KeepServing(why) => {
                    tracing::warn!(device = %live.block_path.display(),
                        "not stopping: {why}; unmount it and stop again, or remove it \
                         anyway with `imgblk detach --force {}`", live.id);
                    stop.stop.store(false, Ordering::SeqCst);
                }
            }
        }
        if let Err(e) = io::flush(&*flush_image) {
            tracing::error!(error = %e, "flush before stop failed");
        }
        if let Err(e) = ctrl.kill_dev() {
            tracing::debug!(error = %e, "stopping the device (already gone?)");
        }
    };
    ctrl.run_target(init, run, supervise)
        .map_err(|e| ublk_error("cannot start the ublk device", e))?;
    let flushed = io::flush(&*image);
    // Deleted here, whether this daemon added the device or recovered it (dropping a
    // control that recovered a device leaves it behind), so that the drop has no waiting
    // DEL_DEV left to send.
    if let Err(e) = delete(&ctrl) {
        tracing::debug!(error = %e, "deleting the device (already gone?)");
    }
    drop(ctrl);
    tracing::info!("device removed");
    flushed
}

/// Flushes the image and exits without removing the device, which the kernel then
/// quiesces for a new daemon to take over (USER_RECOVERY), keeping its record.
fn leave_for_recovery(live: &LiveDevice, user: &str, gate: &Gate, image: &dyn DiskImage) -> ! {
    let device = live.block_path.display();
    if !gate.close(Duration::from_secs(30)) {
        tracing::warn!(%device, "requests still running after 30s; leaving them to the next daemon");
    }
    if let Err(e) = io::flush(image) {
        tracing::error!(%device, error = %e, "flush before leaving the device failed");
    }
    tracing::warn!(%device,
        "asked to stop, but {user}: the image is flushed and the device left for recovery \
         instead of removed (its I/O waits meanwhile); `imgblk recover {device}`, `imgblk \
         attach` of the same image or starting the systemd unit again takes it over, \
         `imgblk detach --force {}` removes it", live.id);
    std::process::exit(EXIT_LEFT_FOR_RECOVERY)
}

/// Marks this thread as part of the I/O path (`PR_SET_IO_FLUSHER`), so that its memory
/// allocations never wait on write-back to the very device it serves. libublk does the
/// same for the queue threads.
fn mark_io_flusher() {
    const PR_SET_IO_FLUSHER: libc::c_int = 57;
    // SAFETY: prctl with integer arguments only.
    if unsafe { libc::prctl(PR_SET_IO_FLUSHER, 1, 0, 0, 0) } != 0 {
        tracing::warn!(error = %std::io::Error::last_os_error(), "PR_SET_IO_FLUSHER failed");
    }
}

/// USER_RECOVERY with reissue where the driver (offering `features`) has it: if the daemon
/// dies, the device is quiesced rather than failed, and a new daemon (`imgblk recover`, or
/// `attach` of the same image) takes it over and replays the requests that were in flight.
fn recovery_flags(features: u64) -> u64 {
    let wanted = u64::from(sys::UBLK_F_USER_RECOVERY | sys::UBLK_F_USER_RECOVERY_REISSUE);
    if features & wanted == wanted {
        wanted
    } else {
        0
    }
}

/// Whether device `record.id` was left quiesced by a dead daemon and can be taken over.
pub fn is_recoverable(record: &super::registry::DeviceRecord) -> bool {
    if record.daemon_alive() || !kernel_has_device(record.id) {
        return false;
    }
    device_info(record.id, |info| {
        u32::from(info.state) == sys::UBLK_S_DEV_QUIESCED
    })
    .unwrap_or(false)
}

/// The process the kernel says serves device `id` (`ublksrv_pid`, set when a daemon
/// starts or recovers it; it stays after that daemon died).
pub fn server_pid(id: u32) -> Option<u32> {
    device_info(id, |info| u32::try_from(info.ublksrv_pid).ok()).flatten()
}

/// What `read` makes of the kernel's information on device `id`, if it has the device.
fn device_info<T: Send + 'static>(
    id: u32,
    read: fn(&sys::ublksrv_ctrl_dev_info) -> T,
) -> Option<T> {
    // libublk keeps a control io_uring per thread; query from a short-lived thread so that
    // no ring survives into a daemon forked later (a ring shared across fork hangs).
    std::thread::spawn(move || {
        UblkCtrl::new_simple(id as i32)
            .ok()
            .map(|ctrl| read(&ctrl.dev_info()))
    })
    .join()
    .ok()
    .flatten()
}

/// Whether device `record` can be taken over, waiting up to 30 s where its daemon is
/// gone but the driver has not quiesced the device yet: until Linux 6.15 the driver
/// notices a dead daemon only on its next periodic check (every 5 s), then waits for the
/// requests in flight to be requeued (over 10 s seen under emulation), so a `recover`
/// right after the daemon died would otherwise be refused.
pub fn wait_until_recoverable(record: &super::registry::DeviceRecord) -> bool {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if is_recoverable(record) {
            return true;
        }
        let waiting = !record.daemon_alive() && kernel_has_device(record.id);
        if !waiting || Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Daemon memory for the per-tag buffers of a device that copies (no zero copy): every
/// tag of every queue has one, and big sequential reads touch all of their pages.
const COPY_BUFFERS_BUDGET: u64 = 32 << 20;
/// The smallest largest request a copying device is given, however many tags it has.
const MIN_REQUEST_BYTES: u32 = 64 << 10;

/// The largest request of the device: `config.io_buf_bytes` with zero copy (the daemon
/// holds no request data), else as much as keeps the buffers of all tags within
/// [`COPY_BUFFERS_BUDGET`] (512 KiB for one queue of 64 tags, 256 KiB for two), a power
/// of two.
fn request_bytes(config: &DeviceConfig, zero_copy: bool) -> u32 {
    if zero_copy {
        return config.io_buf_bytes;
    }
    let tags = u64::from(config.queues) * u64::from(config.depth);
    let share = COPY_BUFFERS_BUDGET / tags.max(1);
    let fitting = if share == 0 { 0 } else { 1u64 << share.ilog2() };
    let largest = config.io_buf_bytes;
    u32::try_from(fitting)
        .unwrap_or(u32::MAX)
        .clamp(MIN_REQUEST_BYTES.min(largest), largest)
}

/// log2 of the device's logical block size: the image's
/// [`logical_block_size`](DiskImage::logical_block_size), kept within what ublk accepts
/// (512 bytes to a 4 KiB page).
fn logical_shift(image: &dyn DiskImage) -> u8 {
    let size = image.logical_block_size().clamp(512, 4096);
    size.ilog2() as u8
}

/// Fills in size, block sizes and the features the image supports.
fn set_params(dev: &mut UblkDev, image: &dyn DiskImage, config: DeviceConfig) {
    let size = image.virtual_size();
    let writable = image.writer().is_some();
    let ring_depth = config.depth.saturating_mul(2).min(4096);
    dev.tgt.sq_depth = ring_depth;
    dev.tgt.cq_depth = ring_depth;
    dev.tgt.dev_size = size;
    let max_sectors = config.io_buf_bytes >> 9;
    let logical_shift = logical_shift(image);
    let mut params = sys::ublk_params {
        types: sys::UBLK_PARAM_TYPE_BASIC,
        basic: sys::ublk_param_basic {
            attrs: if writable {
                sys::UBLK_ATTR_VOLATILE_CACHE
            } else {
                sys::UBLK_ATTR_READ_ONLY
            },
            // the image's own write unit (a LUKS sector): the kernel then never sends a
            // write that covers part of one
            logical_bs_shift: logical_shift,
            // 4 KiB physical blocks where the size allows: the kernel trims a disk's
            // capacity to whole physical blocks, which would hide the tail of, say, a
            // fixed VHD sized from CHS geometry.
            physical_bs_shift: if size % 4096 == 0 { 12 } else { logical_shift },
            io_opt_shift: 12,
            io_min_shift: logical_shift,
            max_sectors,
            dev_sectors: size >> 9,
            ..Default::default()
        },
        ..Default::default()
    };
    if writable {
        params.types |= sys::UBLK_PARAM_TYPE_DISCARD;
        params.discard = sys::ublk_param_discard {
            discard_granularity: 4096,
            max_discard_sectors: u32::MAX >> 9,
            max_write_zeroes_sectors: u32::MAX >> 9,
            max_discard_segments: 1,
            ..Default::default()
        };
    }
    dev.tgt.params = params;
}

/// Waits (briefly) until the block node shows up in /dev.
fn wait_for_node(path: &Path) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while !path.exists() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Ids of every ublk device the kernel has, ours or not.
pub fn kernel_device_ids() -> Vec<u32> {
    let mut ids: Vec<u32> = std::fs::read_dir("/sys/class/ublk-char")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| {
            entry
                .file_name()
                .to_str()?
                .strip_prefix("ublkc")?
                .parse()
                .ok()
        })
        .collect();
    ids.sort_unstable();
    ids
}

/// Whether ublk device `id` still exists in the kernel.
pub fn kernel_has_device(id: u32) -> bool {
    Path::new(&format!("/sys/class/ublk-char/ublkc{id}")).exists()
}

/// Whether the kernel's device `id` is still the one daemon `pid` started or last
/// recovered. Device ids are reused at once: after a daemon removed its device, an attach
/// running meanwhile may already have created a new one under the same id, which is not
/// the old daemon's to report as left behind, nor to delete. A device that names no
/// server is not `pid`'s either: a device just added has none until it starts.
pub fn still_served_by(id: u32, pid: u32) -> bool {
    kernel_has_device(id) && server_pid(id) == Some(pid)
}

/// Stops and deletes device `id` from outside its daemon (when the daemon is gone).
pub fn force_delete(id: u32) -> Result<()> {
    let ctrl =
        UblkCtrl::new_simple(id as i32).map_err(|e| ublk_error("cannot open ublk device", e))?;
    let _ = ctrl.kill_dev();
    delete(&ctrl).map_err(|e| ublk_error(&format!("cannot delete ublk device {id}"), e))
}

/// Deletes a stopped device without waiting for the kernel to free its number
/// (DEL_DEV_ASYNC, Linux 6.9+; older drivers only have the waiting DEL_DEV). That wait
/// can outlast the device: ublk_drv sleeps until the number is free, and when a new
/// device takes the number in the moment between the wake-up and the check (an attach
/// running meanwhile, as `fsck --jobs` does), the number is taken again and the waiter
/// sleeps on until that device goes too. A daemon was seen stuck so for 30 s.
fn delete(ctrl: &UblkCtrl) -> std::result::Result<(), UblkError> {
    ctrl.del_dev_async().or_else(|_| ctrl.del_dev()).map(drop)
}

/// Number of hardware queues the kernel created for block device `ublkbN`.
pub fn kernel_queue_count(id: u32) -> usize {
    std::fs::read_dir(format!("/sys/block/ublkb{id}/mq"))
        .map(|dir| dir.count())
        .unwrap_or(0)
}

/// What keeps device `id` busy, if anything: a mount of it or of one of its partitions,
/// a holder (device-mapper, md) of either, or another exclusive opener (a file system
/// mounted in another mount namespace, say), which makes an `O_EXCL` open fail.
pub fn device_user(id: u32) -> Option<String> {
    if let Some(m) = ublk_mounts().into_iter().find(|m| m.id == id) {
        return Some(format!("{} is mounted on {}", m.source, m.target.display()));
    }
    let name = format!("ublkb{id}");
    let disk = Path::new("/sys/block").join(&name);
    let partitions = std::fs::read_dir(&disk)
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| {
            e.file_name()
                .to_string_lossy()
                .starts_with(&format!("{name}p"))
        })
        .map(|e| e.path());
    let held: Vec<String> = std::iter::once(disk.clone())
        .chain(partitions)
        .flat_map(|dir| std::fs::read_dir(dir.join("holders")).into_iter().flatten())
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    if !held.is_empty() {
        return Some(format!("it is held by {}", held.join(", ")));
    }
    held_exclusively(&Path::new("/dev").join(&name))
        .then(|| format!("/dev/{name} or a partition is open exclusively (mounted?)"))
}

/// Whether an `O_EXCL` open of block device `path` fails with `EBUSY` for a second: a
/// mount or a holder claims a device for good, while a checker that has just exited may
/// keep its claim a moment longer (its last reference is dropped asynchronously).
fn held_exclusively(path: &Path) -> bool {
    let deadline = Instant::now() + Duration::from_secs(1);
    loop {
        let opened = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_EXCL)
            .open(path);
        match opened {
            Err(e) if e.raw_os_error() == Some(libc::EBUSY) => {}
            _ => return false,
        }
        if Instant::now() > deadline {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// One mount of an imgblk device or of one of its partitions.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct DeviceMount {
    /// ublk device id.
    pub id: u32,
    /// What is mounted: `/dev/ublkbN` or `/dev/ublkbNpM`.
    pub source: String,
    /// Where.
    pub target: PathBuf,
}

/// Every mount of a ublk block device or partition, from `/proc/self/mounts`.
pub fn ublk_mounts() -> Vec<DeviceMount> {
    let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap_or_default();
    mounts
        .lines()
        .filter_map(|line| {
            let mut fields = line.split_whitespace();
            let (source, target) = (fields.next()?, fields.next()?);
            let id = source
                .strip_prefix("/dev/ublkb")?
                .split('p')
                .next()?
                .parse()
                .ok()?;
            Some(DeviceMount {
                id,
                source: source.to_string(),
                target: PathBuf::from(target.replace("\\040", " ")),
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modprobe_is_advised_only_where_the_module_exists() {
        assert!(Driver::NotLoaded.fix().contains("modprobe ublk_drv"));
        for driver in [Driver::Hidden, Driver::Absent] {
            assert!(!driver.fix().contains("modprobe"), "{driver:?}");
        }
        assert!(Driver::Hidden.fix().contains("/dev/ublk-control"));
        let said = check_available().err().map(|e| e.to_string());
        match Driver::probe() {
            Driver::Ready => {}
            driver => assert!(said.unwrap().contains(driver.fix())),
        }
    }

    fn shape(queues: u16, depth: u16) -> DeviceConfig {
        DeviceConfig {
            queues,
            depth,
            ..DeviceConfig::default()
        }
    }

    #[test]
    fn copying_devices_keep_their_buffers_within_the_budget() {
        assert_eq!(request_bytes(&shape(1, 64), false), 512 << 10);
        assert_eq!(request_bytes(&shape(2, 64), false), 256 << 10);
        assert_eq!(request_bytes(&shape(3, 64), false), 128 << 10);
        for (queues, depth) in [(1, 64), (2, 64), (3, 50), (4, 128), (8, 32)] {
            let config = shape(queues, depth);
            let total = request_bytes(&config, false) as u64 * queues as u64 * depth as u64;
            assert!(total <= COPY_BUFFERS_BUDGET, "{queues}x{depth}: {total}");
        }
        // Very many tags: requests no smaller than the floor.
        assert_eq!(request_bytes(&shape(64, 4096), false), MIN_REQUEST_BYTES);
    }

    #[test]
    fn a_stop_never_removes_a_device_in_use() {
        for recovery in [false, true] {
            for lost_on_exit in [false, true] {
                assert_eq!(
                    stop_action(None, recovery, lost_on_exit),
                    StopAction::Remove
                );
                let user = Some("/dev/ublkb0p1 is mounted on /mnt".to_string());
                let action = stop_action(user, recovery, lost_on_exit);
                match action {
                    StopAction::LeaveForRecovery(_) => assert!(recovery && !lost_on_exit),
                    StopAction::KeepServing(ref why) => {
                        assert!(!recovery || lost_on_exit);
                        assert!(why.starts_with("/dev/ublkb0p1 is mounted"), "{why}");
                    }
                    StopAction::Remove => panic!("removed a mounted device"),
                }
            }
        }
    }

    #[test]
    fn zero_copy_and_small_requests_keep_the_configured_size() {
        assert_eq!(request_bytes(&shape(8, 256), true), 512 << 10);
        let small = DeviceConfig {
            io_buf_bytes: 16 << 10,
            ..shape(2, 64)
        };
        assert_eq!(request_bytes(&small, false), 16 << 10);
    }
}
