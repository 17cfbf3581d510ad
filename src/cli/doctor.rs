//! `imgblk doctor`: checks what this host needs to serve images, each failed item with a fix.

use super::{print_json, EXIT_OK, EXIT_SYSTEM};
use crate::error::Result;
use crate::ublk::device::Driver;
use crate::ublk::kernel;
use serde::Serialize;

/// Check that this host can run imgblk, and say how to fix what is missing.
///
/// Checks the kernel, the ublk driver and the features it offers, io_uring, privileges,
/// image locking, and the filesystem checkers `imgblk fsck` runs. Exits 4 when ublk
/// devices cannot be created here.
#[derive(Debug, clap::Args)]
#[command(
    after_help = "Examples:\n  imgblk doctor\n  imgblk doctor --json | jq '.[] | select(.ok == false)'"
)]
pub struct DoctorArgs {
    /// Print a JSON array of checks.
    #[arg(long)]
    json: bool,
}

/// How much a failed check matters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
enum Need {
    /// attach cannot work without it.
    Required,
    /// Some command or feature needs it.
    Optional,
    /// Shown for information.
    Info,
}

/// One line of the report.
#[derive(Debug, Serialize)]
struct Check {
    check: &'static str,
    ok: bool,
    need: Need,
    detail: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    fix: Option<String>,
}

impl Check {
    fn new(check: &'static str, need: Need, ok: bool, detail: String, fix: &str) -> Self {
        Check {
            check,
            ok,
            need,
            detail,
            fix: (!ok).then(|| fix.to_string()),
        }
    }
}

/// Runs `imgblk doctor`.
pub fn run(args: DoctorArgs) -> Result<i32> {
    let checks = checks();
    let usable = checks.iter().all(|c| c.ok || c.need != Need::Required);
    if args.json {
        print_json(&checks)?;
    } else {
        for c in &checks {
            let mark = match (c.ok, c.need) {
                (true, _) => "ok  ",
                (false, Need::Required) => "FAIL",
                (false, _) => "warn",
            };
            println!("[{mark}] {:<18} {}", c.check, c.detail);
            if let Some(fix) = &c.fix {
                println!("       fix: {fix}");
            }
        }
        println!();
        println!(
            "{}",
            if usable {
                "imgblk can attach images on this host."
            } else {
                "imgblk cannot attach images on this host until the FAIL items are fixed.\n\
                 Without ublk, info, inspect, map, cat and doctor work; attach, mount, fsck \
                 and recover need it (detach, umount and list only find nothing to do)."
            }
        );
    }
    Ok(if usable { EXIT_OK } else { EXIT_SYSTEM })
}

fn checks() -> Vec<Check> {
    let release = kernel::release();
    let new_enough = kernel::at_least(&release, 6, 0);
    let mut checks = vec![Check::new(
        "kernel",
        Need::Required,
        new_enough,
        format!("Linux {release}"),
        "ublk needs Linux 6.0 or newer (6.5+ for unprivileged devices)",
    )];
    let driver = Driver::probe();
    let control = driver == Driver::Ready;
    checks.push(Check::new(
        "ublk driver",
        Need::Required,
        control,
        driver.problem(),
        driver.fix(),
    ));
    if control {
        let features = libublk::ctrl::UblkCtrl::get_features();
        checks.push(features_check(features));
        checks.push(zero_copy_check(features.unwrap_or(0)));
        checks.push(linked_commit_check(&release));
    }
    checks.push(io_uring_check());
    let root = nix::unistd::geteuid().is_root();
    checks.push(Check::new(
        "privileges",
        Need::Required,
        root,
        if root {
            "running as root".into()
        } else {
            "not root".into()
        },
        "run imgblk as root (creating ublk devices needs CAP_SYS_ADMIN)",
    ));
    checks.push(locking_check());
    for (kind, tool, package) in super::fsck::CHECKERS {
        let fs = kind.as_str();
        let found = super::find_program(tool);
        checks.push(Check::new(
            "fsck checker",
            Need::Optional,
            found.is_some(),
            match &found {
                Some(path) => format!("{tool} for {fs}: {}", path.display()),
                None => format!("{tool} for {fs}: not found"),
            },
            &format!("install {package} (imgblk fsck runs {tool} for {fs})"),
        ));
    }
    checks
}

