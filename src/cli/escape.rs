//! Text that came from an image (labels, LV and VG names, UUIDs, partition and file
//! names, error messages quoting any of them), made safe to print to a terminal.
//!
//! An image of unknown origin can hold `ESC ] 0 ; ... BEL` (retitle the terminal),
//! `ESC [ 2 J` (clear it) or worse in any of those strings. Human output shows every
//! control character (C0, DEL and C1) as an escape such as `\x1b` instead; JSON output is
//! escaped by serde already.

use std::fmt::{self, Display, Write};

/// `T`'s text with control characters escaped: print image-derived text through this.
/// Width, fill and alignment (`{:<16}`) apply to the escaped text.
pub struct Escaped<T>(pub T);

impl<T: Display> Display for Escaped<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let raw = self.0.to_string();
        if !raw.chars().any(char::is_control) {
            return f.pad(&raw);
        }
        let mut shown = String::with_capacity(raw.len() + 8);
        for c in raw.chars() {
            match u32::from(c) {
                code if code < 0x80 && c.is_control() => write!(shown, "\\x{code:02x}")?,
                code if c.is_control() => write!(shown, "\\u{{{code:x}}}")?,
                _ => shown.push(c),
            }
        }
        f.pad(&shown)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_characters_are_escaped_and_padding_kept() {
        let hostile = "a\u{1b}]0;owned\u{7}\u{1b}[2J\u{7f}\u{9b}b\n";
        let shown = format!("[{:<40}]", Escaped(hostile));
        assert_eq!(
            shown,
            format!("[{:<40}]", "a\\x1b]0;owned\\x07\\x1b[2J\\x7f\\u{9b}b\\x0a")
        );
        assert!(!shown.chars().any(char::is_control), "{shown:?}");
        assert_eq!(format!("{:>6}", Escaped("ext4")), "  ext4");
        assert_eq!(
            Escaped("C:\\VMs\\base.vhd ä").to_string(),
            "C:\\VMs\\base.vhd ä"
        );
    }
}
