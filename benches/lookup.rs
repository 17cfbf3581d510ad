//! The extent-lookup hot path at random 4 KiB-aligned offsets (pre-generated, so the
//! generator is not measured), two ways: `map` (`DiskImage::map(offset, 4096, &mut
//! extents)`, the general lookup, one extent list per request) and `data_run`
//! (`DiskImage::data_run(offset, 4096)`, what a ublk queue asks first for every read:
//! the file and offset when the range is one run of data, with no extent list).
//!
//! - `qcow2_warm`: a fully allocated 8 GiB qcow2 (`preallocation=metadata`, 64 KiB
//!   clusters), every L2 table resident (the default cache); `qcow2_warm_512m` confines
//!   the offsets to the first 512 MiB (one L2 table, which stays in the CPU caches).
//! - `qcow2_cold`: the same image with a one-table L2 cache, so nearly every lookup
//!   evicts a table and reads another (64 KiB `pread`, from the page cache).
//! - `vmdk_sparse`, `vhd_dynamic`, `vhdx_dynamic`, `vdi_dynamic`: a 256 MiB image of each
//!   block-mapped format, converted from a raw file with data everywhere, so every grain
//!   (64 KiB) or block (VHD 2 MiB, VHDX 1 MiB, VDI 1 MiB) is allocated.
//! - `*_threads/2`: two threads sharing one image, each doing the same batch; the
//!   throughput counts both threads' lookups, so perfect scaling doubles it.
//!
//! Needs `qemu-img` to build the images (in a temporary directory); run with
//! `cargo bench --bench lookup`. Throughput is in lookups ("elements") per second.

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use imgblk::image::{open_image, DiskImage, Extent, OpenOptions};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use std::hint::black_box;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

/// Lookups per measured iteration (per thread).
const BATCH: usize = 4096;
/// Pre-generated offsets, cycled through.
const OFFSETS: usize = 1 << 16;
const LOOKUP: u64 = 4096;
const SEED: u64 = 0x1b1c_0ffe;

fn qemu_img(args: &[&str]) {
    let status = Command::new("qemu-img")
        .args(args)
        .stdout(std::process::Stdio::null())
        .status()
        .expect("qemu-img not found: the lookup benchmark needs it to build images");
    assert!(status.success(), "qemu-img {args:?} failed");
}

/// An 8 GiB qcow2 with every cluster allocated (metadata preallocation).
fn make_qcow2(dir: &Path) -> PathBuf {
    let path = dir.join("full.qcow2");
    qemu_img(&[
        "create",
        "-q",
        "-f",
        "qcow2",
        "-o",
        "preallocation=metadata,cluster_size=65536",
        path.to_str().unwrap(),
        "8G",
    ]);
    path
}

/// A 256 MiB raw file with data in every 64 KiB (so every grain or block of a conversion
/// is allocated), the source the block-mapped formats are converted from.
fn make_raw(dir: &Path) -> PathBuf {
    let raw = dir.join("data.raw");
    let mut file = std::fs::File::create(&raw).unwrap();
    let chunk: Vec<u8> = (0..1 << 20).map(|i| (i % 251) as u8 | 1).collect();
    for _ in 0..256 {
        file.write_all(&chunk).unwrap();
    }
    raw
}

/// `raw` converted by `qemu-img convert -O format` with `options` (`-o`, if any).
fn convert(raw: &Path, format: &str, options: &str) -> PathBuf {
    let out = raw.with_extension(format);
    let mut args = vec!["convert", "-q", "-O", format];
    if !options.is_empty() {
        args.extend(["-o", options]);
    }
    args.extend([raw.to_str().unwrap(), out.to_str().unwrap()]);
    qemu_img(&args);
    out
}

fn open(path: &Path, l2_cache_bytes: Option<u64>) -> Box<dyn DiskImage> {
    let options = OpenOptions {
        l2_cache_bytes,
        ..OpenOptions::default()
    };
    open_image(path, &options).expect("open image")
}

fn offsets(size: u64, seed: u64) -> Vec<u64> {
    let mut rng = SmallRng::seed_from_u64(seed);
    let blocks = size / LOOKUP;
    (0..OFFSETS)
        .map(|_| rng.gen_range(0..blocks) * LOOKUP)
        .collect()
}

