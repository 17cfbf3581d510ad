//! Images that live on host block devices, as on Xen LVM storage repositories and KVM
//! hosts: a VHD written into a host logical volume, and a raw disk inside a host LUKS
//! container opened with cryptsetup. imgblk serves and mounts them like files.

use crate::harness::*;
use std::path::{Path, PathBuf};

/// A raw disk that is one ext4 holding /hello.txt, and its file-system bytes.
fn ext4_disk(s: &Scratch, name: &str) -> PathBuf {
    let dir = s.mkdir(&format!("{name}-root"));
    std::fs::write(dir.join("hello.txt"), format!("hello from {name}\n")).unwrap();
    let disk = s.path(&format!("{name}.raw"));
    cmd("truncate").args(["-s", "24M"]).arg(&disk).ok();
    cmd("mkfs.ext4")
        .args(["-q", "-F", "-L", "root", "-d"])
        .arg(&dir)
        .arg(&disk)
        .ok();
    disk
}

fn read_file_via_mount(source: &Path, s: &Scratch, expect: &str) {
    let mnt = s.mkdir("mnt");
    imgblk()
        .args(["mount", "--auto"])
        .arg(source)
        .arg(&mnt)
        .ok();
    let text = std::fs::read_to_string(mnt.join("hello.txt"));
    imgblk().arg("umount").arg(&mnt).ok();
    assert_eq!(text.unwrap(), expect);
    assert!(
        list_json().is_empty(),
        "devices left behind: {:?}",
        list_json()
    );
}

#[test]
#[ignore = "needs ublk: run by ci/test (in a VM if needed)"]
fn vhd_inside_a_host_logical_volume() {
    require_ublk();
    let s = Scratch::new("vhd-in-lv");
    let raw = ext4_disk(&s, "xenvdi");
    let vhd = s.path("vdi.vhd");
    cmd("qemu-img")
        .args(["convert", "-O", "vpc"])
        .arg(&raw)
        .arg(&vhd)
        .ok();
    let reference = s.path("vdi.ref");
    cmd("qemu-img")
        .args(["convert", "-f", "vpc", "-O", "raw"])
        .arg(&vhd)
        .arg(&reference)
        .ok();

    let pv_file = s.path("sr.img");
    cmd("truncate").args(["-s", "96M"]).arg(&pv_file).ok();
    let pv = cmd("losetup")
        .args(["--show", "-f"])
        .arg(&pv_file)
        .ok()
        .stdout
        .trim()
        .to_string();
    let lvm = |args: &[&str]| {
        host_lvm(&pv, args).ok();
    };
    let vg = "VG_XenStorage-imgblktest";
    let lv = format!("/dev/{vg}/VHD-0001");
    with_cleanup(
        || {
            lvm(&["pvcreate", "-qq", "-y", &pv]);
            lvm(&["vgcreate", "-qq", vg, &pv]);
            lvm(&[
                "lvcreate", "-qq", "-y", "-Zn", "-Wn", "-n", "VHD-0001", "-L", "48m", vg,
            ]);
            // A VHD in an LV is shorter than the LV: its footer is not at the device's end.
            cmd("dd")
                .arg(format!("if={}", vhd.display()))
                .arg(format!("of={lv}"))
                .args(["bs=1M", "oflag=direct", "status=none"])
                .ok();
            let dev = Device::attach(Path::new(&lv), &[]);
            assert_eq!(dev.info["format"], "vpc", "{}", dev.info);
            assert_device_equals(&dev.path, &reference);
            dev.detach();
            read_file_via_mount(Path::new(&lv), &s, "hello from xenvdi\n");
        },
        || {
            let _ = host_lvm(&pv, &["vgchange", "-an", vg]).output();
            let _ = cmd("losetup").arg("-d").arg(&pv).output();
        },
    );
}

