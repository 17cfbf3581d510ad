//! Helpers for the kernel tests: commands with timeouts and full diagnostics, fixtures,
//! byte comparisons, and [`Device`], which attaches an image and detaches it again on drop
//! (also when the test panics).
//!
//! Everything that knows how the `imgblk` command line looks is in this file: when the
//! CLI changes, fix it here.

#![allow(dead_code)] // not every test module uses every helper

use rand::rngs::SmallRng;
use rand::{Rng, RngCore, SeedableRng};
use serde_json::Value;
use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// The binary under test (built by cargo together with this test).
pub const IMGBLK: &str = env!("CARGO_BIN_EXE_imgblk");

pub const KIB: u64 = 1024;
pub const MIB: u64 = 1024 * 1024;

/// How long one command may take before the test gives up on it.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(120);

// ---------------------------------------------------------------------------------------
// Preconditions

/// Panics with a clear message unless this process can create ublk devices.
pub fn require_ublk() {
    if !Path::new("/dev/ublk-control").exists() {
        let _ = Command::new("modprobe")
            .arg("ublk_drv")
            .stderr(Stdio::null())
            .status();
    }
    assert!(
        Path::new("/dev/ublk-control").exists(),
        "/dev/ublk-control is missing: these tests need the ublk_drv kernel module; \
         run them through ci/test, which uses a VM when the host kernel lacks ublk"
    );
    // SAFETY: geteuid has no preconditions.
    assert_eq!(
        unsafe { libc::geteuid() },
        0,
        "the kernel tests must run as root"
    );
}

/// Whether this kernel's ublk driver moves data by zero copy (`UBLK_F_AUTO_BUF_REG`):
/// Linux 6.16 or later. Tests check that imgblk uses it there, and only there.
pub fn kernel_has_zero_copy() -> bool {
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap();
    let mut numbers = release
        .split(|c: char| !c.is_ascii_digit())
        .map(|n| n.parse::<u32>().unwrap_or(0));
    let (major, minor) = (numbers.next().unwrap_or(0), numbers.next().unwrap_or(0));
    (major, minor) >= (6, 16)
}

// ---------------------------------------------------------------------------------------
// Running commands

/// The result of a finished command.
#[derive(Debug)]
pub struct Output {
    /// What ran, for messages.
    pub what: String,
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

impl Output {
    pub fn success(&self) -> bool {
        self.status.success()
    }

    /// A description for assertion messages.
    pub fn describe(&self) -> String {
        format!(
            "`{}` exited with {}\n--- stdout ---\n{}\n--- stderr ---\n{}",
            self.what, self.status, self.stdout, self.stderr
        )
    }
}

/// A command to run, with a timeout; stdout/stderr go to temporary files, not pipes, so
/// that a daemon that inherits them cannot keep us waiting.
pub struct Cmd {
    program: OsString,
    args: Vec<OsString>,
    dir: Option<PathBuf>,
    stdin: Option<PathBuf>,
    timeout: Duration,
}

/// Starts building a command.
pub fn cmd(program: impl AsRef<OsStr>) -> Cmd {
    Cmd {
        program: program.as_ref().to_owned(),
        args: Vec::new(),
        dir: None,
        stdin: None,
        timeout: COMMAND_TIMEOUT,
    }
}

/// Starts building an `imgblk` command.
pub fn imgblk() -> Cmd {
    cmd(IMGBLK)
}

impl Cmd {
    pub fn arg(mut self, arg: impl AsRef<OsStr>) -> Self {
        self.args.push(arg.as_ref().to_owned());
        self
    }

    pub fn args<I, S>(mut self, args: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        self.args
            .extend(args.into_iter().map(|a| a.as_ref().to_owned()));
        self
    }

    /// Runs the command in `dir`.
    pub fn current_dir(mut self, dir: impl AsRef<Path>) -> Self {
        self.dir = Some(dir.as_ref().to_owned());
        self
    }

    /// Gives the command the file `path` as standard input (else /dev/null).
    pub fn stdin_file(mut self, path: impl AsRef<Path>) -> Self {
        self.stdin = Some(path.as_ref().to_owned());
        self
    }

    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    fn describe(&self) -> String {
        let mut text = Path::new(&self.program)
            .file_name()
            .unwrap_or(&self.program)
            .to_string_lossy()
            .into_owned();
        for arg in &self.args {
            text.push(' ');
            text.push_str(&arg.to_string_lossy());
        }
        text
    }

