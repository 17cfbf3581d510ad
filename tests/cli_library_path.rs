//! The commands that need no kernel (`cat`, `map`, `info`, `inspect`), run as a user would
//! run them, against what `qemu-img` says of the same images.

mod common;

use common::{imgblk, qemu_img};
use std::process::Command;

#[test]
fn cat_equals_qemu_img_convert_and_map_agrees_with_qemu_img_map() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    common::compressed_chain(d, 5);
    for image in ["top.qcow2", "base.qcow2"] {
        qemu_img(d, &["convert", "-O", "raw", image, "ref.raw"]);
        imgblk(d, &["cat", "--sparse", "-o", "cat.raw", image]);
        assert!(
            std::fs::read(d.join("cat.raw")).unwrap() == std::fs::read(d.join("ref.raw")).unwrap(),
            "cat {image}"
        );
        let streamed = Command::new(env!("CARGO_BIN_EXE_imgblk"))
            .args(["cat", image])
            .current_dir(d)
            .output()
            .unwrap();
        assert!(
            streamed.stdout == std::fs::read(d.join("ref.raw")).unwrap(),
            "cat {image} to stdout"
        );

        // data/zero classification per 512-byte sector agrees with qemu-img map
        let ours: serde_json::Value =
            serde_json::from_slice(&imgblk(d, &["map", "--json", image])).unwrap();
        let theirs: serde_json::Value =
            serde_json::from_str(&qemu_img(d, &["map", "--output=json", image])).unwrap();
        let classify = |runs: &serde_json::Value| {
            let mut sectors = Vec::new();
            for run in runs.as_array().unwrap() {
                let n = run["length"].as_u64().unwrap() / 512;
                let class = (
                    run["data"].as_bool().unwrap(),
                    run["zero"].as_bool().unwrap(),
                );
                sectors.extend(std::iter::repeat_n(class, n as usize));
            }
            sectors
        };
        assert!(
            classify(&ours) == classify(&theirs),
            "map of {image} disagrees with qemu-img map"
        );
    }
    let info: serde_json::Value =
        serde_json::from_slice(&imgblk(d, &["info", "--json", "top.qcow2"])).unwrap();
    assert_eq!(info["chain"].as_array().map(Vec::len), Some(2));
    assert_eq!(info["chain"][1]["format"], "qcow2");
}
