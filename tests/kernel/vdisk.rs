//! VMDK (with a snapshot chain whose base lives in another directory), VHD, VHDX and VDI
//! images served as /dev/ublkbN read exactly what `qemu-img convert -O raw` reads.

use crate::harness::*;
use std::path::Path;

const SIZE: u64 = 16 * MIB;

fn convert(raw: &Path, out: &Path, format: &str, options: &[&str]) {
    let mut args = vec!["convert".to_string(), "-O".into(), format.into()];
    for o in options {
        args.push("-o".into());
        args.push((*o).into());
    }
    args.push(raw.display().to_string());
    args.push(out.display().to_string());
    qemu_img(args);
}

#[test]
#[ignore = "needs ublk: run by ci/test (in a VM if needed)"]
fn vmdk_vhd_vhdx_vdi_match_qemu_img() {
    let s = Scratch::new("vdisk");
    let raw = s.path("disk.raw");
    write_mixed(&raw, SIZE, 21);
    for (name, format, options) in [
        ("sparse.vmdk", "vmdk", &[][..]),
        ("stream.vmdk", "vmdk", &["subformat=streamOptimized"][..]),
        ("flat.vmdk", "vmdk", &["subformat=twoGbMaxExtentFlat"][..]),
        ("dynamic.vhd", "vpc", &[][..]),
        ("fixed.vhd", "vpc", &["subformat=fixed"][..]),
        ("dynamic.vhdx", "vhdx", &[][..]),
        ("dynamic.vdi", "vdi", &[][..]),
    ] {
        let image = s.path(name);
        convert(&raw, &image, format, options);
        // -f: qemu-img probes a fixed VHD (no magic at its start) as raw, footer and all
        let reference = s.path(&format!("{name}.ref"));
        cmd("qemu-img")
            .args(["convert", "-f", format, "-O", "raw"])
            .arg(&image)
            .arg(&reference)
            .ok();
        let dev = Device::attach(&image, &[]);
        assert_eq!(dev.info["format"], format, "{name}: {}", dev.info);
        assert_device_equals(&dev.path, &reference);
        dev.detach();
    }
}

#[test]
#[ignore = "needs ublk: run by ci/test (in a VM if needed)"]
fn vmdk_snapshot_chain_across_directories() {
    let s = Scratch::new("vmdk-chain");
    let base_dir = s.mkdir("base");
    let vm_dir = s.mkdir("vm");
    let raw = s.path("base.raw");
    write_mixed(&raw, SIZE, 22);
    convert(&raw, &base_dir.join("base.vmdk"), "vmdk", &[]);
    for (child, parent, pattern, offset) in [
        ("snap1.vmdk", "../base/base.vmdk", "0x11", "1M"),
        ("snap2.vmdk", "snap1.vmdk", "0x22", "5M"),
    ] {
        cmd("qemu-img")
            .args([
                "create", "-q", "-f", "vmdk", "-b", parent, "-F", "vmdk", child,
            ])
            .current_dir(&vm_dir)
            .ok();
        cmd("qemu-io")
            .args([
                "-f",
                "vmdk",
                "-c",
                &format!("write -P {pattern} {offset} 1M"),
                child,
            ])
            .current_dir(&vm_dir)
            .ok();
    }
    let top = vm_dir.join("snap2.vmdk");
    let reference = reference_raw(&top, &s.path("chain.ref"));
    let dev = Device::attach(&top, &[]);
    assert_device_equals(&dev.path, &reference);
    dev.detach();
    let info = imgblk().args(["info", "--json"]).arg(&top).ok();
    let info: serde_json::Value = serde_json::from_str(&info.stdout).unwrap();
    assert_eq!(info["chain"].as_array().map(Vec::len), Some(3), "{info}");

    // A broken link names the file and the problem.
    std::fs::rename(base_dir.join("base.vmdk"), base_dir.join("moved.vmdk")).unwrap();
    let broken = imgblk().arg("attach").arg(&top).fails();
    assert!(broken.stderr.contains("base.vmdk"), "{}", broken.describe());
}

#[test]
#[ignore = "needs ublk: run by ci/test (in a VM if needed)"]
fn ova_disks_served_from_the_archive_match_qemu_img() {
    let s = Scratch::new("ova");
    let dir = s.mkdir("export");
    let raw = s.path("disk.raw");
    write_mixed(&raw, SIZE, 23);
    // A streamOptimized disk (compressed grains) and a monolithicSparse one (plain grains,
    // read by io_uring at their offset inside the archive).
    convert(
        &raw,
        &dir.join("disk1.vmdk"),
        "vmdk",
        &["subformat=streamOptimized"],
    );
    write_mixed(&raw, SIZE, 24);
    convert(&raw, &dir.join("disk2.vmdk"), "vmdk", &[]);
    std::fs::write(dir.join("vm.ovf"), "<?xml version=\"1.0\"?>\n<Envelope/>\n").unwrap();
    cmd("tar")
        .args(["-cf", "vm.ova", "vm.ovf", "disk1.vmdk", "disk2.vmdk"])
        .current_dir(&dir)
        .ok();
    let ova = dir.join("vm.ova");
    for (disk, name) in [("1", "disk1.vmdk"), ("2", "disk2.vmdk")] {
        let reference = reference_raw(&dir.join(name), &s.path(&format!("{name}.ref")));
        let dev = Device::attach(&ova, &["--disk", disk]);
        assert_eq!(dev.info["format"], "vmdk", "{name}: {}", dev.info);
        assert_device_equals(&dev.path, &reference);
        dev.detach();
    }
    let refused = imgblk().args(["attach", "--rw"]).arg(&ova).fails();
    assert!(
        refused.stderr.contains("read-only"),
        "{}",
        refused.describe()
    );
}