#[test]
#[ignore = "needs ublk: run by ci/test (in a VM if needed)"]
fn raw_disk_inside_a_host_luks_container() {
    require_ublk();
    let s = Scratch::new("raw-in-luks");
    let raw = ext4_disk(&s, "kvmguest");
    let container = s.path("lvhd0.luks");
    cmd("truncate").args(["-s", "48M"]).arg(&container).ok();
    let key = s.path("key");
    std::fs::write(&key, "correct horse battery staple").unwrap();
    cmd("cryptsetup")
        .args([
            "luksFormat",
            "-q",
            "--type",
            "luks2",
            "--pbkdf",
            "pbkdf2",
            "--pbkdf-force-iterations",
            "1000",
            "--key-file",
        ])
        .arg(&key)
        .arg(&container)
        .ok();
    let name = "imgblk-test-cr_hd0";
    cmd("cryptsetup")
        .args(["open", "--key-file"])
        .arg(&key)
        .arg(&container)
        .arg(name)
        .ok();
    let mapper = PathBuf::from(format!("/dev/mapper/{name}"));
    with_cleanup(
        || {
            cmd("dd")
                .arg(format!("if={}", raw.display()))
                .arg(format!("of={}", mapper.display()))
                .args(["bs=1M", "oflag=direct", "status=none"])
                .ok();
            let dev = Device::attach(&mapper, &[]);
            assert_same_bytes(&dev.path, 0, &raw, 0, file_size(&raw));
            dev.detach();
            read_file_via_mount(&mapper, &s, "hello from kvmguest\n");
            // and without host dm-crypt: imgblk decrypts the container itself
            let plain = s.path("plain.out");
            imgblk()
                .args(["cat", "--luks", "--key-file"])
                .arg(&key)
                .arg(&container)
                .arg("-o")
                .arg(&plain)
                .ok();
            assert_same_bytes(&plain, 0, &raw, 0, file_size(&raw));
        },
        || {
            let _ = cmd("cryptsetup").args(["close", name]).output();
        },
    );
}

