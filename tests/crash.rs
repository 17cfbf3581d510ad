//! Crash consistency of the qcow2 write path, checked at every crash point.
//!
//! A [`FileTap`] under the image records every change the write path makes to the image
//! and to its metadata journal (writes, syncs, punched holes, truncations), in order,
//! together with when each guest write started and completed and when each flush
//! started and completed. Randomized workloads (allocating writes, overwrites, zeroings,
//! discards, flushes, copy on write from a backing file, two threads at once) are then
//! replayed to every crash point, as CrashMonkey and ALICE do for file systems:
//!
//! - **Power loss**: the image as of each sync barrier, and states between two barriers
//!   where any subset of the writes reached the disk, each possibly torn at 512-byte
//!   sectors (the journal is in tmpfs: gone). The image must open, `qemu-img check` must
//!   find no corruption (leaks allowed), and every guest write completed before the last
//!   completed flush must read back; a sector written since may show any value it held
//!   since then, nothing else.
//! - **Daemon death**: the image and the journal as of each change (the page cache
//!   survives a process; nothing is torn). A new writable open replays the journal; then
//!   every guest write *completed* before the death must read back, and the image must
//!   pass `qemu-img check` once closed.
//!
//! And with injected faults: a failed `fdatasync` is sticky.
//!
//! `IMGBLK_CRASH_SCALE=N` multiplies the workloads' length and the crash states tried,
//! `IMGBLK_CRASH_SEED=N` picks other random workloads (longer campaigns; their numbers
//! are in `fuzz/CRASH-RESULTS.md`).

mod common;

use imgblk::image::file::{FileChange, FileTap, Tap};
use imgblk::image::{io, open_image, DiskImage, OpenOptions};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

const SECTOR: u64 = 512;
/// Marks the backing file's data in a sector's tag.
const BASE_ID: u64 = u64::MAX;

/// One test at a time: a `qemu-img` forked by one test inherits, until it execs, the
/// image descriptors (and their OFD locks) of another.
static SERIAL: Mutex<()> = Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|p| p.into_inner())
}

fn scale() -> usize {
    std::env::var("IMGBLK_CRASH_SCALE")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1)
}

/// Which file a change went to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Target {
    Image,
    Journal,
}

/// A recorded change to a file.
#[derive(Debug, Clone)]
enum Change {
    Write(u64, Vec<u8>),
    Sync,
    Punch(u64, u64),
    SetLen(u64),
}

/// One event of a run, in the order they happened.
#[derive(Debug, Clone)]
enum Event {
    File(Target, Change),
    /// Guest operation `op` (an index into the workload's ops) started / completed.
    Start(usize),
    Done(usize),
}

/// The tap: records every change, and fails the `fail_sync`-th sync (from 1) if set.
struct Recorder {
    image: PathBuf,
    events: Mutex<Vec<Event>>,
    journal_path: Mutex<Option<PathBuf>>,
    syncs: AtomicUsize,
    fail_sync: Option<usize>,
}

impl Recorder {
    fn new(image: &Path, fail_sync: Option<usize>) -> Arc<Recorder> {
        Arc::new(Recorder {
            image: image.to_path_buf(),
            events: Mutex::new(Vec::new()),
            journal_path: Mutex::new(None),
            syncs: AtomicUsize::new(0),
            fail_sync,
        })
    }

    fn push(&self, event: Event) {
        self.events.lock().unwrap().push(event);
    }

    fn events(&self) -> Vec<Event> {
        self.events.lock().unwrap().clone()
    }
}

impl FileTap for Recorder {
    fn before(&self, path: &Path, change: FileChange<'_>) -> std::io::Result<()> {
        let target = if path == self.image {
            Target::Image
        } else {
            *self.journal_path.lock().unwrap() = Some(path.to_path_buf());
            Target::Journal
        };
        let change = match change {
            FileChange::Write { offset, data } => Change::Write(offset, data.to_vec()),
            FileChange::Sync => {
                let n = self.syncs.fetch_add(1, Ordering::SeqCst) + 1;
                if self.fail_sync == Some(n) {
                    return Err(std::io::Error::from_raw_os_error(libc::EIO));
                }
                Change::Sync
            }
            FileChange::Punch { offset, len } => Change::Punch(offset, len),
            FileChange::SetLen(len) => Change::SetLen(len),
        };
        self.push(Event::File(target, change));
        Ok(())
    }
}

