//! The exit codes of the README's table, one test per rule, through the binary as a user
//! runs it. Host tests run without ublk, so a missing ublk is the state they see.

use std::path::Path;
use std::process::{Command, Output};

/// Exit status of a command that lacks ublk (or root).
const EXIT_SYSTEM: i32 = 4;

/// `imgblk ARGS` in `dir`, whatever its outcome.
fn imgblk(dir: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_imgblk"))
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap()
}

/// The exit code and what `imgblk ARGS` in `dir` printed (standard error, then standard
/// output, where `fsck` reports each image's failure).
fn fails(dir: &Path, args: &[&str]) -> (i32, String) {
    let out = imgblk(dir, args);
    let printed = [out.stderr, out.stdout].concat();
    (
        out.status.code().unwrap(),
        String::from_utf8_lossy(&printed).into_owned(),
    )
}

/// A 16 MiB raw disk holding an ext4 file system (no partition table), at `dir/name`.
fn ext4_disk(dir: &Path, name: &str) {
    let path = dir.join(name);
    std::fs::write(&path, vec![0u8; 16 << 20]).unwrap();
    let out = Command::new("mkfs.ext4")
        .args(["-q", "-F"])
        .arg(&path)
        .output()
        .expect("mkfs.ext4 is required (apt-get install e2fsprogs)");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Whether this host has ublk, where the no-ublk rules cannot be seen.
fn has_ublk() -> bool {
    Path::new("/dev/ublk-control").exists()
}

#[test]
fn a_directory_given_as_image_is_an_unusable_image() {
    let dir = tempfile::tempdir().unwrap();
    let (code, err) = fails(dir.path(), &["info", "."]);
    assert_eq!(code, 3, "{err}");
    assert!(err.contains("a directory, which is refused"), "{err}");
}

#[test]
fn an_image_that_cannot_be_read_is_an_unusable_image() {
    let dir = tempfile::tempdir().unwrap();
    let image = dir.path().join("secret.raw");
    std::fs::write(&image, vec![0u8; 4096]).unwrap();
    let mode = |path: &Path, mode| {
        std::fs::set_permissions(path, std::os::unix::fs::PermissionsExt::from_mode(mode)).unwrap()
    };
    mode(&image, 0o000);
    mode(dir.path(), 0o755);
    // root reads any file: run as nobody then
    let mut command = if nix::unistd::geteuid().is_root() {
        let mut c = Command::new("setpriv");
        c.args(["--reuid=65534", "--regid=65534", "--clear-groups"])
            .arg(env!("CARGO_BIN_EXE_imgblk"));
        c
    } else {
        Command::new(env!("CARGO_BIN_EXE_imgblk"))
    };
    let out = command.arg("info").arg(&image).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "{err}");
    assert!(
        err.contains("secret.raw") && err.contains("ermission denied"),
        "{err}"
    );
}

#[test]
fn an_output_folder_that_does_not_exist_is_an_operational_failure() {
    let dir = tempfile::tempdir().unwrap();
    ext4_disk(dir.path(), "disk.raw");
    let (code, err) = fails(dir.path(), &["cat", "-o", "nowhere/out.raw", "disk.raw"]);
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("nowhere/out.raw: cannot create output"),
        "{err}"
    );
}

#[test]
fn argument_errors_come_before_the_missing_ublk() {
    let dir = tempfile::tempdir().unwrap();
    ext4_disk(dir.path(), "disk.raw");
    for (args, said) in [
        (&["attach", "--part", "7", "disk.raw"][..], "partition 7"),
        (
            &["attach", "--snapshot", "nope", "disk.raw"],
            "snapshot 'nope'",
        ),
        (&["mount", "disk.raw", "--part", "7", "."], "partition 7"),
        (&["fsck", "--part", "7", "disk.raw"], "partition 7"),
        (&["recover", "/dev/sda"], "not a ublk device"),
    ] {
        let (code, err) = fails(dir.path(), args);
        assert!(!err.contains("/dev/ublk-control"), "{args:?}: {err}");
        assert!(err.contains(said), "{args:?}: {err}");
        assert_ne!(code, EXIT_SYSTEM, "{args:?}: {err}");
    }
}

#[test]
fn mount_without_ublk_exits_as_attach_does() {
    if has_ublk() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    ext4_disk(dir.path(), "disk.raw");
    let (attach, _) = fails(dir.path(), &["attach", "disk.raw"]);
    let (mount, err) = fails(dir.path(), &["mount", "disk.raw", "."]);
    assert_eq!((attach, mount), (EXIT_SYSTEM, EXIT_SYSTEM), "{err}");
    assert!(err.contains("ublk"), "{err}");
}

#[test]
fn fsck_without_ublk_says_so_once_and_exits_8() {
    if has_ublk() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    ext4_disk(dir.path(), "a.raw");
    ext4_disk(dir.path(), "b.raw");
    let (code, err) = fails(dir.path(), &["fsck", "a.raw", "b.raw"]);
    // fsck(8)'s operational error: its 4 says a file system has errors
    assert_eq!(code, 8, "{err}");
    assert_eq!(err.matches("imgblk:").count(), 1, "{err}");
    assert!(err.contains("ublk"), "{err}");
}
