//! ublk device plumbing.