/// A guest operation of a workload.
#[derive(Debug, Clone, Copy)]
enum Op {
    /// Write sectors `first..first + count` with this op's own tags.
    Write {
        first: u64,
        count: u64,
    },
    Zero {
        first: u64,
        count: u64,
    },
    Discard {
        first: u64,
        count: u64,
    },
    Flush,
}

/// What one sector may read as.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Value {
    Zero,
    Base,
    /// Written by this op.
    Op(usize),
}

/// The bytes op `id` writes to `sector`: the pair (op, sector) over and over.
fn tagged(id: u64, sector: u64) -> [u8; SECTOR as usize] {
    let mut out = [0u8; SECTOR as usize];
    for chunk in out.chunks_mut(16) {
        chunk[..8].copy_from_slice(&id.to_le_bytes());
        chunk[8..].copy_from_slice(&sector.to_le_bytes());
    }
    out
}

/// What a sector's bytes say it holds, or `None` for anything no op wrote there.
fn decode(bytes: &[u8], sector: u64) -> Option<Value> {
    if bytes.iter().all(|&b| b == 0) {
        return Some(Value::Zero);
    }
    let id = u64::from_le_bytes(bytes[..8].try_into().ok()?);
    if bytes != tagged(id, sector) {
        return None;
    }
    Some(if id == BASE_ID {
        Value::Base
    } else {
        Value::Op(usize::try_from(id).ok()?)
    })
}

/// The shape of one workload.
#[derive(Debug, Clone)]
struct Workload {
    name: &'static str,
    /// `qemu-img create` options.
    options: &'static [&'static str],
    sectors: u64,
    /// Over a raw backing file holding [`BASE_ID`] tags.
    backing: bool,
    threads: usize,
    ops_per_thread: usize,
    /// Zeroings and discards (single thread only: they span other threads' sectors).
    zero_and_discard: bool,
    seed: u64,
}

impl Workload {
    /// The ops of thread `t`. Threads write disjoint sets of 8-sector stripes.
    fn ops(&self, t: usize) -> Vec<Op> {
        let mut rng = SmallRng::seed_from_u64(self.seed ^ (t as u64) << 32);
        let stripes = self.sectors / 8;
        let mut ops = Vec::new();
        for _ in 0..self.ops_per_thread {
            let roll = rng.gen_range(0..20);
            let stripe = loop {
                let s = rng.gen_range(0..stripes);
                if s as usize % self.threads == t {
                    break s;
                }
            };
            let first = stripe * 8 + rng.gen_range(0..8);
            let most = if self.threads == 1 {
                (self.sectors - first).min(40)
            } else {
                stripe * 8 + 8 - first
            };
            let count = rng.gen_range(1..=most);
            ops.push(match roll {
                0..=2 => Op::Flush,
                3 if self.zero_and_discard => Op::Zero { first, count },
                4 if self.zero_and_discard => Op::Discard { first, count },
                _ => Op::Write { first, count },
            });
        }
        ops.push(Op::Flush);
        ops
    }
}

/// A finished run: the image as it was before, the events, and the ops by id.
struct Run {
    dir: tempfile::TempDir,
    image: PathBuf,
    journal: Option<PathBuf>,
    before: Vec<u8>,
    events: Vec<Event>,
    ops: Vec<Op>,
    backing: bool,
    sectors: u64,
}

fn s(p: &Path) -> &str {
    p.to_str().expect("UTF-8 test paths")
}

fn options(tap: Option<Tap>, writable: bool, journal: Option<&Path>) -> OpenOptions {
    OpenOptions {
        writable,
        journal_dir: journal.map(Path::to_path_buf),
        tap,
        ..OpenOptions::default()
    }
}

