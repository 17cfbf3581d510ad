//! Names made safe for a terminal: a file name from a hostile file system may hold
//! control characters (escape sequences that rewrite the screen, a newline that fakes
//! another line of a listing) or bytes that are not UTF-8.

use std::os::unix::ffi::OsStrExt;
use std::path::Path;

/// `path` for human output, as `ls -b` shows names: control characters and bytes that
/// are not UTF-8 as C escapes (`\n`, `\x1b`, `\xff`), a backslash doubled.
pub fn escape(path: &Path) -> String {
    let mut out = String::new();
    for chunk in path.as_os_str().as_bytes().utf8_chunks() {
        for c in chunk.valid().chars() {
            match c {
                '\\' => out.push_str("\\\\"),
                '\n' => out.push_str("\\n"),
                '\t' => out.push_str("\\t"),
                '\r' => out.push_str("\\r"),
                c if c.is_control() => {
                    let mut buf = [0u8; 4];
                    for byte in c.encode_utf8(&mut buf).bytes() {
                        out.push_str(&format!("\\x{byte:02x}"));
                    }
                }
                c => out.push(c),
            }
        }
        for byte in chunk.invalid() {
            out.push_str(&format!("\\x{byte:02x}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::ffi::OsStr;

    #[test]
    fn control_characters_and_bad_bytes_are_escaped() {
        let name = OsStr::from_bytes(b"a\nb\x1b[2J\\c\xffd\xc2\x85");
        assert_eq!(
            escape(Path::new(name)),
            "a\\nb\\x1b[2J\\\\c\\xffd\\xc2\\x85"
        );
        assert_eq!(escape(Path::new("plain/é")), "plain/é");
    }
}
