//! Fuzzing of every parser on stable Rust (cargo-fuzz needs nightly): one target per
//! parser, each mutating small real seed images (made at test time by `qemu-img`,
//! `sfdisk`, `sgdisk`, `cryptsetup`, or by the LVM encoders) and running what a reader
//! of the image does: open, map, read a few ranges (so the tables behind the header are
//! parsed), and for qcow2 also write (so the refcount path runs).
//!
//! Every case must end in data or a clean error. A case fails on a panic, on running
//! longer than [`DEADLINE`] (a watchdog aborts the process and names the case), on an
//! allocation that would take the thread past [`ALLOC_LIMIT`] bytes (the counting
//! allocator below refuses it and names the case), on an error opening an image file
//! that does not name the file, where `data_run` (the lookup a ublk queue makes) reports a
//! run of data that `map` does not give, or where a range read in pieces gives other bytes
//! than read whole.
//!
//! Cases are numbered; case `n` draws its mutations from a PRNG seeded with `n`, so a
//! failure replays with `FUZZ_SEED=n FUZZ_CASES=1`. Knobs (environment):
//! - `FUZZ_CASES`: cases per target (default 200, enough for `cargo test`);
//! - `FUZZ_SECONDS`: stop a target after this many seconds even if cases remain;
//! - `FUZZ_SEED`: number of the first case (default 0).
//!
//! A long run of one target, as the README's developer section says:
//! `FUZZ_CASES=1000000 FUZZ_SECONDS=600 nice -n 10 cargo test --release --test fuzz -- --exact fuzz_qcow2 --nocapture`.

mod common;

use imgblk::image::open::ChainBudget;
use imgblk::image::policy::{Backing, NamePolicy};
use imgblk::image::status::walk_status;
use imgblk::image::{
    io, open_image, ChainEntry, DiskImage, Extent, Format, OpenOptions, Source, TransformRead,
};
use imgblk::layout::luks::{read_metadata as luks_metadata, LuksVolume};
use imgblk::layout::lvm::label::{encode_area, encode_label};
use imgblk::layout::lvm::{metadata, DiskArea, VgMetadata};
use imgblk::layout::util::lvm_crc;
use imgblk::layout::{discover, gpt};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

/// Longest a case may run before it counts as a hang.
const DEADLINE: Duration = Duration::from_secs(20);
/// Most bytes one case may hold allocated at once.
const ALLOC_LIMIT: usize = 256 << 20;
/// Byte the seeds' guest data is filled with, after each sector's tag ([`data_sector`]):
/// blocks of the seed files of that shape (or of zeroes) are data, the others metadata.
const DATA_BYTE: u8 = 0xd7;

// ---------------------------------------------------------------------------------------
// The counting allocator: refuses allocations that take a case past ALLOC_LIMIT.

thread_local! {
    /// Bytes this thread holds (allocations on it minus frees on it).
    static LIVE: Cell<isize> = const { Cell::new(0) };
    /// Number of the case running on this thread, or -1 when none is.
    static CASE: Cell<i64> = const { Cell::new(-1) };
    /// Size of the first allocation refused during the current case.
    static REFUSED: Cell<usize> = const { Cell::new(0) };
}

struct Counting;

impl Counting {
    /// Whether `size` more bytes may be allocated now; records and reports a refusal.
    fn admit(size: usize) -> bool {
        let case = CASE.try_with(Cell::get).unwrap_or(-1);
        if case < 0 {
            return true;
        }
        let live = LIVE.try_with(Cell::get).unwrap_or(0).max(0) as usize;
        if live.saturating_add(size) <= ALLOC_LIMIT {
            return true;
        }
        if REFUSED.try_with(Cell::get) == Ok(0) {
            let _ = REFUSED.try_with(|r| r.set(size));
            // No allocation here: format into a stack buffer and write(2) it.
            let mut msg = [0u8; 96];
            let head = b"fuzz: refused an allocation of ";
            msg[..head.len()].copy_from_slice(head);
            let mut len = head.len();
            len += write_decimal(&mut msg[len..], size as u64);
            let tail = b" bytes in case ";
            msg[len..len + tail.len()].copy_from_slice(tail);
            len += tail.len();
            len += write_decimal(&mut msg[len..], case as u64);
            msg[len] = b'\n';
            // SAFETY: writes an initialised stack buffer to stderr.
            unsafe { libc::write(2, msg.as_ptr().cast(), len + 1) };
        }
        false
    }

    fn count(delta: isize) {
        let _ = LIVE.try_with(|l| l.set(l.get().wrapping_add(delta)));
    }
}

/// Writes `n` in decimal at the start of `out`; returns the number of digits.
fn write_decimal(out: &mut [u8], mut n: u64) -> usize {
    let mut digits = [0u8; 20];
    let mut i = digits.len();
    loop {
        i -= 1;
        digits[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    let len = digits.len() - i;
    out[..len].copy_from_slice(&digits[i..]);
    len
}

// SAFETY: defers to the system allocator; only counts and sometimes refuses.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if !Self::admit(layout.size()) {
            return std::ptr::null_mut();
        }
        let p = System.alloc(layout);
        if !p.is_null() {
            Self::count(layout.size() as isize);
        }
        p
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        if !Self::admit(layout.size()) {
            return std::ptr::null_mut();
        }
        let p = System.alloc_zeroed(layout);
        if !p.is_null() {
            Self::count(layout.size() as isize);
        }
        p
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        System.dealloc(ptr, layout);
        Self::count(-(layout.size() as isize));
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if new_size > layout.size() && !Self::admit(new_size - layout.size()) {
            return std::ptr::null_mut();
        }
        let p = System.realloc(ptr, layout, new_size);
        if !p.is_null() {
            Self::count(new_size as isize - layout.size() as isize);
        }
        p
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

// ---------------------------------------------------------------------------------------
// The driver: cases, watchdog, reporting.

/// Reads a numeric knob from the environment.
fn knob(name: &str) -> Option<u64> {
    std::env::var(name).ok().map(|v| {
        v.parse()
            .unwrap_or_else(|_| panic!("{name}={v} is not a number"))
    })
}

/// Runs the cases of `target`: each gets a PRNG seeded with its number and must return
/// `Ok` (a clean outcome: true if the input parsed, false if it was rejected) or `Err`
/// (a finding, which fails the test).
fn drive(target: &str, mut case: impl FnMut(&mut SmallRng, u64) -> Result<bool, String>) {
    let cases = knob("FUZZ_CASES").unwrap_or(200);
    let first = knob("FUZZ_SEED").unwrap_or(0);
    let limit = knob("FUZZ_SECONDS").map(Duration::from_secs);
    let started_ms = Arc::new(AtomicU64::new(0));
    let running = Arc::new(AtomicU64::new(u64::MAX));
    let stop = Arc::new(AtomicBool::new(false));
    let t0 = Instant::now();
    let watchdog = {
        let (started_ms, running, stop) = (started_ms.clone(), running.clone(), stop.clone());
        let target = target.to_string();
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                std::thread::sleep(Duration::from_millis(200));
                let at = started_ms.load(Ordering::Relaxed);
                let now = t0.elapsed().as_millis() as u64;
                if at != 0 && now.saturating_sub(at) > DEADLINE.as_millis() as u64 {
                    eprintln!(
                        "fuzz {target}: case {} ran longer than {DEADLINE:?} (a hang); replay with \
                         FUZZ_SEED={0} FUZZ_CASES=1",
                        running.load(Ordering::Relaxed)
                    );
                    std::process::abort();
                }
            }
        })
    };
    let (mut done, mut parsed) = (0u64, 0u64);
    for n in first..first.saturating_add(cases) {
        if limit.is_some_and(|l| t0.elapsed() >= l) {
            break;
        }
        let mut rng = SmallRng::seed_from_u64(n);
        running.store(n, Ordering::Relaxed);
        started_ms.store(t0.elapsed().as_millis() as u64 | 1, Ordering::Relaxed);
        let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| case(&mut rng, n)));
        started_ms.store(0, Ordering::Relaxed);
        let finding = match outcome {
            Ok(Ok(ok)) => {
                parsed += u64::from(ok);
                None
            }
            Ok(Err(finding)) => Some(finding),
            Err(_) => Some("panicked (message above)".to_string()),
        };
        if let Some(finding) = finding {
            stop.store(true, Ordering::Relaxed);
            panic!(
                "fuzz {target}: case {n}: {finding}; replay with FUZZ_SEED={n} FUZZ_CASES=1 \
                 cargo test --test fuzz -- --exact fuzz_{target}"
            );
        }
        done += 1;
    }
    let secs = t0.elapsed().as_secs_f64();
    stop.store(true, Ordering::Relaxed);
    watchdog.join().unwrap();
    eprintln!(
        "fuzz {target}: {done} cases (seeds {first}..{}) in {secs:.1} s, {:.0}/s, {parsed} parsed, \
         no findings",
        first + done,
        done as f64 / secs.max(1e-9)
    );
}

