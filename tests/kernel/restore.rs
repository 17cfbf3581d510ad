//! Restores onto a block device: `imgblk cat -o /dev/loopN` over a device full of other
//! bytes leaves exactly the image's bytes (zero runs zeroed, not left behind), keeps the
//! device's size and exits 0; a mounted device is refused.

use crate::harness::*;
use std::path::Path;

#[test]
#[ignore = "needs root and loop devices: run by ci/test (in a VM if needed)"]
fn restore_onto_a_used_block_device_is_exact() {
    let s = Scratch::new("restore");
    let image = s.path("disk.qcow2");
    let raw = s.path("mixed.raw");
    write_mixed(&raw, 32 * MIB, 29);
    cmd("qemu-img")
        .args(["convert", "-O", "qcow2"])
        .arg(&raw)
        .arg(&image)
        .ok();
    cmd("qemu-io")
        .args(["-c", "write -z 4M 3M", "-c", "write -P 0x5a 20M 1M"])
        .arg(&image)
        .ok();
    let expected = reference_raw(&image, &s.path("expected.raw"));
    let backing = s.path("device.img");
    cmd("truncate").args(["-s", "40M"]).arg(&backing).ok();
    let loop_dev = loop_device(&backing);
    with_cleanup(
        || {
            let dev = Path::new(&loop_dev);
            // refilled with 0xff before each restore
            for sparse in [&["--sparse"][..], &[]] {
                cmd("sh")
                    .args(["-c", "tr '\\0' '\\377' </dev/zero | dd of=\"$0\" bs=1M count=40 iflag=fullblock conv=fsync 2>/dev/null"])
                    .arg(&loop_dev)
                    .ok();
                imgblk()
                    .args(["cat", "-o"])
                    .arg(dev)
                    .args(sparse)
                    .arg(&image)
                    .ok();
                assert_eq!(
                    block_size(dev),
                    40 * MIB,
                    "cat {sparse:?} resized the device"
                );
                assert_same_bytes(dev, 0, &expected, 0, 32 * MIB);
                let mut tail = vec![0u8; MIB as usize];
                std::os::unix::fs::FileExt::read_exact_at(
                    &std::fs::File::open(dev).unwrap(),
                    &mut tail,
                    32 * MIB,
                )
                .unwrap();
                assert!(
                    tail.iter().all(|&b| b == 0xff),
                    "cat {sparse:?} wrote past the image"
                );
            }

            // a mounted device is refused, not overwritten under its file system
            cmd("mkfs.ext4").args(["-q", "-F"]).arg(dev).ok();
            let mnt = s.mkdir("mnt");
            cmd("mount").arg(dev).arg(&mnt).ok();
            let busy = imgblk().args(["cat", "-o"]).arg(dev).arg(&image).output();
            cmd("umount").arg(&mnt).ok();
            assert_eq!(busy.status.code(), Some(5), "{}", busy.describe());
        },
        || {
            cmd("losetup").arg("-d").arg(&loop_dev).ok();
        },
    );
}
