//! Failing attaches: non-zero exit, nothing left behind, and an error that names the file
//! at fault.

use crate::harness::*;

/// Asserts that no ublk device exists (the failed attach left none behind).
fn assert_no_devices() {
    let ids: Vec<String> = std::fs::read_dir("/sys/class/ublk-char")
        .map(|dir| {
            dir.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    assert!(ids.is_empty(), "ublk devices left behind: {ids:?}");
}

#[test]
#[ignore = "needs ublk: run by ci/test (in a VM if needed)"]
fn attach_of_a_missing_file_names_it() {
    require_ublk();
    let s = Scratch::new("missing");
    let image = s.path("no-such-disk.qcow2");
    let out = imgblk().arg("attach").arg(&image).fails();
    assert!(
        out.stderr.contains("no-such-disk.qcow2"),
        "stderr should name the missing file\n{}",
        out.describe()
    );
    assert!(out.stdout.trim().is_empty(), "stdout: {}", out.stdout);
    assert_no_devices();
}

#[test]
#[ignore = "needs ublk: run by ci/test (in a VM if needed)"]
fn attach_with_a_missing_backing_file_names_it() {
    require_ublk();
    let s = Scratch::new("no-backing");
    let base = s.path("vanished-base.qcow2");
    cmd("qemu-img")
        .args(["create", "-q", "-f", "qcow2"])
        .arg(&base)
        .arg("4M")
        .ok();
    let overlay = s.path("overlay.qcow2");
    cmd("qemu-img")
        .args(["create", "-q", "-f", "qcow2", "-F", "qcow2", "-b"])
        .arg(&base)
        .arg(&overlay)
        .ok();
    std::fs::remove_file(&base).unwrap();

    let out = imgblk().arg("attach").arg(&overlay).fails();
    assert!(
        out.stderr.contains("vanished-base.qcow2"),
        "stderr should name the missing backing file\n{}",
        out.describe()
    );
    assert_no_devices();
}

#[test]
#[ignore = "needs ublk: run by ci/test (in a VM if needed)"]
fn detach_of_an_unknown_device_fails() {
    require_ublk();
    let out = imgblk().args(["detach", "/dev/ublkb977"]).fails();
    assert!(
        !out.stderr.trim().is_empty(),
        "no error message\n{}",
        out.describe()
    );
}
