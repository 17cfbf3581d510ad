//! `imgblk fsck`: file systems inside images checked through ublk devices, classified,
//! repaired (in place, or into the RAM overlay), and every device detached afterwards,
//! also after SIGINT.

use crate::harness::*;
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

/// Builds a 64 MiB GPT image with one partition per `(size MiB, mkfs command)`.
fn gpt_image(s: &Scratch, name: &str, parts: &[(u64, &str)]) -> PathBuf {
    let image = s.path(name);
    let mut script = String::from("set -e\ntruncate -s 64M \"$1\"\n{ echo 'label: gpt'\n");
    for (size, _) in parts {
        script.push_str(&format!("echo 'size={size}M, type=linux'\n"));
    }
    script.push_str("} | sfdisk --quiet --no-reread --no-tell-kernel \"$1\"\n");
    let mut start = 2048u64;
    for (size, mkfs) in parts {
        let sectors = size * MIB / 512;
        script.push_str(&format!(
            "rm -f \"$1.p\"; truncate -s {size}M \"$1.p\"\n\
             TEST_DIR=/tmp TEST_DEV=1 QA_CHECK_FS=1 {mkfs} \"$1.p\" >/dev/null 2>&1\n\
             dd if=\"$1.p\" of=\"$1\" bs=512 seek={start} conv=notrunc status=none\n"
        ));
        start += sectors;
    }
    script.push_str("rm -f \"$1.p\"\n");
    cmd("bash").arg("-c").arg(&script).arg("-").arg(&image).ok();
    image
}

/// An ext4 image (raw) with 20 files, the inode-table block holding inodes 17-32 zeroed
/// (not the root inode's: then e2fsck -n gives up, exit 12, rather than report errors).
fn corrupt_ext4(s: &Scratch) -> PathBuf {
    let content = s.mkdir("content");
    for i in 0..20 {
        std::fs::write(content.join(format!("file{i}")), format!("file {i}\n")).unwrap();
    }
    let image = s.path("corrupt.raw");
    let script = "set -e\ntruncate -s 24M \"$1\"\n\
        mkfs.ext4 -q -F -b 4096 -d \"$2\" \"$1\"\n\
        block=$(debugfs -R 'imap <20>' \"$1\" 2>/dev/null | sed -n 's/.*located at block \\([0-9]*\\),.*/\\1/p')\n\
        [ -n \"$block\" ]\n\
        dd if=/dev/zero of=\"$1\" bs=4096 seek=$block count=1 conv=notrunc status=none\n";
    cmd("bash")
        .arg("-c")
        .arg(script)
        .arg("-")
        .arg(&image)
        .arg(&content)
        .ok();
    image
}

/// `imgblk fsck --json ARGS...`: its exit code and results; asserts that it left no
/// device or daemon behind.
fn fsck(args: &[&str], image: &Path) -> (i32, Vec<Value>, Output) {
    let result = run_fsck(args, image);
    assert_nothing_left();
    result
}

/// `imgblk fsck --json ARGS...`: its exit code and results.
fn run_fsck(args: &[&str], image: &Path) -> (i32, Vec<Value>, Output) {
    require_ublk();
    let out = imgblk()
        .arg("fsck")
        .arg("--json")
        .args(args)
        .arg(image)
        .timeout(Duration::from_secs(600))
        .output();
    let results = match serde_json::from_str(out.stdout.trim()) {
        Ok(Value::Array(items)) => items,
        _ => panic!("fsck --json printed no JSON array\n{}", out.describe()),
    };
    (out.status.code().unwrap_or(-1), results, out)
}

/// No ublk device and no imgblk daemon remain.
fn assert_nothing_left() {
    let devices: Vec<String> = std::fs::read_dir("/sys/block")
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("ublkb"))
        .collect();
    assert!(devices.is_empty(), "devices left behind: {devices:?}");
    let daemons: Vec<String> = std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| {
            let pid: u32 = e.file_name().to_str()?.parse().ok()?;
            let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
            let argv0 = cmdline.split(|&b| b == 0).next()?;
            (argv0.ends_with(b"imgblk") && !process_gone(pid))
                .then(|| String::from_utf8_lossy(&cmdline).replace('\0', " "))
        })
        .collect();
    assert!(daemons.is_empty(), "imgblk processes left: {daemons:?}");
    assert!(list_json().is_empty(), "imgblk list still shows devices");
}

fn field<'a>(result: &'a Value, name: &str) -> &'a str {
    result[name].as_str().unwrap_or("")
}

