//! `imgblk mount` / `umount`: one step each way, read-only without writing a byte (even
//! with a dirty journal), and nothing left behind.

use crate::harness::*;
use std::path::Path;

fn sha256(path: &Path) -> String {
    cmd("sha256sum")
        .arg(path)
        .ok()
        .stdout
        .split_whitespace()
        .next()
        .unwrap_or_default()
        .to_string()
}

fn assert_no_devices() {
    assert!(list_json().is_empty(), "devices left: {:?}", list_json());
}

/// A GPT disk: p1 vfat "EFI", p2 ext4 "root" holding /etc/hostname.
fn two_fs_disk(s: &Scratch) -> std::path::PathBuf {
    let image = s.path("disk.raw");
    cmd("truncate").args(["-s", "48M"]).arg(&image).ok();
    cmd("sh")
        .arg("-c")
        .arg("printf 'label: gpt\\nstart=2048, size=16M, type=uefi\\nstart=34816, type=linux\\n' | sfdisk --quiet \"$0\"")
        .arg(&image)
        .ok();
    let root = s.mkdir("rootdir");
    std::fs::create_dir_all(root.join("etc")).unwrap();
    std::fs::write(root.join("etc/hostname"), "guest-under-test\n").unwrap();
    let fs = s.path("root.ext4");
    cmd("truncate").args(["-s", "30M"]).arg(&fs).ok();
    cmd("mkfs.ext4")
        .args(["-q", "-F", "-L", "root", "-d"])
        .arg(&root)
        .arg(&fs)
        .ok();
    // mark the journal as needing recovery: a read-only mount must still work, unchanged
    cmd("debugfs")
        .args(["-w", "-R", "feature needs_recovery"])
        .arg(&fs)
        .ok();
    cmd("dd")
        .arg(format!("if={}", fs.display()))
        .arg(format!("of={}", image.display()))
        .args(["bs=512", "seek=34816", "conv=notrunc", "status=none"])
        .ok();
    let efi = s.path("efi.vfat");
    cmd("truncate").args(["-s", "16M"]).arg(&efi).ok();
    cmd("mkfs.vfat").args(["-n", "EFI"]).arg(&efi).ok();
    cmd("dd")
        .arg(format!("if={}", efi.display()))
        .arg(format!("of={}", image.display()))
        .args(["bs=512", "seek=2048", "conv=notrunc", "status=none"])
        .ok();
    image
}

#[test]
#[ignore = "needs ublk: run by ci/test (in a VM if needed)"]
fn mount_auto_dirty_ext4_read_only_and_umount_cleanly() {
    require_ublk();
    let s = Scratch::new("mount");
    let raw = two_fs_disk(&s);
    let image = s.path("disk.qcow2");
    qemu_img(
        ["convert", "-O", "qcow2"]
            .iter()
            .map(|a| a.to_string())
            .chain([raw.display().to_string(), image.display().to_string()]),
    );
    let before = sha256(&image);
    let mnt = s.mkdir("mnt");

    let ambiguous = imgblk().arg("mount").arg(&image).arg(&mnt).fails();
    assert!(
        ambiguous.stderr.contains("disk0p1") && ambiguous.stderr.contains("disk0p2"),
        "{}",
        ambiguous.describe()
    );
    assert_no_devices();

    imgblk()
        .args(["mount", "--auto"])
        .arg(&image)
        .arg(&mnt)
        .ok();
    let hostname = std::fs::read_to_string(mnt.join("etc/hostname")).unwrap();
    assert_eq!(hostname, "guest-under-test\n");
    let listed = list_json();
    assert_eq!(listed.len(), 1, "{listed:?}");
    assert!(
        listed[0]["mounts"]
            .to_string()
            .contains(&mnt.display().to_string()),
        "{listed:?}"
    );
    let busy = imgblk()
        .arg("detach")
        .arg(listed[0]["device"].as_str().unwrap())
        .fails();
    assert!(busy.stderr.contains("mounted"), "{}", busy.describe());
    imgblk().arg("umount").arg(&mnt).ok();
    assert_no_devices();
    assert_eq!(
        sha256(&image),
        before,
        "a read-only mount changed the image"
    );

    imgblk()
        .args(["mount", "--part", "1"])
        .arg(&image)
        .arg(&mnt)
        .ok();
    assert!(cmd("findmnt").arg(&mnt).ok().stdout.contains("vfat"));
    imgblk().arg("umount").arg(&mnt).ok();
    assert_no_devices();
}