/// Runs `body` as the guarded part of case `n`: allocations are counted and limited.
fn guarded<T>(n: u64, body: impl FnOnce() -> T) -> Result<T, String> {
    LIVE.with(|l| l.set(0));
    REFUSED.with(|r| r.set(0));
    CASE.with(|c| c.set(n as i64));
    struct Disarm;
    impl Drop for Disarm {
        fn drop(&mut self) {
            CASE.with(|c| c.set(-1));
        }
    }
    let disarm = Disarm;
    let out = body();
    drop(disarm);
    match REFUSED.with(Cell::get) {
        0 => Ok(out),
        size => Err(format!(
            "tried to allocate {size} bytes (limit {ALLOC_LIMIT} per case)"
        )),
    }
}

// ---------------------------------------------------------------------------------------
// Inputs and mutations.

/// A seed and a mutable copy of it that is restored cheaply after each case.
struct Input {
    seed: Arc<Vec<u8>>,
    buf: Arc<Vec<u8>>,
    /// Byte ranges changed in `buf`.
    dirty: Vec<(usize, usize)>,
    /// Length after truncation.
    len: usize,
    /// 512-byte blocks holding metadata (neither zeroes nor guest data).
    hot: Vec<usize>,
}

/// Values that make good header fields: limits, powers of two, sizes around the file's.
fn interesting(rng: &mut SmallRng, file_len: u64) -> u64 {
    match rng.gen_range(0..16) {
        0 => 0,
        1 => 1,
        2 => u64::MAX,
        3 => u32::MAX as u64,
        4 => i64::MAX as u64,
        5 => i32::MAX as u64 + 1,
        6 => 1 << rng.gen_range(0..64),
        7 => (1 << rng.gen_range(0..64)) - 1,
        8 => file_len,
        9 => file_len.wrapping_sub(rng.gen_range(1..1024)),
        10 => file_len + rng.gen_range(1..1 << 20),
        11 => rng.gen_range(0..file_len.max(1)) & !511,
        12 => 512 * rng.gen_range(0..64),
        13 => rng.gen_range(0..256),
        _ => rng.gen(),
    }
}

impl Input {
    fn new(seed: Vec<u8>) -> Self {
        let hot = seed
            .chunks(512)
            .enumerate()
            .filter(|(i, b)| *i == 0 || !(b.iter().all(|&x| x == 0) || is_data_sector(b)))
            .map(|(i, _)| i)
            .collect();
        let seed = Arc::new(seed);
        Input {
            len: seed.len(),
            buf: seed.clone(),
            seed,
            dirty: Vec::new(),
            hot,
        }
    }

    /// The mutated bytes.
    fn bytes(&self) -> &[u8] {
        &self.buf[..self.len]
    }

    /// Undoes the last case's mutations.
    fn reset(&mut self) {
        let buf = Arc::make_mut(&mut self.buf);
        for (at, len) in self.dirty.drain(..) {
            buf[at..at + len].copy_from_slice(&self.seed[at..at + len]);
        }
        self.len = self.seed.len();
    }

    /// Overwrites bytes at `at` (clipped to the seed).
    fn put(&mut self, at: usize, bytes: &[u8]) {
        let end = (at + bytes.len()).min(self.seed.len());
        if at >= end {
            return;
        }
        Arc::make_mut(&mut self.buf)[at..end].copy_from_slice(&bytes[..end - at]);
        self.dirty.push((at, end - at));
    }

    /// A position biased towards metadata blocks, aligned to `align`.
    fn position(&self, rng: &mut SmallRng, align: usize) -> usize {
        let len = self.seed.len().max(1);
        let at = if !self.hot.is_empty() && rng.gen_ratio(4, 5) {
            self.hot[rng.gen_range(0..self.hot.len())] * 512 + rng.gen_range(0..512)
        } else {
            rng.gen_range(0..len)
        };
        at.min(len - 1) / align * align
    }

    /// Applies 1 to 8 random binary mutations, and sometimes a truncation.
    fn mutate(&mut self, rng: &mut SmallRng) {
        let file_len = self.seed.len() as u64;
        for _ in 0..rng.gen_range(1..=8) {
            match rng.gen_range(0..6) {
                0 => {
                    let at = self.position(rng, 1);
                    let v = [0u8, 0xff, 0x7f, 0x80, rng.gen()][rng.gen_range(0..5)];
                    self.put(at, &[v]);
                }
                1 => {
                    let at = self.position(rng, 1);
                    if let Some(&b) = self.buf.get(at) {
                        self.put(at, &[b ^ (1 << rng.gen_range(0..8))]);
                    }
                }
                2 | 3 => {
                    // A header field or table entry: an aligned word, either endianness.
                    let width = [2usize, 4, 8][rng.gen_range(0..3)];
                    let at = self.position(rng, width);
                    let v = interesting(rng, file_len);
                    let bytes = if rng.gen() {
                        v.to_le_bytes()
                    } else {
                        v.to_be_bytes()
                    };
                    let bytes = if rng.gen() {
                        &bytes[..width]
                    } else {
                        &bytes[8 - width..]
                    };
                    self.put(at, bytes);
                }
                4 => {
                    // Copy a run of bytes elsewhere: tables overlapping, offsets reused.
                    let from = self.position(rng, 8);
                    let to = self.position(rng, 8);
                    let n = rng
                        .gen_range(1..=64)
                        .min(self.seed.len().saturating_sub(from));
                    let chunk = self.buf[from..from + n].to_vec();
                    self.put(to, &chunk);
                }
                _ => {
                    let at = self.position(rng, 1);
                    let n = rng.gen_range(1..=32);
                    let fill = [0u8, 0xff][rng.gen_range(0..2)];
                    self.put(at, &vec![fill; n]);
                }
            }
        }
        if rng.gen_ratio(1, 12) {
            self.len = if rng.gen() {
                rng.gen_range(0..self.seed.len().max(1))
            } else {
                self.position(rng, 512)
            };
        }
    }