/// Makes the image of `w`, runs it through imgblk with every change recorded.
fn run(w: &Workload) -> Run {
    let dir = tempfile::tempdir().expect("tempdir");
    let image = dir.path().join("img.qcow2");
    let size = (w.sectors * SECTOR).to_string();
    let mut args = vec!["create", "-q", "-f", "qcow2"];
    args.extend(w.options);
    if w.backing {
        let base: Vec<u8> = (0..w.sectors).flat_map(|s| tagged(BASE_ID, s)).collect();
        std::fs::write(dir.path().join("base.raw"), base).expect("write base");
        args.extend(["-b", "base.raw", "-F", "raw"]);
    }
    args.extend([s(&image), size.as_str()]);
    common::qemu_img(dir.path(), &args);
    let before = std::fs::read(&image).expect("read image");

    let recorder = Recorder::new(&image, None);
    let journal_dir = dir.path().join("journal");
    let opened = open_image(
        &image,
        &options(Some(Tap(recorder.clone())), true, Some(&journal_dir)),
    )
    .expect("open writable");
    let disk: Arc<dyn DiskImage> = Arc::from(opened);
    let per_thread: Vec<Vec<Op>> = (0..w.threads).map(|t| w.ops(t)).collect();
    // Op ids: thread t's i-th op is t * (ops per thread + 1) + i.
    let stride = w.ops_per_thread + 1;
    std::thread::scope(|scope| {
        for (t, ops) in per_thread.iter().enumerate() {
            let (disk, recorder) = (disk.clone(), recorder.clone());
            scope.spawn(move || {
                for (i, op) in ops.iter().enumerate() {
                    let id = t * stride + i;
                    recorder.push(Event::Start(id));
                    match *op {
                        Op::Write { first, count } => {
                            let data: Vec<u8> = (first..first + count)
                                .flat_map(|s| tagged(id as u64, s))
                                .collect();
                            io::write_at(&*disk, &data, first * SECTOR).expect("write");
                        }
                        Op::Zero { first, count } => disk
                            .writer()
                            .unwrap()
                            .write_zeroes(first * SECTOR, count * SECTOR)
                            .expect("write_zeroes"),
                        Op::Discard { first, count } => disk
                            .writer()
                            .unwrap()
                            .discard(first * SECTOR, count * SECTOR)
                            .expect("discard"),
                        Op::Flush => disk.writer().unwrap().flush().expect("flush"),
                    }
                    recorder.push(Event::Done(id));
                }
            });
        }
    });
    // What happens from here (closing, which releases the image's lock) is no part of
    // the run: a crash comes before it.
    let events = recorder.events();
    drop(disk);
    let ops = per_thread
        .iter()
        .flat_map(|ops| {
            let mut padded = ops.clone();
            padded.resize(stride, Op::Flush);
            padded
        })
        .collect();
    let journal = recorder.journal_path.lock().unwrap().clone();
    Run {
        dir,
        image,
        journal,
        before,
        events,
        ops,
        backing: w.backing,
        sectors: w.sectors,
    }
}

/// Applies one change to a file's bytes.
fn apply(bytes: &mut Vec<u8>, change: &Change) {
    match change {
        Change::Write(offset, data) => {
            let (start, end) = (*offset as usize, *offset as usize + data.len());
            if bytes.len() < end {
                bytes.resize(end, 0);
            }
            bytes[start..end].copy_from_slice(data);
        }
        Change::Punch(offset, len) => {
            let start = (*offset as usize).min(bytes.len());
            let end = (*offset + *len).min(bytes.len() as u64) as usize;
            bytes[start..end].fill(0);
        }
        Change::SetLen(len) => bytes.resize(*len as usize, 0),
        Change::Sync => {}
    }
}

impl Run {
    /// The values each sector may hold after a crash at event `cut`, where everything
    /// completed before event `durable_from` must be there (`durable_from` = `cut` for a
    /// daemon's death, where every completed write survives; the start of the last
    /// completed flush for a power loss).
    fn allowed(&self, cut: usize, durable_from: usize) -> Vec<BTreeSet<Value>> {
        let initial = if self.backing {
            Value::Base
        } else {
            Value::Zero
        };
        let mut allowed = vec![BTreeSet::from([initial]); self.sectors as usize];
        let mut done_at = vec![usize::MAX; self.ops.len()];
        let mut start_at = vec![usize::MAX; self.ops.len()];
        for (i, event) in self.events.iter().enumerate() {
            match event {
                Event::Start(id) => start_at[*id] = i,
                Event::Done(id) => done_at[*id] = i,
                Event::File(..) => {}
            }
        }
        // Ops completed before `durable_from`, in completion order, set each sector.
        let mut durable: Vec<usize> = (0..self.ops.len())
            .filter(|&id| done_at[id] < durable_from)
            .collect();
        durable.sort_by_key(|&id| done_at[id]);
        for &id in &durable {
            self.effect(id, &mut allowed, true);
        }
        // Ops started before the cut that were not durable may or may not show.
        for id in 0..self.ops.len() {
            if start_at[id] < cut && done_at[id] >= durable_from {
                self.effect(id, &mut allowed, false);
            }
        }
        allowed
    }