/// Which lookup a benchmark times.
#[derive(Clone, Copy)]
enum Api {
    /// `DiskImage::map` into a reused extent list.
    Map,
    /// `DiskImage::data_run`.
    DataRun,
}

/// Looks up `count` offsets starting at `start` (cycling), reusing `out` for `map`.
fn lookups<'a>(
    image: &'a dyn DiskImage,
    api: Api,
    offsets: &[u64],
    start: usize,
    count: usize,
    out: &mut Vec<Extent<'a>>,
) {
    // A mask, not `%`: a 64-bit division per lookup would cost as much as a third of
    // the lookup it is meant to measure.
    assert!(offsets.len().is_power_of_two());
    let mask = offsets.len() - 1;
    for i in 0..count {
        let offset = offsets[(start + i) & mask];
        match api {
            Api::Map => {
                out.clear();
                image.map(offset, LOOKUP, out).unwrap();
                black_box(out.first());
            }
            Api::DataRun => {
                black_box(image.data_run(offset, LOOKUP).unwrap());
            }
        }
    }
}

/// Runs `iters` batches on each of `threads` threads sharing `image`; the wall time.
fn threaded(
    image: &dyn DiskImage,
    api: Api,
    offsets: &[u64],
    threads: usize,
    iters: u64,
) -> Duration {
    let barrier = std::sync::Barrier::new(threads + 1);
    std::thread::scope(|s| {
        for t in 0..threads {
            let barrier = &barrier;
            s.spawn(move || {
                let mut out = Vec::with_capacity(4);
                barrier.wait();
                let mut pos = t * OFFSETS / threads;
                for _ in 0..iters {
                    lookups(image, api, offsets, pos, BATCH, &mut out);
                    pos = (pos + BATCH) % OFFSETS;
                }
                barrier.wait();
            });
        }
        barrier.wait();
        let start = Instant::now();
        barrier.wait();
        start.elapsed()
    })
}

/// Benchmarks lookups spread over the first `span` bytes of `image` (all of it if `None`),
/// with `map` and with `data_run`.
fn bench_image(
    c: &mut Criterion,
    name: &str,
    image: &dyn DiskImage,
    span: Option<u64>,
    threads: &[usize],
) {
    let offsets = offsets(span.unwrap_or(image.virtual_size()), SEED);
    // Warm the cache (and the page cache under it) before measuring.
    lookups(image, Api::Map, &offsets, 0, OFFSETS, &mut Vec::new());
    for (api, suffix) in [(Api::Map, ""), (Api::DataRun, "_data_run")] {
        let mut group = c.benchmark_group(format!("{name}{suffix}"));
        for &n in threads {
            group.throughput(Throughput::Elements((BATCH * n) as u64));
            group.bench_with_input(BenchmarkId::new("threads", n), &n, |b, &n| {
                b.iter_custom(|iters| threaded(image, api, &offsets, n, iters))
            });
        }
        group.finish();
    }
}

fn benches(c: &mut Criterion) {
    let dir = tempfile::tempdir().unwrap();
    let qcow2 = make_qcow2(dir.path());

    let warm = open(&qcow2, None);
    bench_image(c, "qcow2_warm", warm.as_ref(), None, &[1, 2]);
    // One L2 table's worth (512 MiB, 64 KiB of entries): the CPU cost without cache misses.
    bench_image(
        c,
        "qcow2_warm_512m",
        warm.as_ref(),
        Some(512 << 20),
        &[1, 2],
    );
    drop(warm);

    // One 64 KiB table resident out of 16: nearly every lookup reloads one.
    let cold = open(&qcow2, Some(64 << 10));
    bench_image(c, "qcow2_cold", cold.as_ref(), None, &[1]);
    drop(cold);

    // The block-mapped formats, every block allocated, through the shared block walker.
    let raw = make_raw(dir.path());
    for (name, format, options) in [
        ("vmdk_sparse", "vmdk", ""),
        ("vhd_dynamic", "vpc", "subformat=dynamic"),
        ("vhdx_dynamic", "vhdx", "subformat=dynamic,block_size=1M"),
        ("vdi_dynamic", "vdi", ""),
    ] {
        let image = open(&convert(&raw, format, options), None);
        bench_image(c, name, image.as_ref(), None, &[1, 2]);
    }
}

criterion_group! {
    name = lookup;
    config = Criterion::default()
        .sample_size(20)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3));
    targets = benches
}
criterion_main!(lookup);
