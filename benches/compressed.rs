//! Reading a compressed qcow2 in 4 KiB pieces, as a file system reads its blocks: each
//! 64 KiB compressed cluster is asked for sixteen times in a row. Without a cache of
//! decoded clusters (`image::decoded`), every piece reads and inflates the whole cluster.
//!
//! - `zlib` / `zstd`: a 32 MiB qcow2 written by `qemu-img convert -c` from compressible
//!   data (text-like, about 3:1), with each compression type; reads go through
//!   `imgblk::image::io::read_at`, the library path (ublk queues share the cache).
//!
//! Needs `qemu-img`; run with `cargo bench --bench compressed`. Throughput is in guest
//! bytes per second.

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use imgblk::image::{io::read_at, open_image, OpenOptions};
use std::hint::black_box;
use std::path::{Path, PathBuf};
use std::process::Command;

const SIZE: usize = 32 << 20;
const PIECE: usize = 4096;

/// Compressible bytes: lines of words with numbers, about 3:1 under deflate.
fn text(len: usize) -> Vec<u8> {
    let words = [
        "block", "cluster", "guest", "image", "queue", "ring", "table",
    ];
    let mut out = Vec::with_capacity(len + 64);
    let mut i = 0u64;
    while out.len() < len {
        i = i
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        let word = words[(i >> 60) as usize % words.len()];
        out.extend_from_slice(format!("{word} {} ", i >> 40).as_bytes());
        if i % 7 == 0 {
            out.push(b'\n');
        }
    }
    out.truncate(len);
    out
}

/// A compressed qcow2 of [`text`] with `compression_type` (`zlib` or `zstd`).
fn make_image(dir: &Path, compression_type: &str) -> PathBuf {
    let raw = dir.join("text.raw");
    if !raw.exists() {
        std::fs::write(&raw, text(SIZE)).unwrap();
    }
    let image = dir.join(format!("{compression_type}.qcow2"));
    let status = Command::new("qemu-img")
        .args(["convert", "-q", "-c", "-f", "raw", "-O", "qcow2", "-o"])
        .arg(format!("compression_type={compression_type}"))
        .arg(&raw)
        .arg(&image)
        .status()
        .expect("qemu-img not found: the compressed benchmark needs it to build images");
    assert!(status.success(), "qemu-img convert failed");
    image
}

fn compressed_reads(c: &mut Criterion) {
    let dir = tempfile::tempdir().unwrap();
    let mut group = c.benchmark_group("compressed_4k_pieces");
    group.throughput(Throughput::Bytes(SIZE as u64));
    group.sample_size(10);
    for codec in ["zlib", "zstd"] {
        let image = open_image(&make_image(dir.path(), codec), &OpenOptions::default()).unwrap();
        let mut buf = vec![0u8; PIECE];
        group.bench_function(codec, |b| {
            b.iter(|| {
                for offset in (0..SIZE).step_by(PIECE) {
                    read_at(image.as_ref(), &mut buf, offset as u64).unwrap();
                    black_box(&buf);
                }
            })
        });
    }
    group.finish();
}

criterion_group!(benches, compressed_reads);
criterion_main!(benches);