#[test]
#[ignore = "needs ublk: run by ci/test (in a VM if needed)"]
fn lvm_inside_a_luks2_partition_inside_qcow2() {
    require_ublk();
    let s = Scratch::new("luks-lvm-qcow2");
    let key = s.path("key");
    std::fs::write(&key, "guest secret").unwrap();
    // The LUKS2 container, holding an LVM PV with an ext4 LV, built with the real tools.
    let container = s.path("part.luks");
    cmd("truncate").args(["-s", "64M"]).arg(&container).ok();
    cmd("cryptsetup")
        .args([
            "luksFormat",
            "-q",
            "--type",
            "luks2",
            "--pbkdf",
            "argon2id",
            "--pbkdf-memory",
            "8192",
            "--iter-time",
            "10",
            "--key-file",
        ])
        .arg(&key)
        .arg(&container)
        .ok();
    let name = "imgblk-test-guestcrypt";
    cmd("cryptsetup")
        .args(["open", "--key-file"])
        .arg(&key)
        .arg(&container)
        .arg(name)
        .ok();
    let mapper = format!("/dev/mapper/{name}");
    let lvm = |args: &[&str]| {
        host_lvm(&mapper, args).ok();
    };
    let root = s.mkdir("lvroot");
    std::fs::write(
        root.join("hello.txt"),
        "hello from an LV in LUKS in qcow2\n",
    )
    .unwrap();
    let lv_sha = with_cleanup(
        || {
            lvm(&["pvcreate", "-qq", "-y", &mapper]);
            lvm(&["vgcreate", "-qq", "vgcrypt", &mapper]);
            lvm(&[
                "lvcreate", "-qq", "-y", "-Zn", "-Wn", "-n", "root", "-L", "32m", "vgcrypt",
            ]);
            cmd("mkfs.ext4")
                .args(["-q", "-F", "-d"])
                .arg(&root)
                .arg("/dev/mapper/vgcrypt-root")
                .ok();
            let sha = cmd("sha256sum").arg("/dev/mapper/vgcrypt-root").ok().stdout;
            lvm(&["vgchange", "-qq", "-an", "vgcrypt"]);
            sha.split_whitespace()
                .next()
                .unwrap_or_default()
                .to_string()
        },
        || {
            let _ = cmd("cryptsetup").args(["close", name]).output();
        },
    );

    // A GPT disk whose partition 1 is that container, converted to qcow2.
    let raw = s.path("disk.raw");
    cmd("truncate").args(["-s", "80M"]).arg(&raw).ok();
    cmd("sh")
        .arg("-c")
        .arg("printf 'label: gpt\\nstart=2048, size=64M, type=linux\\n' | sfdisk --quiet \"$0\"")
        .arg(&raw)
        .ok();
    cmd("dd")
        .arg(format!("if={}", container.display()))
        .arg(format!("of={}", raw.display()))
        .args(["bs=512", "seek=2048", "conv=notrunc", "status=none"])
        .ok();
    let image = s.path("disk.qcow2");
    cmd("qemu-img")
        .args(["convert", "-O", "qcow2"])
        .arg(&raw)
        .arg(&image)
        .ok();

    let inspect = imgblk()
        .args(["inspect", "--key-file"])
        .arg(&key)
        .arg(&image)
        .ok()
        .stdout;
    assert!(inspect.contains("vgcrypt/root"), "{inspect}");

    // imgblk decrypts partition 1 itself (no dm-crypt), and the LV inside is served and
    // mounted from that device (no host LVM).
    let plain = Device::attach(
        &image,
        &["--part", "1", "--luks", "--key-file", key.to_str().unwrap()],
    );
    let lv = Device::attach(&plain.path, &["--lv", "vgcrypt/root"]);
    let sha = cmd("sha256sum").arg(&lv.path).ok().stdout;
    assert_eq!(
        sha.split_whitespace().next(),
        Some(lv_sha.as_str()),
        "LV bytes differ from dm's"
    );
    lv.detach();
    let mnt = s.mkdir("mnt");
    imgblk()
        .args(["mount", "--lv", "vgcrypt/root"])
        .arg(&plain.path)
        .arg(&mnt)
        .ok();
    let text = std::fs::read_to_string(mnt.join("hello.txt"));
    imgblk().arg("umount").arg(&mnt).ok();
    plain.detach();
    assert_eq!(text.unwrap(), "hello from an LV in LUKS in qcow2\n");

    // The same in one step: --key-file unlocks the LUKS partition it finds, and --lv
    // names the LV inside (options may stand between mount's paths).
    let key_arg = key.to_str().unwrap();
    let one_step = ["--lv", "vgcrypt/root", "--key-file", key_arg];
    let lv = Device::attach(&image, &one_step);
    let sha = cmd("sha256sum").arg(&lv.path).ok().stdout;
    assert_eq!(sha.split_whitespace().next(), Some(lv_sha.as_str()));
    lv.detach();
    let copy = s.path("lv.bin");
    imgblk()
        .arg("cat")
        .args(one_step)
        .arg("-o")
        .arg(&copy)
        .arg(&image)
        .ok();
    let sha = cmd("sha256sum").arg(&copy).ok().stdout;
    assert_eq!(sha.split_whitespace().next(), Some(lv_sha.as_str()));
    // mount reads the key once from its standard input (`--key-file -`, as cryptsetup;
    // on a terminal it asks for a passphrase) and hands it to the attach it runs
    let mnt = s.mkdir("mnt-one-step");
    imgblk()
        .arg("mount")
        .arg(&image)
        .args(["--lv", "vgcrypt/root", "--key-file", "-"])
        .arg(&mnt)
        .stdin_file(&key)
        .ok();
    let text = std::fs::read_to_string(mnt.join("hello.txt"));
    imgblk().arg("umount").arg(&mnt).ok();
    assert_eq!(text.unwrap(), "hello from an LV in LUKS in qcow2\n");
    let fsck = imgblk()
        .args(["fsck", "--json", "--key-file", "-"])
        .arg(&image)
        .stdin_file(&key)
        .ok();
    let results: serde_json::Value = serde_json::from_str(&fsck.stdout).unwrap();
    assert!(
        results.as_array().is_some_and(|r| r
            .iter()
            .any(|c| c["piece"] == "vgcrypt/root" && c["result"] == "clean")),
        "{}",
        fsck.stdout
    );
    assert!(
        list_json().is_empty(),
        "devices left behind: {:?}",
        list_json()
    );
}
