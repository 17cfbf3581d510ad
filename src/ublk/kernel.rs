//! What the running kernel's release says about the ublk and io_uring behaviour imgblk
//! depends on.

/// The running kernel's release (`uname -r`), empty if it cannot be read.
pub fn release() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .unwrap_or_default()
        .trim()
        .to_string()
}

/// Whether `release` (as `uname -r` prints it) is Linux `major.minor` or newer.
pub fn at_least(release: &str, major: u32, minor: u32) -> bool {
    let mut parts = release
        .split(|c: char| !c.is_ascii_digit())
        .filter_map(|p| p.parse::<u32>().ok());
    match (parts.next(), parts.next()) {
        (Some(a), Some(b)) => (a, b) >= (major, minor),
        _ => false,
    }
}

/// Whether a ublk command may be linked behind another SQE (`IOSQE_IO_LINK`) on a kernel
/// of `release`.
///
/// Linux 6.10 to 6.13 ("io_uring/uring_cmd: defer SQE copying until it's needed") leave
/// a linked `uring_cmd` pointing at its slot in the submission ring until it is issued,
/// which for a linked command is only when the SQE before it completes. By then the
/// daemon has reused the slot, so the driver reads *another* SQE's command: it commits a
/// request whose data is not in place yet (the reader gets the bytes of the tag's
/// previous request; a write is acknowledged before it is written), and the request the
/// commit was for is never completed. Debian's 6.12.118 still has it: the kernel test
/// `reads_that_miss_the_table_cache_verify_at_depth` failed in half of its attaches with
/// linked commits, never without. Linux 6.14 copies every `uring_cmd` SQE at prep time
/// ("io_uring/uring_cmd: unconditionally copy SQEs at prep time"); before 6.10 a linked
/// request's SQE was copied when it joined the link. Older than 6.14 is treated as
/// affected: a distribution may carry the change without the fix.
pub fn links_ublk_commands_safely(release: &str) -> bool {
    at_least(release, 6, 14)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_compare() {
        assert!(at_least("6.12.48+deb12-amd64", 6, 0));
        assert!(at_least("6.0.0", 6, 0));
        assert!(!at_least("5.15.0-91-generic", 6, 0));
        assert!(!at_least("", 6, 0));
        assert!(at_least("6.14.0-rc1", 6, 14));
        assert!(!at_least("6.13.12", 6, 14));
    }

    #[test]
    fn linked_commands_only_where_the_kernel_copies_their_sqe() {
        assert!(!links_ublk_commands_safely("6.12.118+deb12-amd64"));
        assert!(!links_ublk_commands_safely("6.13.7"));
        assert!(links_ublk_commands_safely("6.14.0"));
        assert!(links_ublk_commands_safely("6.18.5+deb13-amd64"));
        assert!(!links_ublk_commands_safely("garbage"));
    }
}