#[test]
#[ignore = "needs ublk: run by ci/test (in a VM if needed)"]
fn mount_ntfs_and_refuse_unknown_content() {
    require_ublk();
    let s = Scratch::new("ntfs");
    let image = s.path("ntfs.raw");
    cmd("truncate").args(["-s", "32M"]).arg(&image).ok();
    cmd("mkntfs")
        .args(["-Q", "-F", "-q", "-L", "WIN"])
        .arg(&image)
        .ok();
    let mnt = s.mkdir("mnt");
    imgblk().arg("mount").arg(&image).arg(&mnt).ok();
    let fstype = cmd("findmnt")
        .args(["-n", "-o", "FSTYPE"])
        .arg(&mnt)
        .ok()
        .stdout;
    assert!(
        fstype.contains("ntfs") || fstype.contains("fuseblk"),
        "{fstype}"
    );
    imgblk().arg("umount").arg(&mnt).ok();
    assert_no_devices();

    let junk = s.path("junk.raw");
    write_random(&junk, 4 * MIB, 9);
    let refused = imgblk().arg("mount").arg(&junk).arg(&mnt).fails();
    assert!(
        refused.stderr.contains("no file system"),
        "{}",
        refused.describe()
    );
    assert_no_devices();
}

#[test]
#[ignore = "needs ublk: run by ci/test (in a VM if needed)"]
fn mount_umount_and_detach_say_what_they_did_as_json() {
    require_ublk();
    let s = Scratch::new("mount-json");
    let image = s.path("ext4.raw");
    cmd("truncate").args(["-s", "16M"]).arg(&image).ok();
    cmd("mkfs.ext4").args(["-q", "-F"]).arg(&image).ok();
    let mnt = s.mkdir("mnt");
    let real = |path: &Path| std::fs::canonicalize(path).unwrap().display().to_string();
    let json = |out: Output| -> serde_json::Value {
        serde_json::from_str(&out.stdout).unwrap_or_else(|e| panic!("{e}: {}", out.describe()))
    };

    // the option stands between the image and the mount point, as people type it
    let mounted = json(
        imgblk()
            .arg("mount")
            .arg(&image)
            .arg("--json")
            .arg(&mnt)
            .ok(),
    );
    assert_eq!(mounted["mountpoint"], real(&mnt), "{mounted}");
    assert_eq!(mounted["image"], real(&image), "{mounted}");
    assert_eq!(mounted["content"], "ext4", "{mounted}");
    assert_eq!(mounted["writable"], false, "{mounted}");
    let device = mounted["device"].as_str().unwrap().to_string();
    assert!(
        cmd("findmnt").arg(&mnt).ok().stdout.contains(&device),
        "{mounted}"
    );
    let unmounted = json(imgblk().args(["umount", "--json"]).arg(&mnt).ok());
    assert_eq!(unmounted["device"], device.as_str(), "{unmounted}");
    assert_eq!(unmounted["id"], mounted["id"], "{unmounted}");
    assert_no_devices();

    let attached = imgblk().arg("attach").arg(&image).ok().stdout;
    let detached = json(imgblk().args(["detach", "--json", attached.trim()]).ok());
    assert_eq!(detached[0]["device"], attached.trim(), "{detached}");
    assert_eq!(detached[0]["image"], real(&image), "{detached}");
    assert_no_devices();
}