    /// Adds op `id`'s effect to `allowed`: replacing what was there when it `replaces`.
    fn effect(&self, id: usize, allowed: &mut [BTreeSet<Value>], replaces: bool) {
        let (range, value, certain) = match self.ops[id] {
            Op::Write { first, count } => (first..first + count, Value::Op(id), true),
            Op::Zero { first, count } => (first..first + count, Value::Zero, true),
            // Advice: whole clusters may read as zeroes afterwards, or keep their data.
            Op::Discard { first, count } => (first..first + count, Value::Zero, false),
            Op::Flush => return,
        };
        for sector in range {
            let set = &mut allowed[sector as usize];
            if replaces && certain {
                set.clear();
            }
            set.insert(value);
        }
    }

    /// Writes `bytes` over the image file in place (same inode: the journal's name and
    /// header name the file by its device and inode).
    fn put_image(&self, bytes: &[u8]) {
        std::fs::write(&self.image, bytes).expect("rewrite image");
    }

    /// Reads every sector through imgblk and checks it against `allowed`.
    fn verify(&self, allowed: &[BTreeSet<Value>], what: &str) {
        let image = open_image(&self.image, &OpenOptions::default())
            .unwrap_or_else(|e| panic!("{what}: the image does not open: {e}"));
        let mut buf = vec![0u8; (self.sectors * SECTOR) as usize];
        io::read_at(&*image, &mut buf, 0).unwrap_or_else(|e| panic!("{what}: read: {e}"));
        for (sector, bytes) in buf.chunks(SECTOR as usize).enumerate() {
            let value = decode(bytes, sector as u64);
            let ok = value.is_some_and(|v| allowed[sector].contains(&v));
            assert!(
                ok,
                "{what}: sector {sector} reads {value:?}, allowed {:?}",
                allowed[sector]
            );
        }
    }