    /// Applies 1 to 6 mutations meant for text: bytes, tokens, deleted and repeated runs.
    fn mutate_text(&mut self, rng: &mut SmallRng) {
        const TOKENS: &[&[u8]] = &[
            b"0",
            b"-1",
            b"18446744073709551615",
            b"9223372036854775807",
            b"99999999999999999999999",
            b"4294967296",
            b"{",
            b"}",
            b"[",
            b"]",
            b"\"",
            b"=",
            b",",
            b"\n",
            b"#",
            b"\\",
            b"\0",
        ];
        let len = self.seed.len().max(1);
        for _ in 0..rng.gen_range(1..=6) {
            let at = rng.gen_range(0..len);
            match rng.gen_range(0..4) {
                0 => self.put(at, &[rng.gen()]),
                1 => {
                    let token = TOKENS[rng.gen_range(0..TOKENS.len())];
                    self.put(at, token);
                }
                2 => {
                    // Delete a run: shift the tail left.
                    let n = rng.gen_range(1..=40).min(len - at);
                    let tail = self.buf[at + n..self.len.max(at + n)].to_vec();
                    self.put(at, &tail);
                    self.len = self.len.saturating_sub(n).max(at);
                }
                _ => {
                    // Repeat a run in place of what follows it.
                    let n = rng.gen_range(1..=40).min(len - at);
                    let run = self.buf[at..at + n].to_vec();
                    self.put(at + n, &run);
                }
            }
        }
        if rng.gen_ratio(1, 10) {
            self.len = rng.gen_range(0..len);
        }
    }
}

/// A scratch file in /dev/shm (or the temp dir) kept equal to an [`Input`]: each case
/// writes only the mutated ranges and restores them afterwards.
struct Scratch {
    path: PathBuf,
    file: std::fs::File,
}

impl Scratch {
    fn new(dir: &Path, name: &str, seed: &[u8]) -> Self {
        let path = dir.join(name);
        std::fs::write(&path, seed).unwrap();
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&path)
            .unwrap();
        Scratch { path, file }
    }

    /// Makes the file hold `input`'s mutated bytes.
    fn apply(&self, input: &Input) {
        for &(at, len) in &input.dirty {
            self.file
                .write_all_at(&input.buf[at..at + len], at as u64)
                .unwrap();
        }
        if input.len != input.seed.len() {
            self.file.set_len(input.len as u64).unwrap();
        }
    }

    /// Makes the file hold the seed again; `all` rewrites it whole (after writes to it).
    fn restore(&self, input: &Input, all: bool) {
        if all {
            self.file.set_len(0).unwrap();
            self.file.write_all_at(&input.seed, 0).unwrap();
            return;
        }
        for &(at, len) in &input.dirty {
            self.file
                .write_all_at(&input.seed[at..at + len], at as u64)
                .unwrap();
        }
        if input.len != input.seed.len() {
            self.file
                .write_all_at(&input.seed[input.len..], input.len as u64)
                .unwrap();
        }
    }
}

/// A directory for scratch files, in /dev/shm when there is one.
fn scratch_dir() -> tempfile::TempDir {
    let shm = Path::new("/dev/shm");
    if shm.is_dir() {
        tempfile::tempdir_in(shm).unwrap()
    } else {
        tempfile::tempdir().unwrap()
    }
}

// ---------------------------------------------------------------------------------------
// Seeds.

/// Runs a tool that makes a seed; a missing tool fails the test.
fn tool(dir: &Path, program: &str, args: &[&str], stdin: Option<&str>) {
    use std::io::Write;
    let mut child = Command::new(program)
        .args(args)
        .current_dir(dir)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| {
            panic!("{program} is needed to make fuzz seeds (ci/install-deps): {e}")
        });
    child
        .stdin
        .take()
        .unwrap()
        .write_all(stdin.unwrap_or("").as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{program} {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Sector of guest data at byte `at` of the seeds' disk: an 8-byte tag (`at`) then
/// [`DATA_BYTE`]s, so that data read from the wrong place shows.
fn data_sector(at: u64) -> [u8; 512] {
    let mut sector = [DATA_BYTE; 512];
    sector[..8].copy_from_slice(&at.to_le_bytes());
    sector
}

/// Whether a 512-byte block of a seed file is a [`data_sector`].
fn is_data_sector(block: &[u8]) -> bool {
    block.len() == 512 && block[8..].iter().all(|&x| x == DATA_BYTE)
}

/// The guest data of the image seeds: 8 MiB with a few runs of [`data_sector`]s.
fn seed_raw(dir: &Path) -> PathBuf {
    let path = dir.join("seed.raw");
    let file = std::fs::File::create(&path).unwrap();
    file.set_len(8 << 20).unwrap();
    for (at, len) in [
        (0u64, 65536u64),
        ((1 << 20) + 4096, 8192),
        (3 << 20, 100_000),
        ((8 << 20) - 8192, 8192),
    ] {
        let data: Vec<u8> = (at..at + len)
            .step_by(512)
            .flat_map(data_sector)
            .take(len as usize)
            .collect();
        file.write_all_at(&data, at).unwrap();
    }
    path
}

/// Image seeds made by `qemu-img convert` from [`seed_raw`], by name.
fn image_seeds() -> &'static Vec<(&'static str, Vec<u8>)> {
    static SEEDS: OnceLock<Vec<(&'static str, Vec<u8>)>> = OnceLock::new();
    SEEDS.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        let raw = seed_raw(dir.path());
        let raw = raw.to_str().unwrap();
        let mut seeds = Vec::new();
        for (name, args) in [
            ("qcow2", &["-O", "qcow2", "-o", "cluster_size=4096"][..]),
            (
                "qcow2-v2",
                &["-O", "qcow2", "-o", "compat=0.10,cluster_size=512"],
            ),
            (
                "qcow2-compressed",
                &["-c", "-O", "qcow2", "-o", "cluster_size=4096"],
            ),
            (
                "qcow2-zstd",
                &[
                    "-c",
                    "-O",
                    "qcow2",
                    "-o",
                    "cluster_size=4096,compression_type=zstd",
                ],
            ),
            // Gets a snapshot and changes after it, below.
            (
                "qcow2-snapshot",
                &["-O", "qcow2", "-o", "cluster_size=4096"],
            ),
            (
                "qcow2-extended-l2",
                &["-O", "qcow2", "-o", "extended_l2=on,cluster_size=16k"],
            ),
            ("vmdk-sparse", &["-O", "vmdk"]),
            (
                "vmdk-stream",
                &["-O", "vmdk", "-o", "subformat=streamOptimized"],
            ),
            ("vhd-dynamic", &["-O", "vpc"]),
            ("vhd-fixed", &["-O", "vpc", "-o", "subformat=fixed"]),
            ("vhdx", &["-O", "vhdx", "-o", "block_size=1M"]),
            ("vdi", &["-O", "vdi"]),
        ] {
            let out = dir.path().join(format!("seed.{name}"));
            let mut all = vec!["convert"];
            all.extend_from_slice(args);
            all.extend([raw, out.to_str().unwrap()]);
            common::qemu_img(dir.path(), &all);
            if name == "qcow2-snapshot" {
                add_snapshot(&out);
            }
            seeds.push((name, std::fs::read(&out).unwrap()));
        }
        seeds
    })
}

