//! Real file systems on attached images: made, written and checked through the device,
//! then verified on the image file itself with e2fsprogs.

use crate::harness::*;
use std::ffi::OsStr;
use std::path::Path;

#[test]
#[ignore = "needs ublk: run by ci/test (in a VM if needed)"]
fn rw_raw_ext4_written_through_the_device_lands_in_the_image() {
    let s = Scratch::new("rw-ext4");
    let image = s.path("disk.raw");
    std::fs::File::create(&image)
        .unwrap()
        .set_len(64 * MIB)
        .unwrap();
    let payload = s.path("payload.bin");
    write_random(&payload, 3 * MIB + 12345, 21);

    let mut dev = Device::attach(&image, &["--rw"]);
    assert_eq!(dev.info["writable"], true, "{}", dev.info);
    assert!(
        !dev.kernel_read_only(),
        "--rw device is read-only in the kernel"
    );
    cmd("mkfs.ext4")
        .args(["-q", "-F", "-L", "imgblk-rw"])
        .arg(&dev.path)
        .ok();
    let mnt = s.path("mnt");
    let path = dev.path.clone();
    dev.mount(&path, &mnt, "");
    std::fs::write(mnt.join("hello.txt"), "hello from imgblk\n").unwrap();
    std::fs::create_dir(mnt.join("dir")).unwrap();
    std::fs::copy(&payload, mnt.join("dir/payload.bin")).unwrap();
    cmd("sync").arg("-f").arg(mnt.join("hello.txt")).ok();
    dev.umount(&mnt);
    dev.detach();

    // the image file alone now holds the file system
    cmd("e2fsck").arg("-fn").arg(&image).ok();
    let hello = cmd("debugfs")
        .args(["-R", "cat /hello.txt"])
        .arg(&image)
        .ok();
    assert_eq!(hello.stdout, "hello from imgblk\n", "{}", hello.describe());
    let dumped = s.path("dumped.bin");
    cmd("debugfs")
        .arg("-R")
        .arg(format!("dump /dir/payload.bin {}", dumped.display()))
        .arg(&image)
        .ok();
    assert_same_bytes(&dumped, 0, &payload, 0, file_size(&payload));
    assert_eq!(file_size(&dumped), file_size(&payload));

    // and reads back through a fresh read-only device
    let mut dev = Device::attach(&image, &[]);
    let path = dev.path.clone();
    dev.mount(&path, &mnt, "ro,noload");
    assert_eq!(
        std::fs::read_to_string(mnt.join("hello.txt")).unwrap(),
        "hello from imgblk\n"
    );
    assert_same_bytes(
        &mnt.join("dir/payload.bin"),
        0,
        &payload,
        0,
        file_size(&payload),
    );
    dev.umount(&mnt);
    dev.detach();
}

/// A small tree to build a file system from.
fn populate(root: &Path) {
    std::fs::create_dir_all(root.join("etc")).unwrap();
    std::fs::create_dir_all(root.join("var/lib/deep/er")).unwrap();
    std::fs::write(root.join("etc/hostname"), "imgblk-test\n").unwrap();
    write_random(&root.join("var/lib/random.bin"), 2 * MIB + 7, 31);
    write_mixed(&root.join("var/lib/deep/er/mixed.bin"), 5 * MIB, 32);
    std::os::unix::fs::symlink("../etc/hostname", root.join("var/link")).unwrap();
}

#[test]
#[ignore = "needs ublk: run by ci/test (in a VM if needed)"]
fn e2fsck_and_mount_ext4_inside_compressed_qcow2() {
    let s = Scratch::new("ext4-qcow2");
    let tree = s.mkdir("tree");
    populate(&tree);
    let raw = s.path("fs.raw");
    cmd("mkfs.ext4")
        .args(["-q", "-F", "-L", "imgblk-fsck", "-d"])
        .arg(&tree)
        .arg(&raw)
        .arg("48M")
        .ok();
    let image = s.path("fs.qcow2");
    cmd("qemu-img")
        .args(["convert", "-c", "-f", "raw", "-O", "qcow2"])
        .arg(&raw)
        .arg(&image)
        .ok();

    let mut dev = Device::attach(&image, &[]);
    let fsck = cmd("e2fsck").arg("-fn").arg(&dev.path).output();
    assert!(fsck.success(), "e2fsck on the device: {}", fsck.describe());

    let mnt = s.path("mnt");
    let path = dev.path.clone();
    dev.mount(&path, &mnt, "ro,noload");
    for file in [
        "etc/hostname",
        "var/lib/random.bin",
        "var/lib/deep/er/mixed.bin",
    ] {
        let (a, b) = (mnt.join(file), tree.join(file));
        assert_eq!(file_size(&a), file_size(&b), "{file}");
        assert_same_bytes(&a, 0, &b, 0, file_size(&b));
    }
    assert_eq!(
        std::fs::read_link(mnt.join("var/link")).unwrap(),
        Path::new("../etc/hostname")
    );
    dev.umount(&mnt);
    dev.detach();
}