    /// `qemu-img check`: no corruption (leaks are allowed after a crash).
    fn check(&self, what: &str) {
        let out = std::process::Command::new("qemu-img")
            .args(["check", "-f", "qcow2", s(&self.image)])
            .output()
            .expect("these tests need qemu-img (qemu-utils)");
        let code = out.status.code().unwrap_or(-1);
        assert!(
            code == 0 || code == 3,
            "{what}: qemu-img check exited {code}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Index just past the `Done` of the last flush completed before `cut`, and where
    /// that flush started: what must be durable at a power loss at `cut`.
    fn last_flush_start(&self, cut: usize) -> usize {
        let mut started = std::collections::HashMap::new();
        let mut last = 0;
        for (i, event) in self.events[..cut].iter().enumerate() {
            match event {
                Event::Start(id) if matches!(self.ops[*id], Op::Flush) => {
                    started.insert(*id, i);
                }
                Event::Done(id) if matches!(self.ops[*id], Op::Flush) => {
                    last = last.max(started.get(id).copied().unwrap_or(0));
                }
                _ => {}
            }
        }
        last
    }

    /// Power-loss states: at each image sync, and `variants` random states between two.
    /// Returns how many were checked.
    fn power_loss(&self, variants: usize, seed: u64) -> usize {
        let mut rng = SmallRng::seed_from_u64(seed);
        let image_changes: Vec<(usize, &Change)> = self
            .events
            .iter()
            .enumerate()
            .filter_map(|(i, e)| match e {
                Event::File(Target::Image, c) => Some((i, c)),
                _ => None,
            })
            .collect();
        let mut barriers: Vec<usize> = image_changes
            .iter()
            .enumerate()
            .filter(|(_, (_, c))| matches!(c, Change::Sync))
            .map(|(k, _)| k + 1)
            .collect();
        barriers.insert(0, 0);
        barriers.push(image_changes.len());
        barriers.dedup();
        let event_index = |k: usize| image_changes.get(k).map_or(self.events.len(), |(i, _)| *i);
        let mut states = 0;
        let mut durable = self.before.clone();
        for pair in barriers.windows(2) {
            let (from, to) = (pair[0], pair[1]);
            // Exactly at the barrier: everything before it, nothing after.
            let cut = event_index(from);
            let what = format!("power loss at image change {from}");
            self.put_image(&durable);
            self.verify(&self.allowed(cut, self.last_flush_start(cut)), &what);
            self.check(&what);
            states += 1;
            // Between this barrier and the next: any subset, torn at sectors, of the
            // changes up to the next sync, which has not completed.
            let cut = match image_changes.get(to.wrapping_sub(1)) {
                Some((i, Change::Sync)) => *i,
                _ => event_index(to),
            };
            let allowed = self.allowed(cut, self.last_flush_start(cut));
            for v in 0..variants {
                if to - from < 2 && v > 0 {
                    break;
                }
                let mut bytes = durable.clone();
                for (_, change) in &image_changes[from..to] {
                    if rng.gen_bool(0.5) {
                        continue;
                    }
                    match change {
                        Change::Write(offset, data) if rng.gen_bool(0.3) => {
                            for (n, sector) in data.chunks(SECTOR as usize).enumerate() {
                                if rng.gen_bool(0.5) {
                                    let at = offset + n as u64 * SECTOR;
                                    apply(&mut bytes, &Change::Write(at, sector.to_vec()));
                                }
                            }
                        }
                        change => apply(&mut bytes, change),
                    }
                }
                let what = format!("power loss between image changes {from} and {to}, variant {v}");
                self.put_image(&bytes);
                self.verify(&allowed, &what);
                self.check(&what);
                states += 1;
            }
            for (_, change) in &image_changes[from..to] {
                apply(&mut durable, change);
            }
        }
        states
    }

    /// Daemon-death states: image and journal as of `points` cuts spread over the run.
    /// Each is reopened writable (replaying the journal), closed, and checked.
    fn daemon_death(&self, points: usize, seed: u64) -> usize {
        let mut rng = SmallRng::seed_from_u64(seed);
        let journal_dir = self.dir.path().join("journal");
        let mut cuts: Vec<usize> = (0..points)
            .map(|_| rng.gen_range(0..=self.events.len()))
            .collect();
        cuts.push(self.events.len());
        cuts.sort_unstable();
        cuts.dedup();
        for &cut in &cuts {
            let (mut image, mut journal) = (self.before.clone(), Vec::new());
            for event in &self.events[..cut] {
                match event {
                    Event::File(Target::Image, change) => apply(&mut image, change),
                    Event::File(Target::Journal, change) => apply(&mut journal, change),
                    _ => {}
                }
            }
            let what = format!("daemon death at event {cut} of {}", self.events.len());
            self.put_image(&image);
            if let Some(path) = &self.journal {
                std::fs::write(path, &journal).expect("rewrite journal");
            }
            let reopened = open_image(&self.image, &options(None, true, Some(&journal_dir)))
                .unwrap_or_else(|e| panic!("{what}: the writable open failed: {e}"));
            drop(reopened);
            self.verify(&self.allowed(cut, cut), &what);
            self.check(&what);
        }
        cuts.len()
    }
}

/// Added to every workload's seed: `IMGBLK_CRASH_SEED=N` runs other workloads of the
/// same shapes (campaigns), 0 by default.
fn seed_offset() -> u64 {
    std::env::var("IMGBLK_CRASH_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0)
}

fn workloads() -> Vec<Workload> {
    let n = 60 * scale();
    let seed = seed_offset() << 8;
    vec![
        Workload {
            name: "512-byte clusters, zeroes and discards",
            options: &["-o", "cluster_size=512"],
            sectors: 1024,
            backing: false,
            threads: 1,
            ops_per_thread: n,
            zero_and_discard: true,
            seed: seed + 1,
        },
        Workload {
            name: "4 KiB clusters over a backing file, two threads",
            options: &["-o", "cluster_size=4096"],
            sectors: 1024,
            backing: true,
            threads: 2,
            ops_per_thread: n / 2,
            zero_and_discard: false,
            seed: seed + 2,
        },
        Workload {
            name: "64 KiB clusters, version 2, over a backing file",
            options: &["-o", "compat=0.10"],
            sectors: 2048,
            backing: true,
            threads: 1,
            ops_per_thread: n,
            zero_and_discard: true,
            seed: seed + 3,
        },
        Workload {
            name: "512-byte clusters, 64-bit refcounts (the refcount table grows)",
            options: &["-o", "cluster_size=512,refcount_bits=64"],
            sectors: 4096,
            backing: true,
            threads: 1,
            ops_per_thread: n,
            zero_and_discard: true,
            seed: seed + 4,
        },
    ]
}

/// Runs every workload, checks its crash states with `check`, and returns how many.
fn check_every_workload(what: &str, check: impl Fn(&Workload, &Run) -> usize) -> usize {
    let _serial = serial();
    let mut total = 0;
    for w in workloads() {
        let run = run(&w);
        let states = check(&w, &run);
        eprintln!(
            "{}: {} events, {states} {what} states",
            w.name,
            run.events.len()
        );
        total += states;
    }
    eprintln!("{total} {what} states checked");
    total
}

#[test]
fn every_power_loss_state_is_consistent_and_keeps_flushed_writes() {
    let total = check_every_workload("power-loss", |w, run| run.power_loss(8 * scale(), w.seed));
    assert!(
        total >= 800,
        "only {total} states: the workloads flush too little"
    );
}

#[test]
fn every_daemon_death_keeps_every_completed_write() {
    check_every_workload("daemon-death", |w, run| {
        assert!(run.journal.is_some(), "{}: nothing was journaled", w.name);
        run.daemon_death(150 * scale(), w.seed)
    });
}

#[test]
fn a_failed_sync_is_sticky_and_the_image_keeps_its_last_flush() {
    let _serial = serial();
    let dir = tempfile::tempdir().expect("tempdir");
    let image = dir.path().join("img.qcow2");
    let journal_dir = dir.path().join("journal");
    let create = || {
        let args = ["create", "-q", "-f", "qcow2", "-o", "cluster_size=4096"];
        common::qemu_img(dir.path(), &[&args[..], &[s(&image), "1M"]].concat());
    };
    let open = |recorder: &Arc<Recorder>| {
        let tap = Some(Tap(recorder.clone()));
        open_image(&image, &options(tap, true, Some(&journal_dir))).expect("open")
    };
    let sectors = |id: u64, first: u64| -> Vec<u8> {
        (first..first + 8).flat_map(|s| tagged(id, s)).collect()
    };
    // A write, a flush, a second write (whose flush is the one to fail).
    let start = |disk: &dyn DiskImage| {
        io::write_at(disk, &sectors(1, 0), 0).expect("write");
        disk.writer().unwrap().flush().expect("first flush");
        io::write_at(disk, &sectors(2, 64), 64 * SECTOR).expect("write");
    };
    // Count the syncs up to the second write (the open's own, the first flush's), to
    // fail the first one after it.
    create();
    let counter = Recorder::new(&image, None);
    start(&*open(&counter));
    let events = counter.events();
    let second = events
        .iter()
        .position(|e| matches!(e, Event::File(Target::Image, Change::Write(_, d)) if d == &sectors(2, 64)))
        .expect("second write recorded");
    let syncs = events[..second]
        .iter()
        .filter(|e| matches!(e, Event::File(_, Change::Sync)))
        .count();

    create();
    let disk = open(&Recorder::new(&image, Some(syncs + 1)));
    start(&*disk);
    let failed = disk
        .writer()
        .unwrap()
        .flush()
        .expect_err("the injected EIO must fail the flush");
    assert!(failed.to_string().contains("fdatasync"), "{failed}");
    // Sticky: a second flush must not "succeed" over pages the kernel may have dropped,
    // and nothing more is written.
    let again = disk
        .writer()
        .unwrap()
        .flush()
        .expect_err("a flush after a failed sync must fail");
    assert!(again.to_string().contains("earlier fdatasync"), "{again}");
    let write = io::write_at(&*disk, &sectors(3, 128), 128 * SECTOR)
        .expect_err("a write after a failed sync must fail");
    assert!(write.to_string().contains("earlier fdatasync"), "{write}");
    drop(disk);
    // The journal is gone (its entries may point at lost data), and the image is as its
    // last completed flush left it.
    let left: Vec<_> = std::fs::read_dir(&journal_dir)
        .map(|d| d.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    assert!(left.is_empty(), "journal left behind: {left:?}");
    let reopened = open_image(&image, &options(None, true, Some(&journal_dir))).expect("reopen");
    let mut got = vec![0u8; 8 * SECTOR as usize];
    io::read_at(&*reopened, &mut got, 0).expect("read");
    assert_eq!(got, sectors(1, 0), "the flushed write is lost");
    drop(reopened);
    let out = std::process::Command::new("qemu-img")
        .args(["check", "-f", "qcow2", s(&image)])
        .output()
        .expect("qemu-img");
    assert!(
        matches!(out.status.code(), Some(0 | 3)),
        "qemu-img check: {}",
        String::from_utf8_lossy(&out.stdout)
    );
}