/// Takes snapshot `s1` of the qcow2 at `path`, then overwrites some of its data.
fn add_snapshot(path: &Path) {
    let dir = path.parent().unwrap();
    let name = path.to_str().unwrap();
    common::qemu_img(dir, &["snapshot", "-c", "s1", name]);
    common::qemu(
        "qemu-io",
        dir,
        &["-f", "qcow2", "-c", "write -P 0x5a 64k 200k", name],
    );
}

/// The seed image `name`'s bytes.
fn image_seed(name: &str) -> Vec<u8> {
    image_seeds()
        .iter()
        .find(|(n, _)| *n == name)
        .unwrap_or_else(|| panic!("no seed {name}"))
        .1
        .clone()
}

/// A 4 MiB disk partitioned by `sfdisk` (MBR with an extended partition and two logical
/// ones) or by `sgdisk` (GPT with three partitions).
fn partitioned_seed(gpt: bool) -> Vec<u8> {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("disk");
    std::fs::File::create(&path)
        .unwrap()
        .set_len(4 << 20)
        .unwrap();
    let p = path.to_str().unwrap();
    if gpt {
        tool(
            dir.path(),
            "sgdisk",
            &[
                "-a",
                "1",
                "-n",
                "1:40:1023",
                "-n",
                "2:1024:3071",
                "-t",
                "2:8e00",
                "-n",
                "3:3072:8100",
                p,
            ],
            None,
        );
    } else {
        let script = "label: dos\nstart=64, size=960, type=83\nstart=1024, size=6000, type=5\n\
                      start=1088, size=1000, type=83\nstart=2200, size=2000, type=8e\n";
        tool(dir.path(), "sfdisk", &["-q", p], Some(script));
    }
    std::fs::read(&path).unwrap()
}

/// LVM metadata text of VG `vg0` on one PV with 64 KiB extents: a linear LV, a striped
/// one and one of two segments.
const LVM_TEXT: &str = r#"vg0 {
	id = "Jc2Ndp-KdV9-E1vC-0cjH-9ZbN-R2Z5-0fZ4Xq"
	seqno = 4
	format = "lvm2"
	status = ["RESIZEABLE", "READ", "WRITE"]
	flags = []
	extent_size = 128
	max_lv = 0
	max_pv = 0
	metadata_copies = 0

	physical_volumes {

		pv0 {
			id = "abcdef-GHIJ-KLmn-opqr-stUV-WXyz-012345"
			device = "/dev/loop0"
			status = ["ALLOCATABLE"]
			flags = []
			dev_size = 8192
			pe_start = 2048
			pe_count = 48
		}
	}

	logical_volumes {

		root {
			id = "Lv0000-aaaa-bbbb-cccc-dddd-eeee-000001"
			status = ["READ", "WRITE", "VISIBLE"]
			flags = []
			creation_time = 1700000000
			creation_host = "builder"
			segment_count = 1

			segment1 {
				start_extent = 0
				extent_count = 4

				type = "striped"
				stripe_count = 1

				stripes = [
					"pv0", 0
				]
			}
		}

		striped {
			id = "Lv0000-aaaa-bbbb-cccc-dddd-eeee-000002"
			status = ["READ", "WRITE", "VISIBLE"]
			flags = []
			segment_count = 1

			segment1 {
				start_extent = 0
				extent_count = 8

				type = "striped"
				stripe_count = 2
				stripe_size = 128

				stripes = [
					"pv0", 4,
					"pv0", 8
				]
			}
		}

		span {
			id = "Lv0000-aaaa-bbbb-cccc-dddd-eeee-000003"
			status = ["READ", "WRITE", "VISIBLE"]
			flags = []
			segment_count = 2

			segment1 {
				start_extent = 0
				extent_count = 2

				type = "striped"
				stripe_count = 1

				stripes = [
					"pv0", 20
				]
			}
			segment2 {
				start_extent = 2
				extent_count = 3

				type = "striped"
				stripe_count = 1

				stripes = [
					"pv0", 30
				]
			}
		}
	}
}
contents = "Text Format Volume Group"
version = 1
"#;

/// Where the metadata text starts in the ring of [`lvm_seed`]: 1000 bytes before its
/// end, so that the text wraps around.
const LVM_RING: u64 = 8192 - 1000;

/// A 4 MiB whole-disk PV of [`LVM_TEXT`]: label, one metadata area at 4 KiB whose text
/// wraps around the end of its ring, data from 1 MiB.
fn lvm_seed() -> Vec<u8> {
    const SIZE: u64 = 4 << 20;
    let mda = DiskArea {
        offset: 4096,
        size: 8192,
    };
    let mut disk = vec![0u8; SIZE as usize];
    disk[512..1024].copy_from_slice(&encode_label(
        "abcdefGHIJKLmnopqrstUVWXyz012345",
        SIZE,
        1 << 20,
        &[mda],
    ));
    let area = encode_area(mda.offset, mda.size, LVM_RING, LVM_TEXT);
    disk[4096..4096 + area.len()].copy_from_slice(&area);
    disk
}

/// LUKS1 and LUKS2 volumes made by `cryptsetup luksFormat` with cheap key slots.
fn luks_seeds() -> Vec<Vec<u8>> {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("key"), "fuzz").unwrap();
    let mut seeds = Vec::new();
    for args in [
        "--type luks1 --align-payload 256",
        "--type luks2 --pbkdf pbkdf2 --luks2-metadata-size 16k --luks2-keyslots-size 128k \
         --offset 512",
    ] {
        let path = dir.path().join("luks");
        std::fs::File::create(&path)
            .unwrap()
            .set_len(1 << 20)
            .unwrap();
        let mut all = vec![
            "luksFormat",
            "--batch-mode",
            "--key-file",
            "key",
            "--pbkdf-force-iterations",
            "1000",
            "--key-size",
            "256",
        ];
        all.extend(args.split_whitespace());
        all.push("luks");
        tool(dir.path(), "cryptsetup", &all, None);
        seeds.push(std::fs::read(&path).unwrap());
    }
    seeds
}

// ---------------------------------------------------------------------------------------
// Checksum fixups: after mutation, make a format's checksums match again (at the places
// the seed has its checksummed structures), so that the mutations reach what they guard.

/// Recomputes a checksummed structure in place.
type Fixup = fn(&mut Input, &mut SmallRng);

/// For formats without checksums.
fn no_fix(_: &mut Input, _: &mut SmallRng) {}

impl Input {
    /// Stores `compute(structure with its checksum field zeroed)` into the field, for the
    /// `len`-byte structure at `at` (skipped where it lies past the seed).
    fn fix_sum(
        &mut self,
        at: usize,
        len: usize,
        field: std::ops::Range<usize>,
        compute: impl Fn(&[u8]) -> Vec<u8>,
    ) {
        let Some(bytes) = self.buf.get(at..at + len) else {
            return;
        };
        let mut copy = bytes.to_vec();
        copy[field.clone()].fill(0);
        let sum = compute(&copy);
        self.put(at + field.start, &sum);
    }

    fn has(&self, at: usize, magic: &[u8]) -> bool {
        self.buf.get(at..at + magic.len()) == Some(magic)
    }
}