fn sha256(path: &Path) -> String {
    cmd("sha256sum").arg(path).ok().stdout
}

#[test]
#[ignore = "needs ublk: run by ci/test (in a VM if needed)"]
fn fsck_finds_clean_ext4_xfs_vfat() {
    let s = Scratch::new("fsck-clean");
    let image = gpt_image(
        &s,
        "disk.raw",
        &[
            (16, "mkfs.ext4 -q -F"),
            (32, "mkfs.xfs -f"),
            (8, "mkfs.vfat"),
        ],
    );
    let (code, results, out) = fsck(&["--jobs", "2"], &image);
    assert_eq!(code, 0, "{}", out.describe());
    let found: Vec<(&str, &str, &str)> = results
        .iter()
        .map(|r| (field(r, "piece"), field(r, "fs"), field(r, "result")))
        .collect();
    assert_eq!(
        found,
        [
            ("disk0p1", "ext4", "clean"),
            ("disk0p2", "xfs", "clean"),
            ("disk0p3", "vfat", "clean")
        ],
        "{}",
        out.describe()
    );
    assert_eq!(results[0]["exit"].as_i64(), Some(0));
    // one piece only
    let (code, results, out) = fsck(&["--part", "2"], &image);
    assert_eq!(code, 0, "{}", out.describe());
    assert_eq!(results.len(), 1, "{}", out.describe());
    assert_eq!(field(&results[0], "fs"), "xfs");
}

#[test]
#[ignore = "needs ublk: run by ci/test (in a VM if needed)"]
fn fsck_finds_and_repairs_corrupt_ext4() {
    let s = Scratch::new("fsck-corrupt");
    let raw = corrupt_ext4(&s);
    let qcow2 = s.path("corrupt.qcow2");
    cmd("qemu-img")
        .args(["convert", "-f", "raw", "-O", "qcow2"])
        .arg(&raw)
        .arg(&qcow2)
        .ok();

    // read-only: errors found, left
    let (code, results, out) = fsck(&[], &qcow2);
    assert_eq!(code, 4, "{}", out.describe());
    assert_eq!(field(&results[0], "piece"), "disk0");
    assert_eq!(field(&results[0], "result"), "errors", "{}", out.describe());
    assert_eq!(results[0]["exit"].as_i64(), Some(4));

    // repaired into RAM: reported repaired, the image is untouched
    let before = sha256(&qcow2);
    let (code, results, out) = fsck(&["--repair", "--overlay", "memory"], &qcow2);
    assert_eq!(
        field(&results[0], "result"),
        "repaired",
        "{}",
        out.describe()
    );
    assert_eq!(field(&results[0], "overlay"), "memory");
    assert_eq!(code, 4, "{}", out.describe());
    assert_eq!(sha256(&qcow2), before, "--overlay memory changed the image");
    let (code, _, out) = fsck(&[], &qcow2);
    assert_eq!(
        code,
        4,
        "still corrupt after the RAM repair\n{}",
        out.describe()
    );

    // repair refused while another writer holds the image
    let writer = Device::attach(&raw, &["--rw"]);
    let (code, results, out) = run_fsck(&["--repair"], &raw);
    writer.detach();
    assert_nothing_left();
    assert_eq!(code, 8, "{}", out.describe());
    assert_eq!(field(&results[0], "result"), "failed", "{}", out.describe());

    // repaired in place; a second run is clean
    let (code, results, out) = fsck(&["--repair"], &raw);
    assert_eq!(code, 1, "{}", out.describe());
    assert_eq!(
        field(&results[0], "result"),
        "repaired",
        "{}",
        out.describe()
    );
    let (code, results, out) = fsck(&[], &raw);
    assert_eq!(code, 0, "{}", out.describe());
    assert_eq!(field(&results[0], "result"), "clean");
}

