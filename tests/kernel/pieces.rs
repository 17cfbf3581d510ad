//! Pieces inside images served on their own — `--part N` and `--lv VG/LV` — are
//! byte-identical to what loop devices and device-mapper (host LVM) expose for them, with
//! no loop, dm or host `vgchange` involved on imgblk's side.

use crate::harness::*;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

/// One LV as LVM itself made it: name, size and sha256 of its bytes through dm.
struct LvmTruth {
    name: String,
    size: u64,
    sha256: String,
}

/// The images `tests/fixtures/make-lvm-images.sh` makes (once per test run) and what
/// device-mapper showed for each LV.
fn lvm_fixtures() -> &'static (PathBuf, Vec<LvmTruth>) {
    static FIXTURES: OnceLock<(PathBuf, Vec<LvmTruth>)> = OnceLock::new();
    FIXTURES.get_or_init(|| {
        let dir = Scratch::new("lvm-fixtures").mkdir("images");
        let script =
            Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/make-lvm-images.sh");
        cmd("bash")
            .arg(&script)
            .arg(&dir)
            .timeout(std::time::Duration::from_secs(600))
            .ok();
        let tables = std::fs::read_to_string(dir.join("dm-tables.txt")).unwrap();
        let truths = tables
            .lines()
            .filter_map(|line| line.strip_prefix("== "))
            .map(|line| {
                let mut words = line.split_whitespace();
                let name = words.next().unwrap().to_string();
                let mut field = |key: &str| {
                    words
                        .next()
                        .and_then(|w| w.strip_prefix(key))
                        .unwrap_or_else(|| panic!("bad dm-tables line: {line}"))
                        .to_string()
                };
                let size = field("size=").parse().unwrap();
                let sha256 = field("sha256=");
                LvmTruth { name, size, sha256 }
            })
            .collect::<Vec<_>>();
        assert!(
            truths.len() >= 6,
            "make-lvm-images.sh recorded too few LVs:\n{tables}"
        );
        // The host must not have kept any of the fixture's LVs active.
        assert!(
            !Path::new("/dev/mapper/vg0-root").exists(),
            "the fixture script left dm devices behind"
        );
        (dir, truths)
    })
}

/// The image files a VG lives on.
fn images_of(dir: &Path, vg: &str) -> Vec<PathBuf> {
    let files: &[&str] = match vg {
        "vg0" => &["gpt-vg0.img"],
        "debian-vg" => &["debian-vg.img"],
        "vgspan" => &["span-b.img", "span-a.img"],
        other => panic!("unknown fixture VG {other}"),
    };
    files.iter().map(|f| dir.join(f)).collect()
}

fn sha256(path: &Path) -> String {
    let out = cmd("sha256sum").arg(path).ok();
    out.stdout
        .split_whitespace()
        .next()
        .unwrap_or_default()
        .to_string()
}

#[test]
#[ignore = "needs ublk: run by ci/test (in a VM if needed)"]
fn lv_devices_match_device_mapper() {
    let (dir, truths) = lvm_fixtures();
    for lv in truths {
        let vg = lv.name.split('/').next().unwrap();
        let images = images_of(dir, vg);
        // attach --lv VG/LV IMAGES...: the first image is the positional one
        let mut options: Vec<String> = vec!["--lv".into(), lv.name.clone()];
        options.extend(images[1..].iter().map(|p| p.display().to_string()));
        let options: Vec<&str> = options.iter().map(String::as_str).collect();
        let dev = Device::attach(&images[0], &options);
        assert_eq!(
            block_size(&dev.path),
            lv.size,
            "size of {} via imgblk",
            lv.name
        );
        assert_eq!(
            sha256(&dev.path),
            lv.sha256,
            "bytes of {} via imgblk vs dm",
            lv.name
        );
        dev.detach();

        let out = imgblk()
            .arg("cat")
            .arg("--lv")
            .arg(&lv.name)
            .args(&images)
            .arg("-o")
            .arg(dir.join("lv.out"))
            .ok();
        assert!(out.success());
        assert_eq!(
            sha256(&dir.join("lv.out")),
            lv.sha256,
            "imgblk cat --lv {}",
            lv.name
        );
    }
}