    /// Runs to completion (or the timeout, which panics) whatever the exit status.
    pub fn output(self) -> Output {
        let what = self.describe();
        let mut out = tempfile::tempfile().expect("temporary file");
        let mut err = tempfile::tempfile().expect("temporary file");
        let mut command = Command::new(&self.program);
        if let Some(dir) = &self.dir {
            command.current_dir(dir);
        }
        let stdin = match &self.stdin {
            Some(path) => Stdio::from(std::fs::File::open(path).expect("stdin file")),
            None => Stdio::null(),
        };
        let mut child = command
            .args(&self.args)
            .stdin(stdin)
            .stdout(out.try_clone().expect("dup"))
            .stderr(err.try_clone().expect("dup"))
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run `{what}`: {e}"));
        let deadline = Instant::now() + self.timeout;
        let status = loop {
            match child.try_wait().expect("wait") {
                Some(status) => break status,
                None if Instant::now() > deadline => {
                    let _ = child.kill();
                    let _ = child.wait();
                    panic!(
                        "`{what}` did not finish within {:?}\n--- stdout ---\n{}\n--- stderr ---\n{}",
                        self.timeout,
                        read_all(&mut out),
                        read_all(&mut err)
                    );
                }
                None => std::thread::sleep(Duration::from_millis(10)),
            }
        };
        Output {
            what,
            status,
            stdout: read_all(&mut out),
            stderr: read_all(&mut err),
        }
    }

    /// Runs and panics (with both outputs) unless it exits 0.
    pub fn ok(self) -> Output {
        let output = self.output();
        assert!(output.success(), "{}", output.describe());
        output
    }