/// VHD: footer (at the end, and its copy at 0 in dynamic disks) and dynamic header.
fn fix_vhd(input: &mut Input, _: &mut SmallRng) {
    use imgblk::image::vhd::footer::checksum;
    let end = input.seed.len().saturating_sub(512);
    for at in [0, end] {
        if input.has(at, b"conectix") {
            input.fix_sum(at, 512, 64..68, |b| checksum(b).to_be_bytes().to_vec());
        }
    }
    if input.has(512, b"cxsparse") {
        input.fix_sum(512, 1024, 36..40, |b| checksum(b).to_be_bytes().to_vec());
    }
}

/// VHDX: both headers and both region tables (CRC-32C).
fn fix_vhdx(input: &mut Input, _: &mut SmallRng) {
    for (at, len) in [(64, 4), (128, 4), (192, 64), (256, 64)] {
        input.fix_sum(at << 10, len << 10, 4..8, |b| {
            crc32c::crc32c(b).to_le_bytes().to_vec()
        });
    }
}

/// GPT: the entry arrays' and both headers' CRCs (of the seed's 128 entries).
fn fix_gpt(input: &mut Input, _: &mut SmallRng) {
    let last = input.seed.len() - 512;
    for (header, entries) in [(512, 1024), (last, last - 32 * 512)] {
        let Some(array) = input.buf.get(entries..entries + 128 * 128) else {
            continue;
        };
        let crc = crc32fast::hash(array);
        input.put(header + 88, &crc.to_le_bytes());
        input.fix_sum(header, 92, 16..20, |b| {
            crc32fast::hash(b).to_le_bytes().to_vec()
        });
    }
}

/// LVM: sometimes a digit of the metadata text changed for another, then the text's,
/// the metadata area header's and the label's checksums.
fn fix_lvm(input: &mut Input, rng: &mut SmallRng) {
    let (ring, len) = (LVM_RING as usize, LVM_TEXT.len() + 1);
    let first = 4096 + ring..4096 + 8192;
    let second = 4096 + 512..4096 + 512 + len - (8192 - ring);
    for _ in 0..rng.gen_range(0..3) {
        let i = rng.gen_range(0..first.len() + second.len());
        let at = if i < first.len() {
            first.start + i
        } else {
            second.start + i - first.len()
        };
        if input.buf[at].is_ascii_digit() {
            input.put(at, &[b'0' + rng.gen_range(0..10)]);
        }
    }
    let crc = lvm_crc(&[&input.buf[first], &input.buf[second]]);
    input.put(4096 + 56, &crc.to_le_bytes());
    input.fix_sum(4096, 512, 0..4, |b| {
        lvm_crc(&[&b[4..]]).to_le_bytes().to_vec()
    });
    input.fix_sum(1024 - 512, 512, 16..20, |b| {
        lvm_crc(&[&b[20..]]).to_le_bytes().to_vec()
    });
}

/// LUKS2: the SHA-256 of both header copies (binary header and JSON area, 16 KiB each
/// in the seed).
fn fix_luks2(input: &mut Input, _: &mut SmallRng) {
    use sha2::Digest;
    for at in [0, 16384] {
        if input.has(at + 6, &[0, 2]) {
            input.fix_sum(at, 16384, 448..512, |b| {
                let mut sum = sha2::Sha256::digest(b).to_vec();
                sum.resize(64, 0);
                sum
            });
        }
    }
}

// ---------------------------------------------------------------------------------------
// What a case runs.

/// Reads `image` the way a user of it would: allocation status of the first 16 MiB and
/// a few reads, at both ends, at random places and inside the runs of data the status
/// found (where a read crosses block boundaries between stored blocks).
fn read_around(image: &dyn DiskImage, rng: &mut SmallRng) {
    let size = image.virtual_size();
    let head = size.min(16 << 20);
    let mut extents = Vec::new();
    let mut data = Vec::new();
    let mut pos = 0;
    while pos < head {
        let len = (1u64 << 20).min(head - pos);
        extents.clear();
        if image.map(pos, len, &mut extents).is_err() {
            break;
        }
        let mut at = pos;
        for extent in &extents {
            if matches!(extent.source, Source::Data { .. }) {
                data.push(at..at.saturating_add(extent.len));
            }
            at = at.saturating_add(extent.len);
        }
        pos += len;
    }
    let mut buf = vec![0u8; 64 << 10];
    for _ in 0..4 {
        let len = rng.gen_range(1..=buf.len() as u64).min(size);
        let offset = match rng.gen_range(0..4) {
            0 => 0,
            1 => size - len,
            2 if !data.is_empty() => {
                let run = &data[rng.gen_range(0..data.len())];
                rng.gen_range(run.clone()).min(size - len)
            }
            _ => rng.gen_range(0..=size - len),
        };
        if io::read_at(image, &mut buf[..len as usize], offset).is_ok() {
            check_pieces(image, &buf[..len as usize], offset, rng);
        }
        check_data_run(image, offset, len);
        // And as a ublk queue asks: whole 4 KiB blocks.
        let block = offset / 4096 * 4096;
        check_data_run(image, block, 4096.min(size - block));
    }
}

/// Read in a few pieces, the range `whole` was read from at `offset` must give the same
/// bytes: a piece inside one block takes the lookup's fast path (`data_run`, in qcow2's and
/// VMDK's `map`), a range across blocks the walker. Panics (a finding) when they differ.
fn check_pieces(image: &dyn DiskImage, whole: &[u8], offset: u64, rng: &mut SmallRng) {
    let mut cuts: Vec<usize> = (0..rng.gen_range(1..4))
        .map(|_| {
            let cut = rng.gen_range(0..=whole.len());
            // Half of the cuts on a 4 KiB boundary of the disk, as a ublk request's.
            match rng.gen() {
                true => ((offset as usize + cut) / 4096 * 4096).saturating_sub(offset as usize),
                false => cut,
            }
        })
        .chain([0, whole.len()])
        .collect();
    cuts.sort_unstable();
    let mut pieces = vec![0u8; whole.len()];
    for cut in cuts.windows(2) {
        let (from, to) = (cut[0], cut[1]);
        if io::read_at(image, &mut pieces[from..to], offset + from as u64).is_err() {
            return;
        }
    }
    if let Some(at) = pieces.iter().zip(whole).position(|(a, b)| a != b) {
        panic!(
            "reading {} bytes at {offset} whole and in pieces (cut at {cuts:?}) differs at byte {at}",
            whole.len()
        );
    }
}

/// Where `data_run` (a ublk queue's first question) reports a run of data for the range,
/// `map` must give exactly that one data extent: panics (a finding) when they differ.
fn check_data_run(image: &dyn DiskImage, offset: u64, len: u64) {
    if let Ok(Some(run)) = image.data_run(offset, len) {
        if let Err(e) = common::run_agrees_with_map(image, offset, len, run) {
            panic!("the device's lookup disagrees with map: {e}");
        }
    }
}

/// One case of an image-format target: the mutated seed is opened from its file (as
/// `format`, or detected), read, and with `write` also written and flushed.
fn image_case(
    scratch: &Scratch,
    format: Option<Format>,
    write: bool,
    rng: &mut SmallRng,
) -> Result<bool, String> {
    let options = OpenOptions {
        format,
        writable: write,
        force_share: !write,
        ..OpenOptions::default()
    };
    let image = match open_image(&scratch.path, &options) {
        Ok(image) => image,
        Err(e) if e.path().is_some() => return Ok(false),
        Err(e) => return Err(format!("error opening the image names no file: {e}")),
    };
    read_around(&*image, rng);
    if write {
        let size = image.virtual_size();
        let len = rng.gen_range(1..=16384u64).min(size);
        let offset = rng.gen_range(0..=size - len);
        // No read-back comparison: in a mutated image two guest clusters may share a host
        // cluster (fuzz_qcow2 case 889619), and then, as in QEMU, one write shows in both.
        let data = vec![0x5au8; len as usize];
        if io::write_at(&*image, &data, offset).is_ok() && image.writer().unwrap().flush().is_ok() {
            let _ = io::read_at(&*image, &mut vec![0u8; len as usize], offset);
        }
    }
    Ok(true)
}