fn features_check(features: Option<u64>) -> Check {
    const FEATURES: [(u32, &str); 7] = [
        (0, "ZERO_COPY"),
        (3, "USER_RECOVERY"),
        (4, "USER_RECOVERY_REISSUE"),
        (5, "UNPRIVILEGED_DEV"),
        (7, "USER_COPY"),
        (11, "AUTO_BUF_REG"),
        (12, "QUIESCE"),
    ];
    match features {
        Some(bits) => {
            let names: Vec<&str> = FEATURES
                .iter()
                .filter(|(bit, _)| bits & (1u64 << bit) != 0)
                .map(|&(_, name)| name)
                .collect();
            Check::new(
                "ublk features",
                Need::Info,
                true,
                format!("{:#x}: {}", bits, names.join(" ")),
                "",
            )
        }
        None => Check::new(
            "ublk features",
            Need::Optional,
            false,
            "the driver did not answer GET_FEATURES".into(),
            "needs root, and Linux 6.1+ for the query",
        ),
    }
}

fn zero_copy_check(features: u64) -> Check {
    let offered = crate::ublk::device::offers_zero_copy(features);
    Check::new(
        "zero copy",
        Need::Optional,
        offered,
        if offered {
            "available: image data moves straight between the request and the file".into()
        } else {
            "not available: each request is copied once through the daemon".into()
        },
        "boot Linux 6.16 or later (ublk's AUTO_BUF_REG; Debian 13 has 6.18 in trixie-backports)",
    )
}

fn linked_commit_check(release: &str) -> Check {
    let safe = kernel::links_ublk_commands_safely(release);
    Check::new(
        "linked commits",
        Need::Optional,
        safe,
        if safe {
            "on: a request whose bytes are one run of one file completes without a round trip \
             through the daemon"
                .into()
        } else {
            "off: this kernel may read a linked ublk command from a reused submission slot \
             (Linux 6.10-6.13), so each request's commit waits for the daemon"
                .into()
        },
        "boot Linux 6.14 or later (copies every io_uring command at submission)",
    )
}

fn io_uring_check() -> Check {
    let sysctl = std::fs::read_to_string("/proc/sys/kernel/io_uring_disabled")
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "absent".into());
    let ring = io_uring::IoUring::new(2);
    Check::new(
        "io_uring",
        Need::Required,
        ring.is_ok(),
        match &ring {
            Ok(_) => format!("available (kernel.io_uring_disabled = {sysctl})"),
            Err(e) => format!("cannot create a ring: {e} (kernel.io_uring_disabled = {sysctl})"),
        },
        "sysctl kernel.io_uring_disabled=0, and allow io_uring_setup in any seccomp profile (containers)",
    )
}

fn locking_check() -> Check {
    let probe = tempfile_in_run_dir();
    let ok = probe
        .as_ref()
        .map(|f| {
            crate::image::lock::lock(
                std::os::fd::AsRawFd::as_raw_fd(f),
                crate::image::lock::LockMode::Shared,
            )
            .is_ok()
        })
        .unwrap_or(false);
    Check::new(
        "image locking",
        Need::Optional,
        ok,
        if ok {
            "QEMU-compatible OFD byte-range locks work".into()
        } else {
            "OFD locks unavailable: imgblk cannot see a VM using an image".into()
        },
        "use a local filesystem that supports fcntl(F_OFD_SETLK) locks for images",
    )
}

fn tempfile_in_run_dir() -> Option<std::fs::File> {
    let path = std::env::temp_dir().join(format!("imgblk-doctor-{}", std::process::id()));
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(true)
        .read(true)
        .write(true)
        .open(&path)
        .ok();
    let _ = std::fs::remove_file(&path);
    file
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn report_matches_this_host() {
        let checks = checks();
        let driver = checks.iter().find(|c| c.check == "ublk driver").unwrap();
        assert_eq!(
            driver.ok,
            std::path::Path::new("/dev/ublk-control").exists()
        );
        assert_eq!(driver.fix.is_some(), !driver.ok);
        let io_uring = checks.iter().find(|c| c.check == "io_uring").unwrap();
        assert_eq!(io_uring.ok, io_uring::IoUring::new(2).is_ok());
    }
}