    /// Runs and panics unless it exits non-zero.
    pub fn fails(self) -> Output {
        let output = self.output();
        assert!(
            !output.success(),
            "expected a failure, but {}",
            output.describe()
        );
        output
    }
}

fn read_all(file: &mut File) -> String {
    let mut bytes = Vec::new();
    let _ = file.seek(SeekFrom::Start(0));
    let _ = file.read_to_end(&mut bytes);
    String::from_utf8_lossy(&bytes).into_owned()
}

/// Polls `done` every 20 ms until it holds or `timeout` passes; returns whether it held.
pub fn wait_until(timeout: Duration, mut done: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if done() {
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Whether process `pid` has exited (a zombie waiting for its parent counts as exited).
pub fn process_gone(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        // "pid (comm) S ...": the state follows the last ')'
        Ok(stat) => matches!(
            stat.rsplit_once(')')
                .and_then(|(_, rest)| rest.split_whitespace().next()),
            Some("Z" | "X") | None
        ),
    }
}

// ---------------------------------------------------------------------------------------
// Fixtures

/// A fresh folder for one test's files, removed at the end.
pub struct Scratch {
    dir: tempfile::TempDir,
}

impl Scratch {
    /// A folder under `$IMGBLK_SCRATCH`, else /var/tmp (disk-backed, so O_DIRECT works).
    pub fn new(test: &str) -> Scratch {
        let base = std::env::var_os("IMGBLK_SCRATCH")
            .map(PathBuf::from)
            .filter(|p| p.is_dir())
            .or_else(|| Some(PathBuf::from("/var/tmp")).filter(|p| p.is_dir()))
            .unwrap_or_else(std::env::temp_dir);
        let dir = tempfile::Builder::new()
            .prefix(&format!("imgblk-{test}-"))
            .tempdir_in(&base)
            .unwrap_or_else(|e| panic!("cannot make a folder in {}: {e}", base.display()));
        Scratch { dir }
    }

    /// The path of `name` inside the folder.
    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// Makes the folder `name` inside the folder.
    pub fn mkdir(&self, name: &str) -> PathBuf {
        let path = self.path(name);
        std::fs::create_dir_all(&path).expect("mkdir");
        path
    }
}

/// Writes `len` bytes of seeded random data to a new file.
pub fn write_random(path: &Path, len: u64, seed: u64) {
    let mut rng = SmallRng::seed_from_u64(seed);
    let mut file = File::create(path).expect("create");
    let mut buf = vec![0u8; MIB as usize];
    let mut left = len;
    while left > 0 {
        let n = left.min(MIB) as usize;
        rng.fill_bytes(&mut buf[..n]);
        file.write_all(&buf[..n]).expect("write");
        left -= n as u64;
    }
}

/// Writes `len` bytes of mixed content: per 64 KiB, a hole (zeros), random bytes, a
/// repeated pattern or text-like bytes, so that qcow2 gets unallocated, plain and (with
/// `qemu-img convert -c`) truly compressed clusters.
pub fn write_mixed(path: &Path, len: u64, seed: u64) {
    const CHUNK: u64 = 64 * KIB;
    let mut rng = SmallRng::seed_from_u64(seed);
    let file = File::create(path).expect("create");
    file.set_len(len).expect("truncate");
    let mut buf = vec![0u8; CHUNK as usize];
    let mut offset = 0;
    while offset < len {
        let n = (len - offset).min(CHUNK) as usize;
        match rng.gen_range(0..4) {
            0 => {}
            1 => {
                rng.fill_bytes(&mut buf[..n]);
                file.write_all_at(&buf[..n], offset).expect("write");
            }
            2 => {
                let pattern: [u8; 13] = rng.gen();
                for (i, b) in buf[..n].iter_mut().enumerate() {
                    *b = pattern[i % pattern.len()];
                }
                file.write_all_at(&buf[..n], offset).expect("write");
            }
            _ => {
                for b in &mut buf[..n] {
                    *b = b"etaoin shrdlu\n"[rng.gen_range(0..14)];
                }
                file.write_all_at(&buf[..n], offset).expect("write");
            }
        }
        offset += n as u64;
    }
}

/// Runs `qemu-img ARGS`.
pub fn qemu_img<S: AsRef<OsStr>>(args: impl IntoIterator<Item = S>) -> Output {
    cmd("qemu-img").args(args).ok()
}

/// `qemu-img check` of a qcow2 image: 0 clean, 3 leaked clusters only (which a crash
/// may leave, as the README says); anything else is corruption and panics. Returns
/// whether clusters leaked.
pub fn assert_not_corrupt(image: &Path, what: &str) -> bool {
    let out = cmd("qemu-img")
        .args(["check", "-f", "qcow2"])
        .arg(image)
        .output();
    let code = out.status.code();
    assert!(
        matches!(code, Some(0) | Some(3)),
        "{what}: {}",
        out.describe()
    );
    code == Some(3)
}

/// What the guest sees of `image`, as a raw file written by qemu-img (the reference).
pub fn reference_raw(image: &Path, out: &Path) -> PathBuf {
    qemu_img([
        OsStr::new("convert"),
        OsStr::new("-O"),
        OsStr::new("raw"),
        image.as_os_str(),
        out.as_os_str(),
    ]);
    out.to_path_buf()
}

pub fn file_size(path: &Path) -> u64 {
    std::fs::metadata(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .len()
}

// ---------------------------------------------------------------------------------------
// Comparing bytes

/// Asserts that `len` bytes at `a_offset` in `a` equal those at `b_offset` in `b`,
/// naming the first differing byte. Reads through the page cache.
pub fn assert_same_bytes(a: &Path, a_offset: u64, b: &Path, b_offset: u64, len: u64) {
    let fa = File::open(a).unwrap_or_else(|e| panic!("{}: {e}", a.display()));
    let fb = File::open(b).unwrap_or_else(|e| panic!("{}: {e}", b.display()));
    let mut ba = vec![0u8; MIB as usize];
    let mut bb = vec![0u8; MIB as usize];
    let mut done = 0;
    while done < len {
        let n = (len - done).min(MIB) as usize;
        fa.read_exact_at(&mut ba[..n], a_offset + done)
            .unwrap_or_else(|e| panic!("reading {} at {}: {e}", a.display(), a_offset + done));
        fb.read_exact_at(&mut bb[..n], b_offset + done)
            .unwrap_or_else(|e| panic!("reading {} at {}: {e}", b.display(), b_offset + done));
        if ba[..n] != bb[..n] {
            let i = ba[..n]
                .iter()
                .zip(&bb[..n])
                .position(|(x, y)| x != y)
                .unwrap();
            let at = done + i as u64;
            panic!(
                "{} and {} differ at byte {at} of the compared range (sector {}): {:#04x} != {:#04x}",
                a.display(),
                b.display(),
                at / 512,
                ba[i],
                bb[i]
            );
        }
        done += n as u64;
    }
}

/// Asserts that block device `dev` holds exactly the bytes of file `expected`.
pub fn assert_device_equals(dev: &Path, expected: &Path) {
    let len = file_size(expected);
    assert_eq!(
        block_size(dev),
        len,
        "size of {} vs {}",
        dev.display(),
        expected.display()
    );
    assert_same_bytes(dev, 0, expected, 0, len);
}

/// Size in bytes of block device `dev` (BLKGETSIZE64).
pub fn block_size(dev: &Path) -> u64 {
    let out = cmd("blockdev").arg("--getsize64").arg(dev).ok();
    out.stdout.trim().parse().expect("blockdev --getsize64")
}

/// A buffer aligned for O_DIRECT.
pub struct AlignedBuf {
    ptr: *mut u8,
    layout: std::alloc::Layout,
}

impl AlignedBuf {
    pub fn new(len: usize) -> AlignedBuf {
        let layout = std::alloc::Layout::from_size_align(len, 4096).expect("layout");
        // SAFETY: the layout has a non-zero size (callers pass len > 0).
        let ptr = unsafe { std::alloc::alloc_zeroed(layout) };
        assert!(!ptr.is_null(), "allocation failed");
        AlignedBuf { ptr, layout }
    }

    pub fn as_mut_slice(&mut self) -> &mut [u8] {
        // SAFETY: ptr points at layout.size() initialised bytes that we own exclusively.
        unsafe { std::slice::from_raw_parts_mut(self.ptr, self.layout.size()) }
    }
}

impl Drop for AlignedBuf {
    fn drop(&mut self) {
        // SAFETY: allocated in `new` with this layout.
        unsafe { std::alloc::dealloc(self.ptr, self.layout) }
    }
}

/// Opens `path` for reading with O_DIRECT (bypassing the page cache).
pub fn open_direct(path: &Path) -> File {
    std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_DIRECT)
        .open(path)
        .unwrap_or_else(|e| panic!("open {} O_DIRECT: {e}", path.display()))
}

/// Opens `path` for reading and writing with O_DIRECT.
pub fn open_rw_direct(path: &Path) -> File {
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_DIRECT)
        .open(path)
        .unwrap_or_else(|e| panic!("open {} O_DIRECT rw: {e}", path.display()))
}

// ---------------------------------------------------------------------------------------
// Devices

/// An image attached with `imgblk attach`; detached on drop (after unmounting whatever
/// the test mounted through [`Device::mount`]), so a failing test leaves nothing behind.
pub struct Device {
    /// ublk device id: N in /dev/ublkbN.
    pub id: u32,
    /// `/dev/ublkbN`.
    pub path: PathBuf,
    /// The daemon's pid, when known (from `--json`).
    pub pid: Option<u32>,
    /// What `attach --json` printed (Value::Null for a plain attach).
    pub info: Value,
    mounts: Vec<PathBuf>,
    detached: bool,
}

/// Parses `/dev/ublkbN` into N.
pub fn device_id(path: &str) -> Option<u32> {
    path.strip_prefix("/dev/ublkb")?.parse().ok()
}

impl Device {
    /// `imgblk attach --json IMAGE OPTIONS...`; panics unless it succeeds.
    pub fn attach(image: &Path, options: &[&str]) -> Device {
        require_ublk();
        let out = imgblk()
            .arg("attach")
            .arg("--json")
            .args(options)
            .arg(image)
            .ok();
        let info: Value = serde_json::from_str(out.stdout.trim()).unwrap_or_else(|e| {
            panic!(
                "attach --json did not print one JSON object ({e})\n{}",
                out.describe()
            )
        });
        let path = info["device"]
            .as_str()
            .unwrap_or_else(|| panic!("no \"device\" in {info}"))
            .to_owned();
        let id = device_id(&path).unwrap_or_else(|| panic!("unexpected device path {path}"));
        // Guard first, check after: a failed check still detaches.
        let device = Device {
            id,
            path: PathBuf::from(&path),
            pid: info["pid"].as_u64().map(|p| p as u32),
            info: info.clone(),
            mounts: Vec::new(),
            detached: false,
        };
        assert_eq!(
            info["id"].as_u64(),
            Some(id as u64),
            "id vs device in {info}"
        );
        device.wait_for_node();
        device
    }

