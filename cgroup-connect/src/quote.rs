//! How messages and event lines show text that came from outside: a rule or list line, a
//! flag's value, a path, a process name. Owns the two guards every such text passes through:
//! a quoted value is cut to [`MAX_CHARS`] characters (a 10 MB line must not make a 20 MB
//! message, nor show more than its start of a file that was never meant to be rules), and
//! control characters are escaped (a process name must not forge lines or colour a terminal).
use std::{fmt, path::Path};

/// The most characters of one value a message shows; the rest is replaced by a marker.
pub const MAX_CHARS: usize = 100;

/// `text` cut to [`MAX_CHARS`] characters, and whether anything was cut.
fn head(text: &str) -> (&str, bool) {
    match text.char_indices().nth(MAX_CHARS) {
        Some((end, _)) => (&text[..end], true),
        None => (text, false),
    }
}

/// Writes the marker that follows a cut value: how long the whole value was.
fn write_cut(f: &mut fmt::Formatter<'_>, text: &str) -> fmt::Result {
    write!(f, "… ({} bytes)", text.len())
}

/// A value as an error message quotes it: in double quotes with Rust's escapes (as `{:?}`
/// shows a string), cut to [`MAX_CHARS`] characters followed by `… (N bytes)`.
pub struct Quoted<'a>(pub &'a str);

impl fmt::Display for Quoted<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (head, cut) = head(self.0);
        write!(f, "{head:?}")?;
        if cut { write_cut(f, self.0) } else { Ok(()) }
    }
}

/// Text that holds a value, such as a parser's message, shown as it is but cut like
/// [`Quoted`].
pub struct Cut<'a>(pub &'a str);

impl fmt::Display for Cut<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (head, cut) = head(self.0);
        f.write_str(head)?;
        if cut { write_cut(f, self.0) } else { Ok(()) }
    }
}

/// A path as an error message names it: as `Path::display` shows it, cut like [`Quoted`].
pub struct ShortPath<'a>(pub &'a Path);

impl fmt::Display for ShortPath<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        Cut(&self.0.to_string_lossy()).fmt(f)
    }
}

/// Text shown as it is, except that a backslash becomes `\\` and a control character its
/// escape (`\n`, `\t`, `\r`, `\x1b`, `\u{85}`), so the text stays on one line and cannot
/// drive a terminal.
pub struct Escaped<'a>(pub &'a str);

impl fmt::Display for Escaped<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for c in self.0.chars() {
            match c {
                '\\' => f.write_str("\\\\")?,
                '\n' => f.write_str("\\n")?,
                '\t' => f.write_str("\\t")?,
                '\r' => f.write_str("\\r")?,
                c if c.is_ascii_control() => write!(f, "\\x{:02x}", u32::from(c))?,
                c if c.is_control() => write!(f, "\\u{{{:x}}}", u32::from(c))?,
                c => write!(f, "{c}")?,
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_values_show_as_debug_does() {
        for s in ["blok", "10.0.0.300", "", "tab\there", "quote\"d", "é ü"] {
            assert_eq!(Quoted(s).to_string(), format!("{s:?}"));
        }
        assert_eq!(ShortPath(Path::new("/etc/x.toml")).to_string(), "/etc/x.toml");
        let exactly = "a".repeat(MAX_CHARS);
        assert_eq!(Quoted(&exactly).to_string(), format!("{exactly:?}"));
    }

    #[test]
    fn long_values_are_cut_with_a_marker() {
        let long = "x".repeat(10 << 20);
        let shown = Quoted(&long).to_string();
        assert_eq!(shown, format!("\"{}\"… ({} bytes)", "x".repeat(MAX_CHARS), 10 << 20));
        // Characters, not bytes: a cut never splits one.
        let wide = "é".repeat(MAX_CHARS + 1);
        assert_eq!(Quoted(&wide).to_string(), format!("{:?}… (202 bytes)", "é".repeat(100)));
        let path = format!("/tmp/{}", "d/".repeat(200));
        let shown = ShortPath(Path::new(&path)).to_string();
        assert!(shown.starts_with("/tmp/d/d/") && shown.ends_with("… (405 bytes)"), "{shown}");
        assert_eq!(shown.chars().count(), MAX_CHARS + "… (405 bytes)".chars().count());
    }

    #[test]
    fn control_characters_are_escaped() {
        assert_eq!(Escaped("curl").to_string(), "curl");
        assert_eq!(Escaped("x\n\x1b[31mFAKE").to_string(), "x\\n\\x1b[31mFAKE");
        assert_eq!(Escaped("a\\nb\t\r\x7f\u{85}é").to_string(), "a\\\\nb\\t\\r\\x7f\\u{85}é");
        let shown = Escaped("\x00\x01\x1f\u{9b}").to_string();
        assert!(!shown.chars().any(char::is_control), "{shown:?}");
    }
}
