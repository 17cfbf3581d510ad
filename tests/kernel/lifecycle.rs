//! attach / list / detach: what the commands report, queues, and that detach leaves
//! nothing behind.

use crate::harness::*;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::time::Duration;

#[test]
#[ignore = "needs ublk: run by ci/test (in a VM if needed)"]
fn attach_json_and_list_json_describe_the_device() {
    let s = Scratch::new("list");
    let image = s.path("disk.raw");
    write_random(&image, 4 * MIB, 41);

    let dev = Device::attach(&image, &["--depth", "16"]);
    let info = &dev.info;
    assert_eq!(info["device"], dev.path.to_str().unwrap(), "{info}");
    assert_eq!(info["format"], "raw", "{info}");
    assert_eq!(info["size"].as_u64(), Some(4 * MIB), "{info}");
    assert_eq!(info["queues"].as_u64(), Some(1), "{info}");
    assert_eq!(info["depth"].as_u64(), Some(16), "{info}");
    assert_eq!(info["writable"], false, "{info}");
    let pid = dev.pid.unwrap_or_else(|| panic!("no pid in {info}"));
    assert!(!process_gone(pid), "the daemon (pid {pid}) is not running");
    let listed_image = Path::new(info["image"].as_str().expect("image"));
    assert_eq!(listed_image.file_name(), image.file_name(), "{info}");

    let entry = dev
        .list_entry()
        .unwrap_or_else(|| panic!("list --json does not show {}", dev.path.display()));
    for key in [
        "id", "device", "image", "format", "size", "queues", "depth", "writable", "pid",
    ] {
        assert_eq!(
            entry[key], info[key],
            "list vs attach, {key}: {entry} vs {info}"
        );
    }
    dev.detach();
}

#[test]
#[ignore = "needs ublk: run by ci/test (in a VM if needed)"]
fn two_queues_serve_reads_from_both_cpus() {
    let s = Scratch::new("queues");
    let image = s.path("disk.raw");
    let size = 16 * MIB;
    write_random(&image, size, 42);

    let dev = Device::attach(&image, &["--queues", "2"]);
    assert_eq!(dev.info["queues"].as_u64(), Some(2), "{}", dev.info);
    let mut mq: Vec<String> = std::fs::read_dir(dev.sys().join("mq"))
        .expect("mq in sysfs")
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    mq.sort();
    assert_eq!(
        mq,
        ["0", "1"],
        "hardware queues in {}/mq",
        dev.sys().display()
    );
    let entry = dev.list_entry().expect("listed");
    assert_eq!(entry["queues"].as_u64(), Some(2), "{entry}");

    // Two threads, each pinned to a CPU (blk-mq maps each CPU to one queue), read the
    // whole device with O_DIRECT in different orders, and check every block.
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    let expected = std::fs::read(&image).unwrap();
    std::thread::scope(|scope| {
        for t in 0..2usize {
            let (expected, path) = (&expected, &dev.path);
            scope.spawn(move || {
                pin_to_cpu(t % cpus);
                let file = open_direct(path);
                let block = 256 * KIB;
                let mut buf = AlignedBuf::new(block as usize);
                let blocks = size / block;
                for i in 0..blocks {
                    let b = if t == 0 { i } else { blocks - 1 - i };
                    let offset = b * block;
                    file.read_exact_at(buf.as_mut_slice(), offset)
                        .unwrap_or_else(|e| panic!("thread {t}: read at {offset}: {e}"));
                    let want = &expected[offset as usize..(offset + block) as usize];
                    assert!(
                        buf.as_mut_slice() == want,
                        "thread {t}: wrong data at {offset}"
                    );
                }
            });
        }
    });
    dev.detach();
}

fn pin_to_cpu(cpu: usize) {
    // SAFETY: a zeroed cpu_set_t is a valid empty set; the calls only read/write it.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set);
    }
}