#[test]
#[ignore = "needs ublk: run by ci/test (in a VM if needed)"]
fn fsck_sigint_detaches_everything() {
    require_ublk();
    let s = Scratch::new("fsck-sigint");
    let image = gpt_image(&s, "disk.raw", &[(10, "mkfs.ext4 -q -F"); 6]);
    let mut child = Command::new(IMGBLK)
        .args(["fsck", "--json"])
        .arg(&image)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let has_device = || {
        std::fs::read_dir("/sys/block")
            .unwrap()
            .flatten()
            .any(|e| e.file_name().to_string_lossy().starts_with("ublkb"))
    };
    assert!(
        wait_until(Duration::from_secs(60), has_device),
        "fsck attached no device"
    );
    std::thread::sleep(Duration::from_millis(100));
    // SAFETY: kill has no memory-safety preconditions.
    unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
    let mut status = None;
    assert!(
        wait_until(Duration::from_secs(120), || {
            status = child.try_wait().unwrap();
            status.is_some()
        }),
        "fsck did not stop after SIGINT"
    );
    let status = status.unwrap();
    assert!(!status.success(), "fsck exited 0 after SIGINT");
    assert_eq!(status.code(), Some(130));
    assert_nothing_left();
}

/// The overlay tests' 8 MiB image, a 1 MiB patch, and the image's checksum.
fn overlay_fixture(s: &Scratch) -> (PathBuf, PathBuf, String) {
    let image = s.path("disk.raw");
    write_random(&image, 8 * MIB, 31);
    let patch = s.path("patch");
    write_random(&patch, MIB, 32);
    let before = sha256(&image);
    (image, patch, before)
}

/// Writes `patch` at 1 MiB of `dev`, bypassing the page cache.
fn write_patch(patch: &Path, dev: &Path) {
    cmd("dd")
        .arg(format!("if={}", patch.display()))
        .arg(format!("of={}", dev.display()))
        .args([
            "bs=64K",
            "seek=16",
            "oflag=direct",
            "conv=notrunc",
            "status=none",
        ])
        .ok();
}

#[test]
#[ignore = "needs ublk: run by ci/test (in a VM if needed)"]
fn fsck_overlay_memory_attach_writes_to_ram_only() {
    let s = Scratch::new("overlay");
    let (image, patch, before) = overlay_fixture(&s);

    let dev = Device::attach(&image, &["--overlay", "memory"]);
    assert_eq!(dev.info["writable"].as_bool(), Some(true), "{}", dev.info);
    assert_eq!(dev.info["overlay"].as_str(), Some("memory"), "{}", dev.info);
    assert!(!dev.kernel_read_only());
    // the image is only read: a read-only attach may share it
    let reader = Device::attach(&image, &[]);
    write_patch(&patch, &dev.path);
    assert_same_bytes(&dev.path, MIB, &patch, 0, MIB);
    assert_same_bytes(&dev.path, 0, &image, 0, MIB);
    assert_same_bytes(&dev.path, 2 * MIB, &image, 2 * MIB, 6 * MIB);
    assert_same_bytes(&reader.path, 0, &image, 0, 8 * MIB);
    reader.detach();
    // The writes died with the daemon: recover must not serve the bare image instead.
    let pid = dev.pid.expect("attach --json gives the daemon pid");
    cmd("kill").args(["-9", &pid.to_string()]).ok();
    assert!(wait_until(Duration::from_secs(10), || process_gone(pid)));
    let out = imgblk().arg("recover").arg(&dev.path).fails();
    assert!(out.stderr.contains("RAM overlay"), "{}", out.describe());
    dev.detach();
    assert_eq!(sha256(&image), before, "the overlay wrote to the image");
    assert_nothing_left();
}

/// `attach --overlay FILE`: a new qcow2 backed by the image takes the writes and keeps
/// them after detach; the image is unchanged; what cannot be a backing file is refused.
#[test]
#[ignore = "needs ublk: run by ci/test (in a VM if needed)"]
fn attach_overlay_file_keeps_writes_in_a_new_qcow2() {
    let s = Scratch::new("overlay-file");
    let (image, patch, before) = overlay_fixture(&s);
    let file = s.path("fix.qcow2");

    let dev = Device::attach(&image, &["--overlay", file.to_str().unwrap()]);
    assert_eq!(dev.info["writable"].as_bool(), Some(true), "{}", dev.info);
    assert_eq!(dev.info["overlay"].as_str(), file.to_str(), "{}", dev.info);
    let reader = Device::attach(&image, &[]);
    write_patch(&patch, &dev.path);
    assert_same_bytes(&dev.path, MIB, &patch, 0, MIB);
    assert_same_bytes(&reader.path, 0, &image, 0, 8 * MIB);
    reader.detach();
    // The same file again is refused rather than overwritten.
    let out = imgblk()
        .args(["attach", "--overlay"])
        .arg(&file)
        .arg(&image)
        .fails();
    assert!(out.stderr.contains("overlay"), "{}", out.describe());
    dev.detach();
    assert_eq!(sha256(&image), before, "the overlay wrote to the image");

    assert!(
        !assert_not_corrupt(&file, "a detached overlay"),
        "the overlay leaked"
    );
    let info = qemu_img(["info", "--output=json", file.to_str().unwrap()]).stdout;
    assert!(
        info.contains(image.to_str().unwrap())
            && info.contains("\"backing-filename-format\": \"raw\""),
        "{info}"
    );
    let flat = reference_raw(&file, &s.path("flat.raw"));
    assert_same_bytes(&flat, MIB, &patch, 0, MIB);
    assert_same_bytes(&flat, 0, &image, 0, MIB);
    assert_same_bytes(&flat, 2 * MIB, &image, 2 * MIB, 6 * MIB);

    for extra in [&["--part", "1"][..], &["--snapshot", "s"][..]] {
        let other = s.path("other.qcow2");
        let out = imgblk()
            .arg("attach")
            .args(extra)
            .arg("--overlay")
            .arg(&other)
            .arg(&image)
            .fails();
        assert!(
            out.stderr.contains("--overlay memory") || out.stderr.contains("snapshot"),
            "{}",
            out.describe()
        );
        assert!(!other.exists(), "{extra:?}: created the overlay anyway");
    }
    assert_nothing_left();
}

