//! OVA archives: disks served from inside the tar file, without extracting them.
//!
//! The archives are made as exports are: streamOptimized VMDKs written by `qemu-img
//! convert -o subformat=streamOptimized`, a hand-written OVF descriptor, and `tar -cf`
//! with the descriptor first (GNU and pax formats, one disk with a name too long for a
//! plain tar header).

mod common;

use common::{imgblk, map_runs, qemu_img, qemu_io};
use imgblk::image::{open_image, OpenOptions};
use imgblk::ErrorKind;
use std::fs;
use std::path::Path;
use std::process::Command;

/// A name over the 100 bytes of a tar header's name field.
const LONG: &str = "a-disk-name-long-enough-to-need-a-gnu-long-name-or-a-pax-path-record-in-the-tar-archive-disk2.vmdk";

/// An OVF descriptor naming `disks` in its References.
fn ovf(disks: &[&str]) -> String {
    let files: String = disks
        .iter()
        .enumerate()
        .map(|(i, d)| format!("    <File ovf:id=\"file{i}\" ovf:href=\"{d}\"/>\n"))
        .collect();
    format!(
        "<?xml version=\"1.0\"?>\n<Envelope xmlns:ovf=\"http://schemas.dmtf.org/ovf/envelope/1\">\n  \
         <References>\n{files}  </References>\n</Envelope>\n"
    )
}

/// Two streamOptimized disks in `dir` (3 MiB and 5 MiB, different data) and `vm.ova`
/// holding them in tar `format`.
fn make_ova(dir: &Path, format: &str) -> [&'static str; 2] {
    let disks = ["disk1.vmdk", LONG];
    for (i, (disk, size, writes)) in [
        (
            disks[0],
            "3M",
            vec![(0x61, 0, 1 << 20), (0x62, 2 << 20, 4096)],
        ),
        (
            disks[1],
            "5M",
            vec![(0x71, 1 << 20, 1 << 20), (0, 4 << 20, 65536)],
        ),
    ]
    .into_iter()
    .enumerate()
    {
        let raw = format!("d{i}.raw");
        qemu_img(dir, &["create", "-q", "-f", "raw", &raw, size]);
        qemu_io(dir, &raw, "raw", &writes);
        qemu_img(
            dir,
            &[
                "convert",
                "-O",
                "vmdk",
                "-o",
                "subformat=streamOptimized",
                &raw,
                disk,
            ],
        );
        fs::remove_file(dir.join(raw)).unwrap();
    }
    fs::write(dir.join("vm.ovf"), ovf(&disks)).unwrap();
    tar(dir, format, &["vm.ovf", disks[0], disks[1]]);
    disks
}

/// `tar --format=FORMAT -cf vm.ova FILES` in `dir`.
fn tar(dir: &Path, format: &str, files: &[&str]) {
    let status = Command::new("tar")
        .arg(format!("--format={format}"))
        .args(["-cf", "vm.ova"])
        .args(files)
        .current_dir(dir)
        .status()
        .unwrap();
    assert!(status.success());
}

#[test]
fn every_disk_of_an_ova_reads_like_qemu_img_reads_the_vmdk() {
    for format in ["gnu", "pax"] {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let disks = make_ova(d, format);
        for (number, disk) in disks.iter().enumerate() {
            let n = (number + 1).to_string();
            qemu_img(d, &["convert", "-O", "raw", disk, "want.raw"]);
            imgblk(d, &["cat", "--disk", &n, "-o", "got.raw", "vm.ova"]);
            assert!(
                fs::read(d.join("got.raw")).unwrap() == fs::read(d.join("want.raw")).unwrap(),
                "{format}: disk {n} differs from qemu-img convert of {disk}"
            );
            // --format names the disk's format when --disk picks one.
            imgblk(
                d,
                &["cat", "-f", "vmdk", "--disk", &n, "-o", "fmt.raw", "vm.ova"],
            );
            assert!(
                fs::read(d.join("fmt.raw")).unwrap() == fs::read(d.join("want.raw")).unwrap(),
                "{format}: disk {n} with --format vmdk"
            );
            let ours = map_runs(&imgblk(d, &["map", "--json", "--disk", &n, "vm.ova"]));
            let theirs = map_runs(qemu_img(d, &["map", "--output=json", disk]).as_bytes());
            assert_eq!(ours, theirs, "{format}: disk {n} map (ours first)");
        }
        // The first disk without --disk; info lists both, in archive order.
        imgblk(d, &["cat", "-o", "first.raw", "vm.ova"]);
        qemu_img(d, &["convert", "-O", "raw", disks[0], "want.raw"]);
        assert!(fs::read(d.join("first.raw")).unwrap() == fs::read(d.join("want.raw")).unwrap());
        let info: serde_json::Value =
            serde_json::from_slice(&imgblk(d, &["info", "--json", "vm.ova"])).unwrap();
        let names: Vec<&str> = info["disks"]
            .as_array()
            .unwrap()
            .iter()
            .map(|disk| disk["name"].as_str().unwrap())
            .collect();
        assert_eq!(names, disks, "{format}: {info}");
        assert_eq!(info["format"], "vmdk");
        assert_eq!(info["virtual_size"], 3 << 20);
        let text = String::from_utf8(imgblk(d, &["info", "--disk", "2", "vm.ova"])).unwrap();
        assert!(
            text.contains("OVA disk 2: ") && text.contains("virtual size: 5.0 MiB"),
            "{text}"
        );
    }
}