#[test]
#[ignore = "needs ublk: run by ci/test (in a VM if needed)"]
fn detach_removes_device_and_daemon() {
    let s = Scratch::new("detach");
    let image = s.path("disk.raw");
    write_random(&image, 2 * MIB, 43);

    // by path
    let dev = Device::attach(&image, &[]);
    let (id, pid) = (dev.id, dev.pid.expect("pid"));
    dev.detach(); // asserts node, sysfs entry, char device and daemon are gone
    assert!(process_gone(pid));
    assert!(
        list_json()
            .iter()
            .all(|d| d["id"].as_u64() != Some(id as u64)),
        "list still shows ublkb{id}"
    );

    // by id
    let dev = Device::attach(&image, &[]);
    imgblk().arg("detach").arg(dev.id.to_string()).ok();
    dev.assert_gone();
    dev.disarm();

    // --all
    let other = s.path("other.raw");
    write_random(&other, MIB, 44);
    let a = Device::attach(&image, &[]);
    let b = Device::attach(&other, &[]);
    assert_ne!(a.id, b.id);
    imgblk().args(["detach", "--all"]).ok();
    a.assert_gone();
    b.assert_gone();
    a.disarm();
    b.disarm();
    assert!(
        list_json().is_empty(),
        "list after detach --all: {:?}",
        list_json()
    );
}

/// Device ids are reused at once: an attach that runs while another device is being
/// detached may get the detached device's id (`fsck --jobs` does exactly this). detach
/// must neither take that new device for the old one left behind, nor remove its record.
/// Each round starts the attach a little later, so that some land between the old
/// daemon removing its device and detach seeing the daemon gone.
#[test]
#[ignore = "needs ublk: run by ci/test (in a VM if needed)"]
fn detach_ignores_a_new_device_that_took_the_id() {
    let s = Scratch::new("detach-reuse");
    let (first, second) = (s.path("first.raw"), s.path("second.raw"));
    write_random(&first, MIB, 45);
    write_random(&second, MIB, 46);
    let mut reused = 0;
    for round in 0..16u64 {
        let old = Device::attach(&first, &[]);
        let id = old.id.to_string();
        let detach = std::thread::spawn(move || imgblk().arg("detach").arg(id).output());
        std::thread::sleep(Duration::from_millis(25 * round));
        let new = Device::attach(&second, &[]);
        let detached = detach.join().expect("detach thread");
        assert!(detached.success(), "round {round}: {}", detached.describe());
        if new.id == old.id {
            reused += 1;
        } else {
            old.assert_gone();
        }
        old.disarm();
        let entry = new
            .list_entry()
            .unwrap_or_else(|| panic!("round {round}: the new ublkb{} is not listed", new.id));
        assert_eq!(
            entry["image"].as_str().map(Path::new),
            Some(second.as_path()),
            "round {round}: {entry}"
        );
        assert_device_equals(&new.path, &second);
        new.detach();
    }
    eprintln!("the new device took the detached one's id in {reused} of 16 rounds");
}

#[test]
#[ignore = "needs ublk: run by ci/test (in a VM if needed)"]
fn daemon_survives_the_attaching_shell() {
    // attach returns at once and the device keeps serving after the attach process exits
    let s = Scratch::new("daemon");
    let image = s.path("disk.raw");
    write_random(&image, 2 * MIB, 45);
    let dev = Device::attach(&image, &[]);
    std::thread::sleep(std::time::Duration::from_millis(500));
    assert_device_equals(&dev.path, &image);
    let pid = dev.pid.expect("pid");
    let ppid = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("daemon stat");
    let ppid: u32 = ppid
        .rsplit_once(')')
        .and_then(|(_, rest)| rest.split_whitespace().nth(1))
        .and_then(|p| p.parse().ok())
        .expect("ppid");
    assert_ne!(
        ppid,
        std::process::id(),
        "the daemon should not be our child"
    );
    dev.detach();
}