/// Fuzzes an image format: seeds by name, opened as `format`; a quarter of the cases
/// open the image writable when `writes` is set; half of them have their checksums
/// made right again by `fix`, so that mutations get past them.
fn fuzz_images(target: &str, names: &[&str], format: Format, writes: bool, fix: Fixup) {
    let dir = scratch_dir();
    let mut inputs: Vec<(Input, Scratch)> = names
        .iter()
        .map(|name| {
            let seed = image_seed(name);
            let scratch = Scratch::new(dir.path(), &format!("{name}.img"), &seed);
            (Input::new(seed), scratch)
        })
        .collect();
    drive(target, |rng, n| {
        let pick = rng.gen_range(0..inputs.len());
        let (input, scratch) = &mut inputs[pick];
        input.mutate(rng);
        if rng.gen() {
            fix(input, rng);
        }
        scratch.apply(input);
        // Mostly as the format; sometimes detected, as `imgblk attach` does by default.
        let format = (!rng.gen_ratio(1, 8)).then_some(format);
        let write = writes && rng.gen_ratio(1, 4);
        let outcome = guarded(n, || image_case(scratch, format, write, rng)).and_then(|r| r);
        scratch.restore(input, write);
        input.reset();
        outcome
    });
}

/// An image held in memory, for the layout parsers: its extents are
/// `Source::Transformed`, read by copying.
struct MemImage {
    bytes: Arc<Vec<u8>>,
    len: usize,
}

impl TransformRead for MemImage {
    fn read_transformed(&self, offset: u64, buf: &mut [u8]) -> imgblk::Result<()> {
        let data = &self.bytes[..self.len];
        let start = (offset as usize).min(data.len());
        let n = buf.len().min(data.len() - start);
        buf[..n].copy_from_slice(&data[start..start + n]);
        buf[n..].fill(0);
        Ok(())
    }
}

impl DiskImage for MemImage {
    fn format(&self) -> Format {
        Format::Raw
    }

    fn virtual_size(&self) -> u64 {
        self.len as u64
    }

    fn map<'a>(&'a self, offset: u64, len: u64, out: &mut Vec<Extent<'a>>) -> imgblk::Result<()> {
        imgblk::image::check_range(offset, len, self.len as u64)?;
        out.push(Extent::transformed(self, offset, len));
        Ok(())
    }

    fn chain(&self) -> Vec<ChainEntry> {
        Vec::new()
    }
}

/// The mutated bytes of `input` as an image.
fn mem_image(input: &Input) -> Arc<dyn DiskImage> {
    Arc::new(MemImage {
        bytes: input.buf.clone(),
        len: input.len,
    })
}

/// Discovers the layout of `image` (partition tables, LVM, contents) and reads a little
/// of every volume found, as `imgblk inspect` and `attach --part` do.
fn discover_case(image: Arc<dyn DiskImage>, rng: &mut SmallRng) -> bool {
    let _ = gpt::find(&*image);
    let layout = discover(&[image]);
    let _ = serde_json::to_string(&layout);
    for node in layout.nodes() {
        if let Ok(volume) = node.image() {
            read_around(&*volume, rng);
        }
    }
    for vg in &layout.volume_groups {
        for lv in &vg.lvs {
            if let Ok(volume) = lv.image() {
                read_around(&*volume, rng);
            }
        }
    }
    layout.nodes().len() > 1 || !layout.volume_groups.is_empty()
}

/// Fuzzes in-memory disks made of `seeds` with `run`.
/// Binary inputs have their checksums fixed by `fix` in half of the cases; `text` ones
/// get text mutations instead.
fn fuzz_memory(
    target: &str,
    seeds: Vec<Vec<u8>>,
    text: bool,
    fix: Fixup,
    run: impl Fn(&Input, &mut SmallRng) -> bool,
) {
    let mut inputs: Vec<Input> = seeds.into_iter().map(Input::new).collect();
    drive(target, |rng, n| {
        let pick = rng.gen_range(0..inputs.len());
        let input = &mut inputs[pick];
        if text {
            input.mutate_text(rng);
        } else {
            input.mutate(rng);
            if rng.gen() {
                fix(input, rng);
            }
        }
        let outcome = guarded(n, || run(input, rng));
        input.reset();
        outcome
    });
}

// ---------------------------------------------------------------------------------------
// The targets.

/// qcow2: header, extensions, L1, L2 (plain, compressed with deflate and zstd, extended
/// with subcluster bitmaps), the snapshot table, and on writable opens the refcount table
/// and blocks and the allocator.
#[test]
fn fuzz_qcow2() {
    fuzz_images(
        "qcow2",
        &[
            "qcow2",
            "qcow2-v2",
            "qcow2-compressed",
            "qcow2-zstd",
            "qcow2-snapshot",
            "qcow2-extended-l2",
        ],
        Format::Qcow2,
        true,
        no_fix,
    );
}

/// VMDK: the sparse header, its embedded descriptor, grain directory and tables, and
/// streamOptimized markers and compressed grains.
#[test]
fn fuzz_vmdk() {
    fuzz_images(
        "vmdk",
        &["vmdk-sparse", "vmdk-stream"],
        Format::Vmdk,
        false,
        no_fix,
    );
}

/// VHD: footer, dynamic header and BAT (dynamic), footer alone (fixed).
#[test]
fn fuzz_vhd() {
    fuzz_images(
        "vhd",
        &["vhd-dynamic", "vhd-fixed"],
        Format::Vpc,
        false,
        fix_vhd,
    );
}

/// VHDX: file identifier, both headers, region table, metadata region, BAT.
#[test]
fn fuzz_vhdx() {
    fuzz_images("vhdx", &["vhdx"], Format::Vhdx, false, fix_vhdx);
}

/// VDI: header and block map.
#[test]
fn fuzz_vdi() {
    fuzz_images("vdi", &["vdi"], Format::Vdi, false, no_fix);
}

/// The VMDK descriptor text parser, in memory.
#[test]
fn fuzz_vmdk_descriptor() {
    let text = "# Disk DescriptorFile\nversion=1\nCID=12345678\nparentCID=ffffffff\n\
                createType=\"twoGbMaxExtentSparse\"\nparentFileNameHint=\"parent.vmdk\"\n\n\
                # Extent description\nRW 4192256 SPARSE \"a-s001.vmdk\"\n\
                RW 4192256 FLAT \"a-f001.vmdk\" 0\nRDONLY 2048 ZERO\n\
                RW 8 VMFS \"a-flat.vmdk\"\n\n# The Disk Data Base\n#DDB\n\n\
                ddb.virtualHWVersion = \"4\"\nddb.geometry.cylinders = \"4161\"\n";
    fuzz_memory(
        "vmdk_descriptor",
        vec![text.as_bytes().to_vec()],
        true,
        no_fix,
        |input, _| imgblk::image::vmdk::descriptor::parse(input.bytes()).is_ok(),
    );
}

