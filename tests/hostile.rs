//! Hostile images (issue 27): whatever an image of unknown origin holds, the commands that
//! read it (`info`, `map`, `cat`, `inspect`) finish quickly with a clear error or a
//! result, within bounded memory, and print nothing that drives the terminal.

mod common;

use common::qemu_img;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

/// How long a command on a hostile image may take before the test calls it a hang.
const PATIENCE: Duration = Duration::from_secs(10);

/// What one run of `imgblk` did.
struct Run {
    output: Output,
}

impl Run {
    /// Standard error, as text.
    fn stderr(&self) -> String {
        String::from_utf8_lossy(&self.output.stderr).into_owned()
    }
}

/// Runs `imgblk ARGS` in `dir`, killing it (and failing the test) if it has not finished
/// within [`PATIENCE`].
fn imgblk(dir: &Path, args: &[&str]) -> Run {
    let start = Instant::now();
    let mut child = Command::new(env!("CARGO_BIN_EXE_imgblk"))
        .args(args)
        .current_dir(dir)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run imgblk");
    while child.try_wait().expect("wait for imgblk").is_none() {
        if start.elapsed() > PATIENCE {
            child.kill().ok();
            child.wait().ok();
            panic!("imgblk {args:?} still running after {PATIENCE:?}: it hangs");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let output = child.wait_with_output().expect("collect imgblk's output");
    Run { output }
}

/// Asserts that `imgblk COMMAND image` fails, for every command that reads images, with
/// an error that contains each of `wanted`.
fn refused_by_every_reader(dir: &Path, image: &str, wanted: &[&str]) {
    for command in ["info", "map", "cat", "inspect"] {
        let run = imgblk(dir, &[command, image]);
        let stderr = run.stderr();
        assert!(
            !run.output.status.success(),
            "imgblk {command} {image} succeeded: {stderr}"
        );
        for want in wanted {
            assert!(
                stderr.contains(want),
                "imgblk {command} {image}: {want:?} missing from: {stderr}"
            );
        }
    }
}

/// Makes a 1 MiB qcow2 `name` in `dir` whose backing file is `backing` (of `format`),
/// whether or not that exists or is an image.
fn qcow2_backed_by(dir: &Path, name: &str, backing: &str, format: &str) {
    qemu_img(
        dir,
        &[
            "create", "-q", "-f", "qcow2", "-u", "-b", backing, "-F", format, name, "1M",
        ],
    );
}

/// Makes a FIFO at `path`.
fn mkfifo(path: &Path) {
    nix::unistd::mkfifo(path, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
}

#[test]
fn special_files_named_by_an_image_are_refused_without_hanging() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    mkfifo(&d.join("fifo"));
    std::fs::create_dir(d.join("dir")).unwrap();
    for (name, target, what) in [
        ("fifo.qcow2", "fifo", "a FIFO"),
        ("dir.qcow2", "dir", "a directory"),
        ("null.qcow2", "/dev/null", "a character device"),
    ] {
        qcow2_backed_by(d, name, target, "raw");
        refused_by_every_reader(d, name, &[name, "backing file", target, what]);
    }
    // An external data file that is a FIFO: made as a file, then replaced.
    qemu_img(
        d,
        &[
            "create",
            "-q",
            "-f",
            "qcow2",
            "-o",
            "data_file=data.raw",
            "data.qcow2",
            "1M",
        ],
    );
    std::fs::remove_file(d.join("data.raw")).unwrap();
    mkfifo(&d.join("data.raw"));
    refused_by_every_reader(
        d,
        "data.qcow2",
        &["data.qcow2", "data file", "data.raw", "a FIFO"],
    );
}

#[test]
fn a_vmdk_extent_that_is_a_fifo_is_refused_without_hanging() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    nix::unistd::mkfifo(
        &d.join("fifo"),
        nix::sys::stat::Mode::from_bits_truncate(0o600),
    )
    .unwrap();
    std::fs::write(
        d.join("disk.vmdk"),
        "# Disk DescriptorFile\nversion=1\nCID=fffffffe\nparentCID=ffffffff\n\
         createType=\"monolithicFlat\"\n\nRW 2048 FLAT \"fifo\" 0\n",
    )
    .unwrap();
    refused_by_every_reader(d, "disk.vmdk", &["disk.vmdk", "extent 1", "fifo", "a FIFO"]);
}

#[test]
fn a_backing_chain_that_loops_is_refused_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    // Its own backing file (qemu-img refuses to create that, so it is renamed into place).
    qcow2_backed_by(d, "made.qcow2", "self.qcow2", "qcow2");
    std::fs::rename(d.join("made.qcow2"), d.join("self.qcow2")).unwrap();
    refused_by_every_reader(
        d,
        "self.qcow2",
        &["self.qcow2", "this image itself", "loops"],
    );
    // A loop through a second file and a symlink to the first.
    std::os::unix::fs::symlink("a.qcow2", d.join("link.qcow2")).unwrap();
    qcow2_backed_by(d, "a.qcow2", "b.qcow2", "qcow2");
    qcow2_backed_by(d, "b.qcow2", "link.qcow2", "qcow2");
    refused_by_every_reader(
        d,
        "a.qcow2",
        &["b.qcow2: its backing file link.qcow2", "a.qcow2", "loops"],
    );
}