    /// `imgblk attach IMAGE OPTIONS...` (no --json): stdout is the device path alone.
    pub fn attach_plain(image: &Path, options: &[&str]) -> Device {
        require_ublk();
        let out = imgblk().arg("attach").args(options).arg(image).ok();
        let path = out.stdout.trim().to_owned();
        let id = device_id(&path).unwrap_or_else(|| {
            panic!(
                "attach should print only /dev/ublkbN on stdout\n{}",
                out.describe()
            )
        });
        let device = Device {
            id,
            path: PathBuf::from(&path),
            pid: None,
            info: Value::Null,
            mounts: Vec::new(),
            detached: false,
        };
        device.wait_for_node();
        device
    }

    fn wait_for_node(&self) {
        // attach returns once the device is live; allow devtmpfs a moment all the same
        assert!(
            wait_until(Duration::from_secs(5), || self.path.exists()),
            "{} does not exist after attach",
            self.path.display()
        );
    }

    /// `ublkbN`.
    pub fn name(&self) -> String {
        format!("ublkb{}", self.id)
    }

    /// `/sys/block/ublkbN`.
    pub fn sys(&self) -> PathBuf {
        PathBuf::from("/sys/block").join(self.name())
    }

    /// A sysfs attribute of the disk, trimmed.
    pub fn sys_attr(&self, attr: &str) -> String {
        let path = self.sys().join(attr);
        std::fs::read_to_string(&path)
            .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
            .trim()
            .to_owned()
    }