/// MBR: primary entries and the chain of extended boot records, then what the
/// partitions hold.
#[test]
fn fuzz_mbr() {
    fuzz_memory(
        "mbr",
        vec![partitioned_seed(false)],
        false,
        no_fix,
        |input, rng| discover_case(mem_image(input), rng),
    );
}

/// GPT: protective MBR, primary and backup headers, partition entries.
#[test]
fn fuzz_gpt() {
    fuzz_memory(
        "gpt",
        vec![partitioned_seed(true)],
        false,
        fix_gpt,
        |input, rng| discover_case(mem_image(input), rng),
    );
}

/// LVM2: PV label, metadata area header and ring, metadata text, VG assembly and the
/// LVs' segment maps.
#[test]
fn fuzz_lvm() {
    fuzz_memory("lvm", vec![lvm_seed()], false, fix_lvm, |input, rng| {
        discover_case(mem_image(input), rng)
    });
}

/// The LVM2 metadata text parser and the VG model built from it, in memory.
#[test]
fn fuzz_lvm_text() {
    fuzz_memory(
        "lvm_text",
        vec![LVM_TEXT.as_bytes().to_vec()],
        true,
        no_fix,
        |input, _| {
            let text = String::from_utf8_lossy(input.bytes());
            metadata::parse(&text).is_ok_and(|root| VgMetadata::from_root(&root).is_ok())
        },
    );
}

/// LUKS1 and LUKS2: binary headers, the LUKS2 JSON, key slots and segment; the volume
/// is then opened with a made-up master key (no key derivation: the KDF costs are
/// bounded by the parser and tested in src/layout/luks) and read.
#[test]
fn fuzz_luks() {
    fuzz_memory("luks", luks_seeds(), false, fix_luks2, |input, rng| {
        let image = mem_image(input);
        let Ok(meta) = luks_metadata(&*image) else {
            return false;
        };
        let key = vec![0x42u8; meta.key_len.min(512)];
        if let Ok(volume) = LuksVolume::with_master_key(image, meta, &key) {
            read_around(&volume, rng);
        }
        true
    });
}

/// The walk `imgblk map` does over a whole image, on seeds made by every format (not
/// mutated: it checks that the seeds are what the targets think they are).
#[test]
fn seeds_open_and_map_whole() {
    let dir = scratch_dir();
    for (name, seed) in image_seeds() {
        let scratch = Scratch::new(dir.path(), name, seed);
        let image = common::open(&scratch.path);
        let mut total = 0;
        walk_status(&*image, 1 << 20, |run| {
            total += run.length;
            Ok(())
        })
        .unwrap();
        assert_eq!(total, image.virtual_size(), "{name}");
        assert!(total >= 8 << 20, "{name}");
        let mut buf = vec![0u8; 65536];
        io::read_at(&*image, &mut buf, 0).unwrap();
        let want: Vec<u8> = (0..65536).step_by(512).flat_map(data_sector).collect();
        assert!(buf == want, "{name}");
    }
    let lvm = mem_image(&Input::new(lvm_seed()));
    let layout = discover(&[lvm]);
    assert_eq!(layout.volume_groups.len(), 1, "{:?}", layout.warnings);
    assert_eq!(layout.volume_groups[0].lvs.len(), 3);
    for (gpt, partitions) in [(false, 4), (true, 3)] {
        let layout = discover(&[mem_image(&Input::new(partitioned_seed(gpt)))]);
        assert_eq!(layout.nodes().len(), 1 + partitions, "{layout:?}");
    }
    for seed in luks_seeds() {
        let meta = luks_metadata(&*mem_image(&Input::new(seed))).unwrap();
        assert_eq!((meta.key_len, meta.keyslots.len()), (32, 1));
    }
}

/// Names a backing file may be given by [`fix_backing_name`]: inside the image's folder,
/// and leading out of it by `..`, an absolute path, a symlink and a dot-dot inside.
const BACKING_NAMES: [&str; 6] = [
    "base.raw",
    "../secret.raw",
    "/etc/hostname",
    "link.raw",
    "sub/../../secret.raw",
    "./base.raw",
];

/// Sets the backing file name of a qcow2 (where the seed keeps it) to one of
/// [`BACKING_NAMES`], so that mutations meet names that lead out of the folder.
fn fix_backing_name(input: &mut Input, rng: &mut SmallRng) {
    let at = u64::from_be_bytes(input.seed[8..16].try_into().unwrap()) as usize;
    let name = BACKING_NAMES[rng.gen_range(0..BACKING_NAMES.len())];
    input.put(at, name.as_bytes());
    input.put(16, &(name.len() as u32).to_be_bytes());
}

/// Opens the image at `path` with `options` and reads around in it; every file of its
/// chain must be inside `tree` where the policy says so. Whether it opened.
fn policy_case(
    path: &Path,
    options: &OpenOptions,
    tree: &Path,
    rng: &mut SmallRng,
) -> Result<bool, String> {
    let image = match open_image(path, options) {
        Ok(image) => image,
        Err(e) if e.path().is_some() => return Ok(false),
        Err(e) => return Err(format!("error opening the image names no file: {e}")),
    };
    if options.policy.backing != Backing::Follow {
        for entry in image.chain() {
            let files =
                std::iter::once(&entry.resolved).chain(entry.extents.iter().map(|e| &e.resolved));
            for file in files {
                if !file.starts_with(tree) {
                    return Err(format!("{:?} opened {}", options.policy, file.display()));
                }
            }
        }
    }
    read_around(&*image, rng);
    if options.l2_cache_bytes.is_some() {
        let unbounded = OpenOptions {
            l2_cache_bytes: None,
            memory_budget: None,
            ..options.clone()
        };
        if let Ok(other) = open_image(path, &unbounded) {
            let size = image.virtual_size().min(other.virtual_size());
            let len = rng.gen_range(0..=size.min(1 << 18));
            let offset = rng.gen_range(0..=size - len);
            let (mut a, mut b) = (vec![0u8; len as usize], vec![0u8; len as usize]);
            let read_a = io::read_at(&*image, &mut a, offset).is_ok();
            if read_a && io::read_at(&*other, &mut b, offset).is_ok() && a != b {
                return Err(format!(
                    "a small L2 cache read {len} bytes at {offset} otherwise"
                ));
            }
        }
    }
    Ok(true)
}

