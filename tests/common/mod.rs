//! Helpers for the image-format integration tests: qemu tools, test data, comparison.
#![allow(dead_code)]

use imgblk::image::{io, open_image, DiskImage, Extent, ImageFile, OpenOptions, Source};
use rand::rngs::SmallRng;
use rand::{Rng, RngCore, SeedableRng};
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::process::Command;

/// Size of the raw test disk.
pub const RAW_SIZE: usize = 24 << 20;

/// Runs a qemu tool (`qemu-img`, `qemu-io`) in `dir`; a missing tool fails the test.
pub fn qemu(tool: &str, dir: &Path, args: &[&str]) -> String {
    let out = Command::new(tool)
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap_or_else(|e| {
            panic!("{tool} is required for this test (apt-get install qemu-utils): {e}")
        });
    assert!(
        out.status.success(),
        "{tool} {args:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `imgblk ARGS` in `dir`, which must succeed; its standard output.
pub fn imgblk(dir: &Path, args: &[&str]) -> Vec<u8> {
    let out = Command::new(env!("CARGO_BIN_EXE_imgblk"))
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "imgblk {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

/// `qemu-img` in `dir`.
pub fn qemu_img(dir: &Path, args: &[&str]) -> String {
    qemu("qemu-img", dir, args)
}

/// `qemu-io` in `dir` on `image` (read as `format`): one `write -P PATTERN OFFSET LEN`
/// per entry of `writes`.
pub fn qemu_io(dir: &Path, image: &str, format: &str, writes: &[(u8, u64, u64)]) {
    let mut args = vec!["-f".to_string(), format.to_string()];
    for (pattern, off, len) in writes {
        args.push("-c".into());
        args.push(format!("write -P {pattern:#04x} {off} {len}"));
    }
    args.push(image.to_string());
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    qemu("qemu-io", dir, &args);
}

/// A `map --json` listing as (start, length, depth, data, zero) runs, adjacent runs
/// with the same depth, data and zero merged (the two tools split runs differently).
pub fn map_runs(json: &[u8]) -> Vec<(u64, u64, u64, bool, bool)> {
    let runs: serde_json::Value = serde_json::from_slice(json).unwrap();
    let mut merged: Vec<(u64, u64, u64, bool, bool)> = Vec::new();
    for run in runs.as_array().unwrap() {
        let next = (
            run["start"].as_u64().unwrap(),
            run["length"].as_u64().unwrap(),
            run["depth"].as_u64().unwrap(),
            run["data"].as_bool().unwrap(),
            run["zero"].as_bool().unwrap(),
        );
        match merged.last_mut() {
            Some(last) if (last.2, last.3, last.4) == (next.2, next.3, next.4) => last.1 += next.1,
            _ => merged.push(next),
        }
    }
    merged
}

/// The virtual size `qemu-img info` reports for `path` read as `format`.
pub fn qemu_virtual_size(path: &Path, format: &str) -> u64 {
    let dir = path.parent().unwrap();
    let json = qemu_img(
        dir,
        &[
            "info",
            "--output=json",
            "-f",
            format,
            path.to_str().unwrap(),
        ],
    );
    let v: serde_json::Value = serde_json::from_str(&json).unwrap();
    v["virtual-size"].as_u64().unwrap()
}

/// Writes a sparse raw disk of [`RAW_SIZE`] bytes: random data in some ranges (some not
/// sector aligned), zeroes and holes elsewhere. Returns its contents.
pub fn make_raw(path: &Path, seed: u64) -> Vec<u8> {
    let mut rng = SmallRng::seed_from_u64(seed);
    let mut data = vec![0u8; RAW_SIZE];
    let ranges: [(usize, usize); 6] = [
        (0, 1 << 20),
        (3 << 20, (3 << 20) + 4096 + 100),
        ((5 << 20) + 65536 * 3 + 7, (6 << 20) + 12345),
        (10 << 20, 12 << 20),
        ((17 << 20) + 512, (17 << 20) + 1024),
        (RAW_SIZE - 70000, RAW_SIZE),
    ];
    let file = std::fs::File::create(path).unwrap();
    file.set_len(RAW_SIZE as u64).unwrap();
    for (start, end) in ranges {
        rng.fill_bytes(&mut data[start..end]);
        file.write_all_at(&data[start..end], start as u64).unwrap();
    }
    data
}

/// Opens `path` with format detection.
pub fn open(path: &Path) -> Box<dyn DiskImage> {
    open_image(path, &OpenOptions::default())
        .unwrap_or_else(|e| panic!("opening {}: {e}", path.display()))
}

/// Compares `image` with `expected` (zero-padded to the image's size): one sequential
/// pass in 1 MiB reads, then 300 random reads from `seed`.
pub fn compare(image: &dyn DiskImage, expected: &[u8], what: &str, seed: u64) {
    let size = image.virtual_size() as usize;
    assert!(
        size >= expected.len(),
        "{what}: virtual size {size} < {}",
        expected.len()
    );
    let mut want = expected.to_vec();
    want.resize(size, 0);
    let mut buf = vec![0u8; 1 << 20];
    let mut pos = 0;
    while pos < size {
        let n = buf.len().min(size - pos);
        io::read_at(image, &mut buf[..n], pos as u64)
            .unwrap_or_else(|e| panic!("{what}: read at {pos}: {e}"));
        if buf[..n] != want[pos..pos + n] {
            let first = (0..n).find(|&i| buf[i] != want[pos + i]).unwrap_or(0);
            panic!("{what}: sequential read differs at byte {}", pos + first);
        }
        pos += n;
    }
    random_reads(image, &want, what, seed, 300);
    check_data_runs(image, what, seed, 300);
}

/// Checks [`DiskImage::data_run`] against `map` at `rounds` random sector-aligned ranges
/// of 512 B to 1 MiB from `seed`: every run it reports must be exactly the one data
/// extent `map` gives for the range. Returns how many runs it reported.
pub fn check_data_runs(image: &dyn DiskImage, what: &str, seed: u64, rounds: usize) -> usize {
    let size = image.virtual_size() / 512 * 512;
    let mut rng = SmallRng::seed_from_u64(seed);
    let mut hits = 0;
    for round in 0..rounds {
        let len = [512, 4096, 65536, 1 << 20][rng.gen_range(0..4)].min(size);
        let offset = rng.gen_range(0..=(size - len) / 512) * 512;
        let run = image
            .data_run(offset, len)
            .unwrap_or_else(|e| panic!("{what}: data_run({offset}, {len}): {e}"));
        match run {
            Some(run) => {
                hits += 1;
                run_agrees_with_map(image, offset, len, run)
                    .unwrap_or_else(|e| panic!("{what}: round {round}: {e}"));
            }
            None => image
                .map(offset, len, &mut Vec::new())
                .unwrap_or_else(|e| panic!("{what}: map({offset}, {len}): {e}")),
        }
    }
    hits
}

/// Checks a run that `data_run(offset, len)` reported (its file and offset) against
/// `map`, which must give exactly that one data extent for the range; the error says how
/// the two differ.
pub fn run_agrees_with_map(
    image: &dyn DiskImage,
    offset: u64,
    len: u64,
    (file, host): (&ImageFile, u64),
) -> Result<(), String> {
    let run = format!(
        "data_run({offset}, {len}) = {} at {host}",
        file.path().display()
    );
    let mut extents = Vec::new();
    if let Err(e) = image.map(offset, len, &mut extents) {
        return Err(format!("{run}, but map fails: {e}"));
    }
    match extents.as_slice() {
        [Extent {
            len: l,
            source: Source::Data { file: f, offset: o },
            ..
        }] if *l == len && std::ptr::eq(*f, file) && *o == host => Ok(()),
        other => Err(format!("{run}, but map gives {other:?}")),
    }
}

/// `rounds` reads at random offsets and lengths from `seed`, each compared with `want`.
pub fn random_reads(image: &dyn DiskImage, want: &[u8], what: &str, seed: u64, rounds: usize) {
    let size = want.len();
    let mut rng = SmallRng::seed_from_u64(seed);
    for round in 0..rounds {
        let len = rng.gen_range(1..=300_000usize).min(size);
        let off = rng.gen_range(0..=size - len);
        let mut got = vec![0u8; len];
        io::read_at(image, &mut got, off as u64)
            .unwrap_or_else(|e| panic!("{what}: seed {seed} round {round}: read {off}+{len}: {e}"));
        assert!(
            got == want[off..off + len],
            "{what}: seed {seed} round {round}: read {off}+{len} differs from the reference"
        );
    }
}

/// The error opening `path` must give.
pub fn open_err(path: &Path) -> imgblk::Error {
    match open_image(path, &OpenOptions::default()) {
        Ok(_) => panic!("{} opened, an error was expected", path.display()),
        Err(e) => e,
    }
}

/// A two-layer qcow2 chain in `dir`: `base.qcow2` (compressed, from [`make_raw`] of
/// `seed`, also left as `base.raw`) under `top.qcow2`, which holds written data at
/// 1M..4M and zeroes at 9M..11M (written by `qemu-io`).
pub fn compressed_chain(dir: &Path, seed: u64) {
    make_raw(&dir.join("base.raw"), seed);
    qemu_img(
        dir,
        &["convert", "-c", "-O", "qcow2", "base.raw", "base.qcow2"],
    );
    qemu_img(
        dir,
        &[
            "create",
            "-q",
            "-f",
            "qcow2",
            "-b",
            "base.qcow2",
            "-F",
            "qcow2",
            "top.qcow2",
        ],
    );
    qemu(
        "qemu-io",
        dir,
        &[
            "-c",
            "write -P 0x5a 1M 3M",
            "-c",
            "write -z 9M 2M",
            "top.qcow2",
        ],
    );
}

/// Runs `cryptsetup ARGS` in batch mode with the key in `key_file`.
pub fn cryptsetup(args: &[&str], key_file: &Path) {
    let out = Command::new("cryptsetup")
        .args(args)
        .args(["--batch-mode", "--key-file"])
        .arg(key_file)
        .output()
        .expect("cryptsetup not installed (apt-get install cryptsetup-bin)");
    assert!(
        out.status.success(),
        "cryptsetup {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}
