//! Stop signals to a daemon (what `systemctl stop`, a restart or shutdown send), and a
//! daemon's log under a flood of failing requests.

use crate::harness::*;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::time::Duration;

/// Sends SIGTERM to `pid` and waits until it has exited.
fn terminate(pid: u32) {
    cmd("kill").args(["-TERM", &pid.to_string()]).ok();
    assert!(
        wait_until(Duration::from_secs(30), || process_gone(pid)),
        "daemon {pid} still runs 30s after SIGTERM"
    );
}

/// The pid `list` gives for `dev`, and its state.
fn listed(dev: &Device) -> (u32, String) {
    let entry = dev.list_entry().expect("device listed");
    let pid = entry["pid"].as_u64().expect("pid") as u32;
    (pid, entry["state"].as_str().unwrap_or("").to_string())
}

/// Asserts that SIGTERM to the daemon of `dev`, which is mounted, left the device in
/// place (orphaned, for recovery) instead of removing it.
fn assert_left_for_recovery(dev: &Device, pid: u32) {
    terminate(pid);
    assert!(
        dev.path.exists() && dev.sys().exists(),
        "SIGTERM removed {} under a mounted file system",
        dev.path.display()
    );
    let (_, state) = listed(dev);
    assert_eq!(state, "orphaned", "{:?}", dev.list_entry());
}

/// The issue: `systemctl stop` (SIGTERM) flushed and deleted a mounted device, and the
/// file system's unwritten data was lost. Now the daemon leaves the device for recovery:
/// `imgblk recover` (and, the second time, an attach of the same image) takes it over,
/// the mount keeps working, files written before and while it waited read back, and the
/// file system checks clean after umount and detach. Raw, so that no qcow2 metadata is
/// involved.
#[test]
#[ignore = "needs ublk: run by ci/test (in a VM if needed)"]
fn sigterm_leaves_a_mounted_device_for_recovery() {
    let s = Scratch::new("sigterm-mounted");
    let image = s.path("fs.raw");
    cmd("truncate").args(["-s", "64M"]).arg(&image).ok();
    cmd("mkfs.ext4").args(["-q", "-F"]).arg(&image).ok();
    let mut dev = Device::attach(&image, &["--rw"]);
    let mnt = s.mkdir("mnt");
    dev.mount(&dev.path.clone(), &mnt, "");
    let before = s.path("before");
    write_random(&before, 3 * MIB, 61);
    std::fs::copy(&before, mnt.join("before")).unwrap(); // no sync: dirty in the page cache

    assert_left_for_recovery(&dev, dev.pid.expect("pid"));
    // Written while no daemon serves: stays in the page cache until the flush below.
    let during = s.path("during");
    write_random(&during, MIB, 62);
    std::fs::copy(&during, mnt.join("during")).unwrap();
    imgblk().arg("recover").arg(&dev.path).ok();
    let (pid, state) = listed(&dev);
    assert_eq!(state, "live");
    cmd("sync").arg("-f").arg(mnt.join("during")).ok();
    assert_same_bytes(&mnt.join("before"), 0, &before, 0, 3 * MIB);
    assert_same_bytes(&mnt.join("during"), 0, &during, 0, MIB);

    // Again, and this time an attach of the same image takes the device over.
    let after = s.path("after");
    write_random(&after, MIB, 63);
    std::fs::copy(&after, mnt.join("after")).unwrap();
    assert_left_for_recovery(&dev, pid);
    let again = Device::attach(&image, &["--rw"]);
    assert_eq!(
        again.id, dev.id,
        "attach should recover the orphaned device"
    );
    again.disarm();
    cmd("sync").arg("-f").arg(mnt.join("after")).ok();
    assert_same_bytes(&mnt.join("after"), 0, &after, 0, MIB);

    dev.umount(&mnt);
    dev.detach();
    cmd("e2fsck").args(["-fn"]).arg(&image).ok();
}

/// SIGTERM to the daemon of a device nothing uses still flushes and removes it.
#[test]
#[ignore = "needs ublk: run by ci/test (in a VM if needed)"]
fn sigterm_removes_an_unused_device() {
    let s = Scratch::new("sigterm-unused");
    let image = s.path("disk.raw");
    write_random(&image, 4 * MIB, 64);
    let dev = Device::attach(&image, &["--rw"]);
    let written = s.path("written");
    write_random(&written, MIB, 65);
    cmd("dd")
        .arg(format!("if={}", written.display()))
        .arg(format!("of={}", dev.path.display()))
        .args(["bs=64k", "oflag=direct", "status=none"])
        .ok();
    terminate(dev.pid.expect("pid"));
    dev.assert_gone();
    assert!(dev.list_entry().is_none(), "{:?}", dev.list_entry());
    dev.disarm();
    assert_same_bytes(&image, 0, &written, 0, MIB);
}

/// A qcow2 whose compressed clusters (everything after its metadata) are garbage: every
/// read of its data fails.
fn unreadable_qcow2(s: &Scratch) -> std::path::PathBuf {
    let text = s.path("text.raw");
    std::fs::write(
        &text,
        &b"etaoin shrdlu\n".repeat(300_000)[..(4 * MIB) as usize],
    )
    .unwrap();
    let image = s.path("bad.qcow2");
    cmd("qemu-img")
        .args(["convert", "-c", "-O", "qcow2"])
        .arg(&text)
        .arg(&image)
        .ok();
    // qemu-img puts header, refcounts, L1 and L2 in the first five 64 KiB clusters.
    let file = std::fs::OpenOptions::new()
        .write(true)
        .open(&image)
        .unwrap();
    let garbage = vec![0xff; (file_size(&image) - 5 * 64 * KIB) as usize];
    file.write_all_at(&garbage, 5 * 64 * KIB).unwrap();
    let cat = imgblk()
        .arg("cat")
        .arg(&image)
        .arg("-o")
        .arg(s.path("out.raw"))
        .fails();
    assert!(cat.stderr.contains("inflate"), "{}", cat.describe());
    image
}

/// A guest reading a failing region in a loop must not fill /run with the daemon's log:
/// 10,000 failed reads leave a few dozen lines at most, and a count of the others.
#[test]
#[ignore = "needs ublk: run by ci/test (in a VM if needed)"]
fn failing_reads_in_a_loop_keep_the_log_small() {
    let s = Scratch::new("log-flood");
    let image = unreadable_qcow2(&s);
    let dev = Device::attach(&image, &[]);
    let log = Path::new(dev.info["log"].as_str().expect("the daemon's log")).to_path_buf();
    let file = open_direct(&dev.path);
    let mut buf = AlignedBuf::new(4096);
    for i in 0..10_000 {
        let read = file.read_exact_at(buf.as_mut_slice(), 0);
        assert!(read.is_err(), "read {i} of a corrupt cluster succeeded");
    }
    drop(file);
    dev.detach();
    let text = std::fs::read_to_string(&log).unwrap();
    let failed = text.matches("request failed").count();
    assert!(
        (1..=40).contains(&failed),
        "{failed} 'request failed' lines in {} ({} bytes)",
        log.display(),
        text.len()
    );
    assert!(
        text.contains("suppressed"),
        "no count of the failures left out:\n{text}"
    );
    assert!(
        text.len() < 16 * KIB as usize,
        "log of {} bytes",
        text.len()
    );
}