/// Backing names and the policy, and the L2 cache under a small memory budget: a qcow2
/// over a raw file in its folder, next to a file outside it and a symlink leading there,
/// whose backing name is mutated (or set to one of [`BACKING_NAMES`]), opened under a
/// random policy, L2 cache size and chain budget. Under `tree` and `--untrusted` no file
/// outside the folder may be opened; the bounded (evicting) cache must read as the
/// unbounded one does.
#[test]
fn fuzz_backing_policy() {
    let dir = scratch_dir();
    let vm = dir.path().join("vm");
    std::fs::create_dir(&vm).unwrap();
    std::fs::write(dir.path().join("secret.raw"), [0x5e; 65536]).unwrap();
    std::fs::write(vm.join("base.raw"), [DATA_BYTE; 65536]).unwrap();
    std::os::unix::fs::symlink("../secret.raw", vm.join("link.raw")).unwrap();
    let seeded = Scratch::new(&vm, "top.qcow2", &image_seed("qcow2"));
    let rebase = [
        "rebase", "-q", "-u", "-f", "qcow2", "-F", "raw", "-b", "base.raw",
    ];
    common::qemu_img(&vm, &[&rebase[..], &["top.qcow2"]].concat());
    let seed = std::fs::read(&seeded.path).unwrap();
    let scratch = Scratch::new(&vm, "top.qcow2", &seed);
    let mut input = Input::new(seed);
    let tree = vm.canonicalize().unwrap();
    let policies = [
        NamePolicy::FOLLOW,
        NamePolicy::UNTRUSTED,
        NamePolicy {
            backing: Backing::Tree,
            ..NamePolicy::FOLLOW
        },
        NamePolicy {
            backing: Backing::None,
            ..NamePolicy::FOLLOW
        },
    ];
    drive("backing_policy", |rng, n| {
        input.mutate(rng);
        if rng.gen() {
            fix_backing_name(&mut input, rng);
        }
        scratch.apply(&input);
        let options = OpenOptions {
            format: Some(Format::Qcow2),
            force_share: true,
            policy: policies[rng.gen_range(0..policies.len())],
            l2_cache_bytes: rng.gen_ratio(1, 2).then(|| 4096 * rng.gen_range(1..4)),
            memory_budget: rng
                .gen_ratio(1, 4)
                .then(|| ChainBudget::new(rng.gen_range(0..1 << 20))),
            ..OpenOptions::default()
        };
        let outcome =
            guarded(n, || policy_case(&scratch.path, &options, &tree, rng)).and_then(|r| r);
        scratch.restore(&input, false);
        input.reset();
        outcome
    });
}

/// The harness itself: a case that allocates past the limit is a finding, even when the
/// code under test copes with the refusal.
#[test]
fn huge_allocation_is_a_finding() {
    let outcome = guarded(7, || Vec::<u8>::new().try_reserve(ALLOC_LIMIT + 1).is_err());
    assert_eq!(
        outcome,
        Err(format!(
            "tried to allocate {} bytes (limit {ALLOC_LIMIT} per case)",
            ALLOC_LIMIT + 1
        ))
    );
    assert_eq!(
        guarded(8, || Vec::<u8>::with_capacity(1 << 20).capacity()),
        Ok(1 << 20)
    );
}

// ---------------------------------------------------------------------------------------
// Regressions: inputs the targets found, minimized.

/// fuzz_vdi case 84871: a VDI block map of 2^31 entries was refused with an error that
/// named no file.
#[test]
fn vdi_block_map_too_large_names_the_file() {
    let dir = scratch_dir();
    let mut input = Input::new(image_seed("vdi"));
    input.put(0x170, &(1u64 << 51).to_le_bytes()); // disk size: 2^31 blocks of 1 MiB
    input.put(0x180, &0x8000_0000u32.to_le_bytes());
    let scratch = Scratch::new(dir.path(), "big-map.vdi", &input.seed);
    scratch.apply(&input);
    let e = common::open_err(&scratch.path);
    assert_eq!(e.path(), Some(scratch.path.as_path()), "{e}");
    assert!(e.to_string().contains("block map"), "{e}");
}

// ---------------------------------------------------------------------------------------
// Targeted corruptions of the qcow2 features the random mutations rarely reach.

/// Opens `path` (if it opens) and reads it as a user would; panics on a panic.
fn open_and_read(path: &Path) {
    if let Ok(image) = open_image(path, &OpenOptions::default()) {
        read_around(&*image, &mut SmallRng::seed_from_u64(0));
    }
}

/// Offset of the first snapshot table entry of the qcow2 at `bytes`.
fn snapshots_offset(bytes: &[u8]) -> usize {
    u64::from_be_bytes(bytes[64..72].try_into().unwrap()) as usize
}

/// One corrupted field of the snapshot table (or the header fields locating it) must fail
/// the open with an error naming the file and the field.
#[test]
fn snapshot_table_fields_name_file_and_field() {
    let bytes = &image_seed("qcow2-snapshot");
    let table = snapshots_offset(bytes);
    let len = bytes.len();
    let be32 = |v: u32| v.to_be_bytes().to_vec();
    let be64 = |v: u64| v.to_be_bytes().to_vec();
    let cases: Vec<(&str, usize, Vec<u8>)> = vec![
        ("nb_snapshots", 60, be32(1 << 20)),
        ("snapshots_offset", 64, be64(len as u64 * 2)),
        ("snapshots_offset", 64, be64(table as u64 + 8)),
        ("l1_table_offset", table, be64(0x1234)),
        ("l1_table_offset", table, be64(1 << 60)),
        ("l1_table_offset", table + 8, be32(u32::MAX)),
        ("extra_data_size", table + 36, be32(1 << 20)),
        ("past the end", table + 12, vec![0xff, 0xff, 0xff, 0xff]),
        ("past the end", 60, be32(1000)), // more entries than the file holds
    ];
    for (field, at, value) in cases {
        let mut corrupted = bytes.clone();
        corrupted[at..at + value.len()].copy_from_slice(&value);
        if field == "past the end" {
            corrupted.truncate(table + 4096); // the table's cluster is the last one
        }
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bad-snapshots.qcow2");
        std::fs::write(&path, corrupted).unwrap();
        let err = match open_image(&path, &OpenOptions::default()) {
            Ok(_) => panic!("{field} at {at:#x} = {value:02x?}: opened"),
            Err(e) => e.to_string(),
        };
        assert!(
            err.contains(field) && err.contains("bad-snapshots.qcow2"),
            "{field} at {at:#x}: {err}"
        );
        open_and_read(&path);
    }
    // A file cut inside the table.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("cut.qcow2");
    std::fs::write(&path, &bytes[..table + 20]).unwrap();
    let err = open_image(&path, &OpenOptions::default())
        .err()
        .expect("cut table");
    assert!(err.to_string().contains("snapshot"), "{err}");
}

/// A subcluster bitmap that marks a subcluster both allocated and zero, and one that
/// allocates subclusters of a compressed cluster: reads fail naming the file and the rule.
#[test]
fn extended_l2_bitmaps_name_file_and_rule() {
    let bytes = &image_seed("qcow2-extended-l2");
    let be64 = |at: usize| u64::from_be_bytes(bytes[at..at + 8].try_into().unwrap());
    let l1 = be64(40) as usize;
    let l2 = (be64(l1) & 0x00ff_ffff_ffff_fe00) as usize;
    assert!(
        be64(l2) & 0x00ff_ffff_ffff_fe00 != 0,
        "cluster 0 of the seed is allocated"
    );
    let cases: [(u64, u64, &str); 2] = [
        (be64(l2), 1 | (1 << 32), "both allocated and zero"),
        (
            (1 << 62) | 0x10_0000,
            1,
            "compressed but has subcluster bits",
        ),
    ];
    for (entry, bitmap, rule) in cases {
        let mut corrupted = bytes.clone();
        corrupted[l2..l2 + 8].copy_from_slice(&entry.to_be_bytes());
        corrupted[l2 + 8..l2 + 16].copy_from_slice(&bitmap.to_be_bytes());
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bad-bitmap.qcow2");
        std::fs::write(&path, corrupted).unwrap();
        let image = open_image(&path, &OpenOptions::default()).unwrap();
        let err = io::read_at(&*image, &mut [0u8; 4096], 0)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains(rule) && err.contains("bad-bitmap.qcow2"),
            "{err}"
        );
        open_and_read(&path);
    }
}