    /// Whether the kernel marks the disk read-only.
    pub fn kernel_read_only(&self) -> bool {
        self.sys_attr("ro") == "1"
    }

    /// `/dev/ublkbNpM`, waiting (up to 10 s, with one `blockdev --rereadpt` on the way)
    /// for the kernel's partition scan and devtmpfs to create it.
    pub fn partition(&self, number: u32) -> PathBuf {
        let path = PathBuf::from(format!("{}p{number}", self.path.display()));
        if !wait_until(Duration::from_secs(3), || path.exists()) {
            let reread = cmd("blockdev").arg("--rereadpt").arg(&self.path).output();
            assert!(
                wait_until(Duration::from_secs(7), || path.exists()),
                "{} did not appear (partition scan); blockdev --rereadpt said: {}",
                path.display(),
                reread.describe()
            );
        }
        path
    }

    /// Mounts `source` (this device or one of its partitions) on `target`; unmounted
    /// again on drop if the test does not do it.
    pub fn mount(&mut self, source: &Path, target: &Path, options: &str) {
        std::fs::create_dir_all(target).expect("mkdir mount point");
        let mut mount = cmd("mount");
        if !options.is_empty() {
            mount = mount.arg("-o").arg(options);
        }
        mount.arg(source).arg(target).ok();
        self.mounts.push(target.to_path_buf());
    }

    /// Unmounts `target`, which [`Device::mount`] mounted.
    pub fn umount(&mut self, target: &Path) {
        cmd("umount").arg(target).ok();
        self.mounts.retain(|m| m != target);
    }

    /// This device's entry in `imgblk list --json`, if any.
    pub fn list_entry(&self) -> Option<Value> {
        list_json()
            .into_iter()
            .find(|d| d["id"].as_u64() == Some(self.id as u64))
    }

    /// `imgblk detach /dev/ublkbN`, asserting that it succeeds and that the device and
    /// its daemon are gone when it returns.
    pub fn detach(mut self) {
        self.detached = true;
        for target in std::mem::take(&mut self.mounts).iter().rev() {
            cmd("umount").arg(target).ok();
        }
        imgblk().arg("detach").arg(&self.path).ok();
        self.assert_gone();
    }

    /// Kills the current daemon with SIGKILL, checks that `list` calls the device orphaned,
    /// recovers it with `imgblk recover` and checks that it is live again.
    pub fn kill_and_recover(&self) {
        // The daemon serving it now: after a recovery, not the one attach started.
        let entry = self.list_entry().expect("device listed");
        let pid = entry["pid"]
            .as_u64()
            .and_then(|pid| u32::try_from(pid).ok())
            .unwrap_or_else(|| panic!("no pid in {entry}"));
        cmd("kill").args(["-9", &pid.to_string()]).ok();
        assert!(wait_until(Duration::from_secs(10), || process_gone(pid)));
        let entry = self.list_entry().expect("device listed");
        assert_eq!(entry["state"], "orphaned", "{entry}");
        imgblk().arg("recover").arg(&self.path).ok();
        let entry = self.list_entry().expect("device listed");
        assert_eq!(entry["state"], "live", "{entry}");
    }

    /// Drops the guard without detaching: the test detached the device by other means.
    pub fn disarm(mut self) {
        self.detached = true;
    }