#[test]
#[ignore = "needs ublk: run by ci/test (in a VM if needed)"]
fn fsck_repairs_an_lv_inside_qcow2_and_checks_a_vmdk() {
    let s = Scratch::new("fsck-lv");
    let fs = corrupt_ext4(&s);
    // A raw disk that is one LVM PV holding LV vgfsck/data = the corrupted ext4.
    let disk = s.path("lvm.raw");
    cmd("truncate").args(["-s", "48M"]).arg(&disk).ok();
    let pv = cmd("losetup")
        .args(["--show", "-f"])
        .arg(&disk)
        .ok()
        .stdout
        .trim()
        .to_string();
    with_cleanup(
        || {
            let lvm = |args: &[&str]| {
                host_lvm(&pv, args).ok();
            };
            lvm(&["pvcreate", "-qq", "-y", &pv]);
            lvm(&["vgcreate", "-qq", "vgfsck", &pv]);
            lvm(&[
                "lvcreate", "-qq", "-y", "-Zn", "-Wn", "-n", "data", "-L", "24m", "vgfsck",
            ]);
            cmd("dd")
                .arg(format!("if={}", fs.display()))
                .arg("of=/dev/mapper/vgfsck-data")
                .args(["bs=1M", "oflag=direct", "status=none"])
                .ok();
            lvm(&["vgchange", "-qq", "-an", "vgfsck"]);
        },
        || {
            let _ = cmd("losetup").arg("-d").arg(&pv).output();
        },
    );
    let qcow2 = s.path("lvm.qcow2");
    cmd("qemu-img")
        .args(["convert", "-O", "qcow2"])
        .arg(&disk)
        .arg(&qcow2)
        .ok();

    let (code, results, out) = fsck(&[], &qcow2);
    assert_eq!(code, 4, "{}", out.describe());
    let lv = results
        .iter()
        .find(|r| field(r, "piece") == "vgfsck/data")
        .unwrap_or_else(|| panic!("{}", out.describe()));
    assert_eq!(field(lv, "result"), "errors", "{}", out.describe());

    // repaired in place, inside the qcow2; then clean, and the qcow2 is consistent
    let (code, _, out) = fsck(&["--repair"], &qcow2);
    assert_eq!(code, 1, "{}", out.describe());
    let (code, _, out) = fsck(&[], &qcow2);
    assert_eq!(code, 0, "{}", out.describe());
    cmd("qemu-img")
        .args(["check", "-f", "qcow2"])
        .arg(&qcow2)
        .ok();

    // A VMDK (read-only format): errors found; repaired into RAM only.
    let vmdk = s.path("corrupt.vmdk");
    cmd("qemu-img")
        .args(["convert", "-f", "raw", "-O", "vmdk"])
        .arg(&fs)
        .arg(&vmdk)
        .ok();
    let (code, results, out) = fsck(&[], &vmdk);
    assert_eq!(code, 4, "{}", out.describe());
    assert_eq!(field(&results[0], "result"), "errors", "{}", out.describe());
    let (_, results, out) = fsck(&["--repair", "--overlay", "memory"], &vmdk);
    assert_eq!(
        field(&results[0], "result"),
        "repaired",
        "{}",
        out.describe()
    );
}
