//! A parser for LVM2's text metadata format (lvm2 `lib/config`): nested `name { ... }`
//! sections, `key = value` pairs whose values are strings, integers or lists of those, and
//! `#` comments. Nesting depth and input size are bounded.

use crate::error::{Error, Result};
use crate::layout::util::MAX_READ;

/// Deepest section nesting accepted (VG metadata uses four levels).
pub const MAX_DEPTH: usize = 32;

/// A value in the metadata.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    /// An integer.
    Int(i64),
    /// A floating-point number (not used in VG metadata, but allowed by the syntax).
    Float(f64),
    /// A quoted string, unescaped.
    Str(String),
    /// A bracketed list of scalars.
    List(Vec<Value>),
    /// A nested section.
    Section(Section),
}

/// A section: its entries in file order.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Section {
    /// `(key, value)` pairs; section names are keys too.
    pub entries: Vec<(String, Value)>,
}

impl Section {
    /// The first value under `key`.
    pub fn get(&self, key: &str) -> Option<&Value> {
        self.entries.iter().find(|(k, _)| k == key).map(|(_, v)| v)
    }

    /// The integer under `key`.
    pub fn int(&self, key: &str) -> Option<i64> {
        match self.get(key)? {
            Value::Int(i) => Some(*i),
            _ => None,
        }
    }

    /// The string under `key`.
    pub fn str(&self, key: &str) -> Option<&str> {
        match self.get(key)? {
            Value::Str(s) => Some(s),
            _ => None,
        }
    }

    /// The list under `key`.
    pub fn list(&self, key: &str) -> Option<&[Value]> {
        match self.get(key)? {
            Value::List(l) => Some(l),
            _ => None,
        }
    }

    /// The subsection under `key`.
    pub fn section(&self, key: &str) -> Option<&Section> {
        match self.get(key)? {
            Value::Section(s) => Some(s),
            _ => None,
        }
    }

    /// All subsections with their names, in order.
    pub fn sections(&self) -> impl Iterator<Item = (&str, &Section)> {
        self.entries.iter().filter_map(|(k, v)| match v {
            Value::Section(s) => Some((k.as_str(), s)),
            _ => None,
        })
    }

    /// Whether the string list under `key` contains `flag` (for `status = [...]`).
    pub fn has_flag(&self, key: &str, flag: &str) -> bool {
        self.list(key)
            .is_some_and(|l| l.iter().any(|v| matches!(v, Value::Str(s) if s == flag)))
    }
}

/// Parses metadata text into its top-level section.
pub fn parse(text: &str) -> Result<Section> {
    if text.len() as u64 > MAX_READ {
        return Err(Error::corrupt(format!(
            "LVM metadata text is {} bytes, more than the {MAX_READ}-byte limit",
            text.len()
        )));
    }
    let mut p = Parser {
        b: text.as_bytes(),
        pos: 0,
    };
    p.section_body(0)
}

struct Parser<'a> {
    b: &'a [u8],
    pos: usize,
}

/// Characters that end a bare word.
fn is_delimiter(c: u8) -> bool {
    c.is_ascii_whitespace() || b"={}[],\"#".contains(&c)
}