/// `ls`, `get` and `tar` of an xfs (which no crate reads in process) go through a
/// read-only kernel mount that they undo again; links in the image that point at `/` or
/// climb out with `..` resolve inside the image, never to the host's files.
#[test]
#[ignore = "needs ublk: run by ci/test (in a VM if needed)"]
fn file_commands_read_xfs_through_a_mount_they_undo() {
    let s = Scratch::new("files-xfs");
    let raw = s.path("xfs.raw");
    std::fs::File::create(&raw)
        .unwrap()
        .set_len(320 * MIB)
        .unwrap();
    cmd("mkfs.xfs").arg("-q").arg(&raw).ok();
    let mnt = s.mkdir("fill");
    cmd("mount").args(["-o", "loop"]).arg(&raw).arg(&mnt).ok();
    let payload = s.path("payload.bin");
    write_random(&payload, 100_000, 7);
    std::fs::create_dir_all(mnt.join("etc")).unwrap();
    std::fs::create_dir_all(mnt.join("dir")).unwrap();
    std::fs::write(mnt.join("etc/hostname"), "guest\n").unwrap();
    std::fs::copy(&payload, mnt.join("dir/data.bin")).unwrap();
    std::os::unix::fs::symlink("/", mnt.join("up")).unwrap();
    std::os::unix::fs::symlink("../../../../etc/hostname", mnt.join("dir/climb")).unwrap();
    cmd("umount").arg(&mnt).ok();
    let image = s.path("xfs.qcow2");
    qemu_img([
        OsStr::new("convert"),
        OsStr::new("-O"),
        OsStr::new("qcow2"),
        raw.as_os_str(),
        image.as_os_str(),
    ]);

    let listed = imgblk().arg("ls").arg(&image).arg("/").ok();
    assert_eq!(listed.stdout, "dir\netc\nup\n", "{}", listed.describe());
    let got = s.path("got.bin");
    imgblk()
        .arg("get")
        .arg(&image)
        .arg("/dir/data.bin")
        .arg("-o")
        .arg(&got)
        .ok();
    assert_same_bytes(&got, 0, &payload, 0, file_size(&payload));
    for inside in ["/up/etc/hostname", "/up/dir/../etc/hostname"] {
        let out = imgblk().arg("get").arg(&image).arg(inside).ok();
        assert_eq!(out.stdout, "guest\n", "{inside}: {}", out.describe());
    }
    let climb = imgblk()
        .arg("ls")
        .arg("-l")
        .arg(&image)
        .arg("/dir/climb")
        .ok();
    assert!(
        climb.stdout.contains("-> ../../../../etc/hostname"),
        "{}",
        climb.describe()
    );
    let tar = s.path("tree.tar");
    imgblk().arg("tar").arg(&image).arg("-o").arg(&tar).ok();
    let names = cmd("tar").arg("-tf").arg(&tar).ok();
    for name in ["./dir/data.bin", "./etc/hostname", "./up"] {
        assert!(
            names.stdout.lines().any(|l| l == name),
            "{name}: {}",
            names.stdout
        );
    }

    // Nothing is left mounted or attached.
    let mounts = std::fs::read_to_string("/proc/mounts").unwrap();
    assert!(!mounts.contains("/run/imgblk/files"), "{mounts}");
    let devices = imgblk().args(["list", "--json"]).ok();
    assert!(
        !devices
            .stdout
            .contains(image.file_name().unwrap().to_str().unwrap()),
        "{}",
        devices.stdout
    );
}