    /// Asserts that nothing of the device is left: node, sysfs entry, daemon.
    pub fn assert_gone(&self) {
        let char_dev = PathBuf::from(format!("/dev/ublkc{}", self.id));
        // detach waits until the device is gone; the short grace is for devtmpfs only
        assert!(
            wait_until(Duration::from_secs(2), || !self.path.exists()
                && !self.sys().exists()
                && !char_dev.exists()),
            "after detach: {} exists: {}, {} exists: {}, {} exists: {}",
            self.path.display(),
            self.path.exists(),
            self.sys().display(),
            self.sys().exists(),
            char_dev.display(),
            char_dev.exists()
        );
        if let Some(pid) = self.pid {
            assert!(
                wait_until(Duration::from_secs(2), || process_gone(pid)),
                "daemon pid {pid} still runs after detach"
            );
        }
    }
}

impl Drop for Device {
    fn drop(&mut self) {
        if self.detached {
            return;
        }
        for target in self.mounts.iter().rev() {
            if !cmd("umount").arg(target).output().success() {
                let lazy = cmd("umount").arg("-l").arg(target).output();
                eprintln!(
                    "cleanup: umount {} failed; lazy: {}",
                    target.display(),
                    lazy.describe()
                );
            }
        }
        let out = imgblk()
            .arg("detach")
            .arg(self.id.to_string())
            .timeout(Duration::from_secs(60))
            .output();
        if !out.success() {
            eprintln!("cleanup: {}", out.describe());
            let forced = imgblk()
                .args(["detach", "--force"])
                .arg(self.id.to_string())
                .timeout(Duration::from_secs(60))
                .output();
            if !forced.success() {
                eprintln!("cleanup: {}", forced.describe());
            }
        }
    }
}

/// `imgblk list --json`, parsed.
pub fn list_json() -> Vec<Value> {
    let out = imgblk().args(["list", "--json"]).ok();
    match serde_json::from_str(out.stdout.trim()) {
        Ok(Value::Array(items)) => items,
        _ => panic!("list --json did not print a JSON array\n{}", out.describe()),
    }
}

// ---------------------------------------------------------------------------------------
// Host LVM, for building fixtures the way real hosts and guests do

/// An LVM tool (`args[0]`) confined to `device`, without udev (the VM has none), so a
/// fixture never touches, or is touched by, any other VG.
pub fn host_lvm(device: &str, args: &[&str]) -> Cmd {
    const CONFIG: &str =
        "activation { udev_sync = 0 udev_rules = 0 } devices { obtain_device_list_from_udev = 0 }";
    cmd(args[0])
        .args(["--devices", device, "--config", CONFIG])
        .args(&args[1..])
}

/// Runs `body`, then `cleanup` whatever happened, and re-raises a panic of `body`.
pub fn with_cleanup<T>(
    body: impl FnOnce() -> T + std::panic::UnwindSafe,
    cleanup: impl FnOnce(),
) -> T {
    let result = std::panic::catch_unwind(body);
    cleanup();
    result.unwrap_or_else(|panic| std::panic::resume_unwind(panic))
}

/// Sets up a loop device over `file` (`losetup --show -f`); returns its path.
pub fn loop_device(file: &Path) -> String {
    cmd("losetup")
        .args(["--show", "-f"])
        .arg(file)
        .ok()
        .stdout
        .trim()
        .to_string()
}

/// `fio` on `dev` (a device, or a file of 8 MiB) with random 4 KiB direct writes from two
/// jobs (each in its own 4 MiB, at depth 32), checksummed: `extra` makes it write and
/// verify, or only verify what an earlier run with the same options wrote.
pub fn fio_verify(dev: &Path, extra: &str) {
    cmd("fio")
        .arg("--name=v")
        .arg(format!("--filename={}", dev.display()))
        .args([
            "--ioengine=libaio",
            "--direct=1",
            "--rw=randwrite",
            "--bs=4k",
            "--iodepth=32",
            "--numjobs=2",
            "--size=4M",
            "--offset_increment=4M",
            "--randrepeat=1",
            "--verify=crc32c",
            "--verify_fatal=1",
            extra,
        ])
        .ok();
}

/// Drops the page cache, so that the next attach reads its image's tables from the disk.
pub fn drop_caches() {
    std::fs::write("/proc/sys/vm/drop_caches", "3").expect("drop the page cache");
}