impl Parser<'_> {
    fn error(&self, message: impl std::fmt::Display) -> Error {
        let consumed = self.b.get(..self.pos).unwrap_or(self.b);
        let line = consumed.iter().filter(|&&c| c == b'\n').count() + 1;
        Error::corrupt(format!("LVM metadata line {line}: {message}"))
    }

    /// Skips whitespace and comments; returns the next byte without consuming it.
    fn peek(&mut self) -> Option<u8> {
        loop {
            let c = *self.b.get(self.pos)?;
            if c.is_ascii_whitespace() {
                self.pos += 1;
            } else if c == b'#' {
                while self.b.get(self.pos).is_some_and(|&c| c != b'\n') {
                    self.pos += 1;
                }
            } else {
                return Some(c);
            }
        }
    }

    /// A run of non-delimiter bytes.
    fn word(&mut self) -> &str {
        let start = self.pos;
        while self.b.get(self.pos).is_some_and(|&c| !is_delimiter(c)) {
            self.pos += 1;
        }
        std::str::from_utf8(self.b.get(start..self.pos).unwrap_or_default()).unwrap_or("")
    }

    /// Entries up to the closing `}` (consumed) or, at depth 0, the end of the text.
    fn section_body(&mut self, depth: usize) -> Result<Section> {
        let mut section = Section::default();
        loop {
            match self.peek() {
                None if depth == 0 => return Ok(section),
                None => return Err(self.error("section not closed (truncated metadata?)")),
                Some(b'}') if depth > 0 => {
                    self.pos += 1;
                    return Ok(section);
                }
                Some(_) => {}
            }
            let key = self.word().to_string();
            if key.is_empty() {
                let c = self.peek().unwrap_or(b'?');
                return Err(self.error(format!("expected a name, found '{}'", c as char)));
            }
            match self.peek() {
                Some(b'{') => {
                    if depth + 1 >= MAX_DEPTH {
                        return Err(self.error(format!("sections nested deeper than {MAX_DEPTH}")));
                    }
                    self.pos += 1;
                    let sub = self.section_body(depth + 1)?;
                    section.entries.push((key, Value::Section(sub)));
                }
                Some(b'=') => {
                    self.pos += 1;
                    let value = self.value()?;
                    section.entries.push((key, value));
                }
                _ => return Err(self.error(format!("expected '=' or '{{' after '{key}'"))),
            }
        }
    }

    fn value(&mut self) -> Result<Value> {
        if self.peek() != Some(b'[') {
            return self.scalar();
        }
        self.pos += 1;
        let mut items = Vec::new();
        loop {
            if self.peek() == Some(b']') {
                self.pos += 1;
                return Ok(Value::List(items));
            }
            items.push(self.scalar()?);
            match self.peek() {
                Some(b',') => self.pos += 1,
                Some(b']') => {}
                _ => return Err(self.error("expected ',' or ']' in a list")),
            }
        }
    }

    fn scalar(&mut self) -> Result<Value> {
        match self.peek() {
            Some(b'"') => {
                self.pos += 1;
                self.string().map(Value::Str)
            }
            Some(_) => {
                let word = self.word();
                if let Ok(i) = word.parse::<i64>() {
                    Ok(Value::Int(i))
                } else if let Ok(f) = word.parse::<f64>() {
                    Ok(Value::Float(f))
                } else {
                    let word = word.to_string();
                    Err(self.error(format!("expected a string or a number, found '{word}'")))
                }
            }
            None => Err(self.error("expected a value, found the end of the text")),
        }
    }

    /// The rest of a string whose opening quote is consumed; `\x` stands for `x`.
    fn string(&mut self) -> Result<String> {
        let mut out = Vec::new();
        loop {
            match self.b.get(self.pos).copied() {
                None => return Err(self.error("string not closed (truncated metadata?)")),
                Some(b'"') => {
                    self.pos += 1;
                    return Ok(String::from_utf8_lossy(&out).into_owned());
                }
                Some(b'\\') => {
                    let escaped = self.b.get(self.pos + 1).copied();
                    out.extend(escaped);
                    self.pos += 2;
                }
                Some(c) => {
                    out.push(c);
                    self.pos += 1;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_nested_sections_lists_and_comments() {
        let text = "vg0 {\n\tid = \"abc\"\n\tseqno = 7\n\tstatus = [\"READ\", \"WRITE\"]\n\
                    \tflags = []\n\tpv0 { pe_start = 2048 # sectors\n }\n}\n\
                    # Generated by LVM2\ncontents = \"Text \\\"Format\\\"\"\nversion = 1\n";
        let root = parse(text).unwrap();
        let vg = root.section("vg0").unwrap();
        assert_eq!(vg.str("id"), Some("abc"));
        assert_eq!(vg.int("seqno"), Some(7));
        assert!(vg.has_flag("status", "WRITE"));
        assert_eq!(vg.list("flags"), Some(&[][..]));
        assert_eq!(vg.section("pv0").unwrap().int("pe_start"), Some(2048));
        assert_eq!(root.str("contents"), Some("Text \"Format\""));
        assert_eq!(root.sections().count(), 1);
    }

    #[test]
    fn truncated_and_malformed_text_are_errors() {
        for (text, expect) in [
            ("vg0 {\n id = \"abc", "string not closed"),
            ("vg0 {\n seqno = 1\n", "section not closed"),
            ("vg0 {\n seqno = \n}", "expected a string or a number"),
            ("vg0 {\n seqno 1\n}", "expected '='"),
            ("vg0 {\n l = [1, 2\n}", "expected ','"),
            ("}", "expected a name"),
            ("a = [\"x\" \"y\"]", "expected ','"),
        ] {
            let e = parse(text).unwrap_err().to_string();
            assert!(e.contains(expect), "{text:?}: {e}");
        }
    }

    #[test]
    fn deep_nesting_is_refused() {
        let text = "a {".repeat(10_000);
        let e = parse(&text).unwrap_err().to_string();
        assert!(e.contains("nested deeper"), "{e}");
    }
}
