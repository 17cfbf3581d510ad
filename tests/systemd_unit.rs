//! The systemd unit template (`contrib/systemd/imgblk@.service`): its sandbox matches
//! what it runs and writes, and systemd accepts it.

use std::collections::HashMap;
use std::path::Path;
use std::process::Command;

/// The unit template, as shipped.
fn unit_text() -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("contrib/systemd/imgblk@.service");
    std::fs::read_to_string(path).expect("read the unit template")
}

/// Every `KEY=VALUE` of the unit's `[Service]` section, values of repeated keys in order.
fn service_settings(text: &str) -> HashMap<String, Vec<String>> {
    let mut settings: HashMap<String, Vec<String>> = HashMap::new();
    let mut section = "";
    for line in text.lines().map(str::trim) {
        if line.starts_with('[') {
            section = line;
        } else if let Some((key, value)) = line.split_once('=') {
            if section == "[Service]" && !line.starts_with('#') {
                settings.entry(key.into()).or_default().push(value.into());
            }
        }
    }
    settings
}

#[test]
fn the_sandbox_matches_what_the_unit_runs_and_writes() {
    let settings = service_settings(&unit_text());
    let one = |key: &str| -> &str {
        let values = settings.get(key).unwrap_or_else(|| panic!("{key} not set"));
        assert_eq!(values.len(), 1, "{key} set more than once");
        &values[0]
    };
    assert_eq!(one("ProtectSystem"), "strict");
    assert_eq!(one("NoNewPrivileges"), "yes");
    assert_eq!(one("ProtectKernelModules"), "yes");
    // The daemon writes its records, logs and journals under /run/imgblk.
    assert_eq!(
        Path::new("/run").join(one("RuntimeDirectory")),
        Path::new("/run/imgblk")
    );
    if std::env::var_os("IMGBLK_RUN_DIR").is_none() {
        assert_eq!(imgblk::ublk::registry::run_dir(), Path::new("/run/imgblk"));
    }
    // modprobe needs CAP_SYS_MODULE: it runs outside the sandbox (`+`), or the bounding
    // set must hold it.
    let caps: Vec<&str> = one("CapabilityBoundingSet").split_whitespace().collect();
    for command in &settings["ExecStartPre"] {
        let prefix: String = command
            .chars()
            .take_while(|c| "-+@:!".contains(*c))
            .collect();
        if command.contains("modprobe") {
            assert!(
                prefix.contains('+') || caps.contains(&"CAP_SYS_MODULE"),
                "{command}: modprobe without CAP_SYS_MODULE"
            );
        }
    }
    // The daemon gets what ublk needs and nothing more.
    let allowed = [
        "CAP_SYS_ADMIN",
        "CAP_DAC_OVERRIDE",
        "CAP_IPC_LOCK",
        "CAP_SYS_RESOURCE",
    ];
    assert!(caps.contains(&"CAP_SYS_ADMIN"), "{caps:?}");
    assert!(caps.iter().all(|c| allowed.contains(c)), "{caps:?}");
    assert!(one("ExecStart").contains("attach --foreground"));
}

#[test]
fn systemd_accepts_the_unit() {
    let Ok(analyze) = which("systemd-analyze") else {
        eprintln!("skipped: no systemd-analyze");
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    // The commands it runs must exist: this build instead of /usr/bin/imgblk.
    let unit = unit_text().replace("/usr/bin/imgblk", env!("CARGO_BIN_EXE_imgblk"));
    let path = dir.path().join("imgblk@test.service");
    std::fs::write(&path, unit).unwrap();
    let out = Command::new(analyze)
        .args(["verify", "--man=no"])
        .arg(&path)
        .output()
        .expect("run systemd-analyze");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success() && stderr.trim().is_empty(), "{stderr}");
}

/// `program` in the usual folders.
fn which(program: &str) -> Result<std::path::PathBuf, ()> {
    ["/usr/bin", "/bin", "/usr/sbin", "/sbin"]
        .iter()
        .map(|dir| Path::new(dir).join(program))
        .find(|p| p.exists())
        .ok_or(())
}