#[test]
fn an_ova_is_read_only_and_disk_numbers_are_checked() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    make_ova(d, "gnu");
    let ova = d.join("vm.ova");
    let writable = OpenOptions {
        writable: true,
        ..OpenOptions::default()
    };
    let Err(err) = open_image(&ova, &writable) else {
        panic!("an OVA opened for writing");
    };
    assert_eq!(err.kind(), ErrorKind::ReadOnly, "{err}");
    assert!(err.to_string().contains("read-only"), "{err}");
    let third = OpenOptions {
        disk: Some(3),
        ..OpenOptions::default()
    };
    let Err(err) = open_image(&ova, &third) else {
        panic!("disk 3 of two opened");
    };
    let msg = err.to_string();
    assert!(
        msg.contains("vm.ova") && msg.contains("--disk 3") && msg.contains("2 disk(s)"),
        "{msg}"
    );
    // A descriptor VMDK in an archive names its extent, which would be read from beside
    // the archive: refused.
    qemu_img(
        d,
        &[
            "create",
            "-q",
            "-f",
            "vmdk",
            "-o",
            "subformat=monolithicFlat",
            "flat.vmdk",
            "1M",
        ],
    );
    fs::write(d.join("vm.ovf"), ovf(&["flat.vmdk"])).unwrap();
    fs::rename(d.join("vm.ova"), d.join("kept.ova")).unwrap();
    tar(d, "gnu", &["vm.ovf", "flat.vmdk", "flat-flat.vmdk"]);
    let Err(err) = open_image(&ova, &OpenOptions::default()) else {
        panic!("a descriptor VMDK in an OVA opened");
    };
    assert!(
        err.to_string().contains("flat-flat.vmdk") && err.to_string().contains("self-contained"),
        "{err}"
    );
    fs::rename(d.join("kept.ova"), &ova).unwrap();
    // --disk for a file that is no OVA.
    let Err(err) = open_image(&d.join("disk1.vmdk"), &third) else {
        panic!("--disk accepted for a VMDK");
    };
    assert!(
        err.to_string().contains("no OVA") || err.to_string().contains("none"),
        "{err}"
    );
    // An OVA is no parent: a VMDK snapshot naming one is refused, not read as a raw tar. (qemu-img makes the child of disk1.vmdk, and the parent's
    // name is replaced by the OVA's, of the same length.)
    qemu_img(
        d,
        &[
            "create",
            "-q",
            "-f",
            "vmdk",
            "-b",
            "disk1.vmdk",
            "-F",
            "vmdk",
            "top.vmdk",
        ],
    );
    fs::copy(&ova, d.join("parent.ova")).unwrap();
    let mut child = fs::read(d.join("top.vmdk")).unwrap();
    let at = child
        .windows(12)
        .position(|w| w == b"\"disk1.vmdk\"")
        .unwrap();
    child[at..at + 12].copy_from_slice(b"\"parent.ova\"");
    fs::write(d.join("top.vmdk"), child).unwrap();
    let Err(err) = open_image(&d.join("top.vmdk"), &OpenOptions::default()) else {
        panic!("a VMDK over an OVA opened");
    };
    assert!(err.to_string().contains("parent.ova"), "{err}");
}