#[test]
#[ignore = "needs ublk: run by ci/test (in a VM if needed)"]
fn part_device_matches_loop_partition() {
    let (dir, _) = lvm_fixtures();
    let image = dir.join("gpt-vg0.img");
    let loop_dev = cmd("losetup")
        .args(["-P", "-r", "--show", "-f"])
        .arg(&image)
        .ok()
        .stdout
        .trim()
        .to_string();
    let loop_part = PathBuf::from(format!("{loop_dev}p2"));
    assert!(wait_until(std::time::Duration::from_secs(5), || loop_part.exists()));
    let expected = sha256(&loop_part);
    let expected_size = block_size(&loop_part);
    cmd("losetup").arg("-d").arg(&loop_dev).ok();

    let dev = Device::attach(&image, &["--part", "2"]);
    assert_eq!(block_size(&dev.path), expected_size);
    assert_eq!(sha256(&dev.path), expected, "--part 2 vs {loop_dev}p2");
    dev.detach();

    let missing = imgblk().args(["attach", "--part", "9"]).arg(&image).fails();
    assert!(
        missing.stderr.contains("no partition 9"),
        "{}",
        missing.describe()
    );
}

#[test]
#[ignore = "needs ublk: run by ci/test (in a VM if needed)"]
fn inspect_lists_every_piece() {
    let (dir, truths) = lvm_fixtures();
    let files = ["gpt-vg0.img", "debian-vg.img", "span-a.img", "span-b.img"];
    let out = imgblk()
        .args(["inspect", "--json"])
        .args(files.iter().map(|f| dir.join(f)))
        .ok();
    let layout: serde_json::Value = serde_json::from_str(&out.stdout).unwrap();
    let lvs: Vec<String> = layout["volume_groups"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|vg| {
            vg["lvs"]
                .as_array()
                .unwrap()
                .iter()
                .map(|lv| lv["name"].as_str().unwrap().to_string())
        })
        .collect();
    for lv in truths {
        assert!(
            lvs.contains(&lv.name),
            "inspect misses {}: {lvs:?}",
            lv.name
        );
    }
    let text = imgblk()
        .arg("inspect")
        .args(files.iter().map(|f| dir.join(f)))
        .ok()
        .stdout;
    assert!(
        text.contains("vg0/root") && text.contains("ext4") && text.contains("swap"),
        "{text}"
    );
    // The host LVM was never involved: no VG of the images is known to it.
    let vgs = cmd("vgs").args(["--noheadings", "-o", "vg_name"]).output();
    assert!(
        !vgs.stdout.contains("vgspan"),
        "host LVM sees the guest VG: {}",
        vgs.describe()
    );
}

/// `imgblk ls` reads the ext4 of an LV on PVs in GPT partitions in process, by `--lv` and
/// by `--auto` (the LV called root); the VM only makes the fixtures (LVM's tools).
#[test]
#[ignore = "needs ublk: run by ci/test (in a VM if needed)"]
fn ls_reads_the_file_system_of_an_lv_inside_partitions() {
    let (dir, _) = lvm_fixtures();
    for image in ["gpt-vg0.img", "debian-vg.img"] {
        let image = dir.join(image);
        let vg = if image.ends_with("gpt-vg0.img") {
            "vg0/root"
        } else {
            "debian-vg/root"
        };
        for piece in [&["--lv", vg][..], &["--auto"][..]] {
            let out = imgblk().arg("ls").args(piece).arg(&image).arg("/").ok();
            assert_eq!(out.stdout, "lost+found\n", "{piece:?} {}", image.display());
        }
    }
}