/// An ext4 image of unknown origin holding `bin/id`, a copy of /usr/bin/id made
/// setuid-root (4755, owned by root), and `dev/null`, a node of the host's /dev/null
/// (character device 1:3, mode 0666).
fn hostile_ext4(s: &Scratch) -> std::path::PathBuf {
    let root = s.mkdir("hostile-root");
    std::fs::create_dir_all(root.join("bin")).unwrap();
    std::fs::create_dir_all(root.join("dev")).unwrap();
    let id = root.join("bin/id");
    std::fs::copy("/usr/bin/id", &id).unwrap();
    cmd("chown").arg("0:0").arg(&id).ok();
    cmd("chmod").arg("4755").arg(&id).ok();
    cmd("mknod")
        .args(["-m", "666"])
        .arg(root.join("dev/null"))
        .args(["c", "1", "3"])
        .ok();
    let image = s.path("hostile.raw");
    cmd("truncate").args(["-s", "16M"]).arg(&image).ok();
    cmd("mkfs.ext4")
        .args(["-q", "-F", "-d"])
        .arg(&root)
        .arg(&image)
        .ok();
    image
}

/// The effective user id that `MNT/bin/id -u` reports when nobody (65534) runs it.
fn euid_of_setuid_id(mnt: &Path) -> String {
    cmd("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
        .arg(mnt.join("bin/id"))
        .arg("-u")
        .ok()
        .stdout
        .trim()
        .to_string()
}

#[test]
#[ignore = "needs ublk: run by ci/test (in a VM if needed)"]
fn mount_gives_setuid_programs_and_device_nodes_no_power() {
    require_ublk();
    let s = Scratch::new("mount-setuid");
    let image = hostile_ext4(&s);
    // A mount point that nobody can reach (the scratch folder may be root's only).
    let mnt = std::env::temp_dir().join(format!("imgblk-setuid-{}", std::process::id()));
    std::fs::create_dir_all(&mnt).unwrap();
    cmd("chmod").arg("755").arg(&mnt).ok();

    // --untrusted, as for an image of unknown origin: mount passes it to its attach.
    imgblk()
        .args(["mount", "--untrusted"])
        .arg(&image)
        .arg(&mnt)
        .ok();
    assert!(
        list_json()[0]["policy"]["data_files"] == false,
        "{:?}",
        list_json()
    );
    let options = cmd("findmnt")
        .args(["-no", "OPTIONS"])
        .arg(&mnt)
        .ok()
        .stdout;
    let setuid = euid_of_setuid_id(&mnt);
    // Root itself cannot open a device node on a nodev mount.
    let node = std::fs::OpenOptions::new()
        .write(true)
        .open(mnt.join("dev/null"));
    imgblk().arg("umount").arg(&mnt).ok();
    assert!(
        options.contains("nosuid") && options.contains("nodev"),
        "{options}"
    );
    assert_eq!(
        setuid, "65534",
        "a setuid-root program of the image ran as root"
    );
    let err = node.expect_err("a device node of the image opened");
    assert_eq!(err.kind(), std::io::ErrorKind::PermissionDenied, "{err}");

    // The opt-outs, for images you trust: the same program then runs as root, the node
    // opens (so the checks above would have seen it).
    imgblk()
        .args(["mount", "--suid", "--dev"])
        .arg(&image)
        .arg(&mnt)
        .ok();
    let setuid = euid_of_setuid_id(&mnt);
    // (closed at once: an open file keeps the mount busy)
    let node = std::fs::OpenOptions::new()
        .write(true)
        .open(mnt.join("dev/null"))
        .map(drop);
    imgblk().arg("umount").arg(&mnt).ok();
    std::fs::remove_dir(&mnt).ok();
    assert_eq!(setuid, "0", "--suid did not honour the setuid bit");
    assert!(node.is_ok(), "--dev: {:?}", node.err());
    assert_no_devices();
}
