//! Inert text: one printable-text rule for everything shown to a human, and the CSV formula
//! guard for spreadsheet-bound cells.
//!
//! # Printable text
//!
//! [`printable`] (bytes) and [`printable_str`] (`&str`) return text that cannot move a
//! terminal's cursor, change its colours, retitle its window, break a log line or reorder
//! what is shown around it. Each character below becomes a visible escape; everything else
//! is kept as it is:
//!
//! | input | shown as |
//! | --- | --- |
//! | TAB, LF, CR | `\t`, `\n`, `\r` |
//! | other C0 controls (U+0000–U+001F, ESC included) and DEL (U+007F) | `\xNN`, e.g. `\x1b`, `\x00`, `\x7f` |
//! | C1 controls (U+0080–U+009F) | `\u{NN}`, e.g. `\u{9b}` |
//! | bidirectional controls (U+061C, U+200E, U+200F, U+202A–U+202E, U+2066–U+2069) and the line/paragraph separators U+2028, U+2029 | `\u{NNNN}`, e.g. `\u{202e}` |
//! | a byte that is not part of valid UTF-8 | `\xNN`, e.g. `\xff` |
//!
//! An escape sequence such as `ESC [ 3 1 m` is shown as `\x1b[31m`: its first byte is
//! escaped, the rest is ordinary text. A backslash is *not* escaped, so the rule is
//! idempotent: text that already went through it (for example a report cell written by
//! pipemail and read back) is shown unchanged rather than with doubled backslashes. The
//! price is that `\n` typed literally by a server and a real line feed look the same;
//! nothing is hidden either way.
//!
//! Text that needs no escape is returned borrowed, without allocating; for ASCII input that
//! check is one pass over the bytes.
//!
//! # CSV formula guard
//!
//! A spreadsheet opening a CSV file treats a cell starting with `=`, `+`, `-`, `@`, TAB or CR
//! as a formula (OWASP "CSV injection"). [`guard_cell`] prefixes such a cell with `'`, which
//! spreadsheets show as nothing and which makes the cell plain text. To make the guard
//! reversible, a cell that itself starts with `'` gets one more `'` in front. [`unguard_cell`]
//! removes exactly one leading `'`, if there is one. So, for every string `s`,
//! `unguard_cell(&guard_cell(s)) == s`:
//!
//! | original cell | written | read back |
//! | --- | --- | --- |
//! | `=1+1` | `'=1+1` | `=1+1` |
//! | `-foo@example.com` | `'-foo@example.com` | `-foo@example.com` |
//! | `'quoted` | `''quoted` | `'quoted` |
//! | `250 Ok` | `250 Ok` | `250 Ok` |
//!
//! Writers guard every cell of a CSV report and readers unguard every cell (JSON and JSON
//! Lines are not guarded: no spreadsheet evaluates them). A report written before the guard
//! existed reads back the same, except a cell that starts with `'` loses that first quote.

use std::borrow::Cow;
use std::fmt::Write as _;

/// True for a character [`printable`] escapes.
fn needs_escape(c: char) -> bool {
    matches!(
        c,
        '\u{0}'..='\u{1f}'
            | '\u{7f}'..='\u{9f}'
            | '\u{61c}'
            | '\u{200e}'
            | '\u{200f}'
            | '\u{2028}'..='\u{202e}'
            | '\u{2066}'..='\u{2069}'
    )
}

fn push_escaped(out: &mut String, c: char) {
    match c {
        '\t' => out.push_str("\\t"),
        '\n' => out.push_str("\\n"),
        '\r' => out.push_str("\\r"),
        '\u{0}'..='\u{1f}' | '\u{7f}' => {
            let _ = write!(out, "\\x{:02x}", u32::from(c));
        }
        c if needs_escape(c) => {
            let _ = write!(out, "\\u{{{:x}}}", u32::from(c));
        }
        c => out.push(c),
    }
}

fn push_printable_str(out: &mut String, s: &str) {
    for c in s.chars() {
        push_escaped(out, c);
    }
}

/// `s` with every control character shown as a visible escape (see the module
/// documentation); borrowed when nothing needs escaping.
pub fn printable_str(s: &str) -> Cow<'_, str> {
    let clean = if s.is_ascii() {
        s.bytes().all(|b| (0x20..0x7f).contains(&b))
    } else {
        !s.chars().any(needs_escape)
    };
    if clean {
        return Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len() + 8);
    push_printable_str(&mut out, s);
    Cow::Owned(out)
}

/// `bytes` as printable text: control characters escaped as by [`printable_str`], each byte
/// that is not valid UTF-8 shown as `\xNN`. Borrowed when the bytes are valid UTF-8 with
/// nothing to escape.
pub fn printable(bytes: &[u8]) -> Cow<'_, str> {
    if bytes.iter().all(|b| (0x20..0x7f).contains(b)) {
        // All printable ASCII: valid UTF-8 with nothing to escape.
        if let Ok(s) = std::str::from_utf8(bytes) {
            return Cow::Borrowed(s);
        }
    }
    if let Ok(s) = std::str::from_utf8(bytes) {
        return printable_str(s);
    }
    let mut out = String::with_capacity(bytes.len() + 16);
    for chunk in bytes.utf8_chunks() {
        push_printable_str(&mut out, chunk.valid());
        for b in chunk.invalid() {
            let _ = write!(out, "\\x{b:02x}");
        }
    }
    Cow::Owned(out)
}

/// The first characters that make a spreadsheet evaluate a CSV cell (OWASP), plus `'`, which
/// is guarded too so that [`unguard_cell`] can tell a guard from an original quote.
const GUARDED_FIRST: [char; 7] = ['=', '+', '-', '@', '\t', '\r', '\''];

/// True when a CSV cell starting like `cell` gets a guard `'` (see the module documentation).
pub fn needs_guard(cell: &str) -> bool {
    cell.starts_with(GUARDED_FIRST)
}

/// A CSV cell safe to open in a spreadsheet: `'` + `cell` when `cell` starts with `=`, `+`,
/// `-`, `@`, TAB, CR or `'`; `cell` itself (borrowed) otherwise.
pub fn guard_cell(cell: &str) -> Cow<'_, str> {
    if needs_guard(cell) {
        let mut out = String::with_capacity(cell.len() + 1);
        out.push('\'');
        out.push_str(cell);
        Cow::Owned(out)
    } else {
        Cow::Borrowed(cell)
    }
}

/// The original text of a cell written by [`guard_cell`]: one leading `'` removed.
pub fn unguard_cell(cell: &str) -> &str {
    cell.strip_prefix('\'').unwrap_or(cell)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes() {
        assert!(matches!(printable(b"250 2.0.0 Ok"), Cow::Borrowed(_)));
        assert!(matches!(printable_str("Grüße, 東京"), Cow::Borrowed(_)));
        assert_eq!(
            printable(b"a\x1b[31mred\r\n\tx\x00\x7f"),
            "a\\x1b[31mred\\r\\n\\tx\\x00\\x7f"
        );
        assert_eq!(printable(b"caf\xc3\xa9 \xff\xfe ok"), "café \\xff\\xfe ok");
        assert_eq!(printable("x\u{9b}31m".as_bytes()), "x\\u{9b}31m");
        assert_eq!(printable_str("abc\u{202e}cba"), "abc\\u{202e}cba");
        assert_eq!(printable_str("a\u{2028}b"), "a\\u{2028}b");
        assert_eq!(printable(b"\xc3"), "\\xc3", "cut-short sequence");
        assert_eq!(printable_str("C:\\dir\\n"), "C:\\dir\\n", "backslash kept");
        let once = printable(b"\x1b]0;title\x07");
        assert_eq!(printable_str(&once), once, "idempotent");
    }

    #[test]
    fn guard() {
        for (cell, written) in [
            ("=1+1", "'=1+1"),
            ("+1", "'+1"),
            ("-foo@example.com", "'-foo@example.com"),
            ("@SUM(A1)", "'@SUM(A1)"),
            ("\tx", "'\tx"),
            ("\rx", "'\rx"),
            ("'quoted", "''quoted"),
            ("250 Ok", "250 Ok"),
            ("", ""),
            (" =1", " =1"),
        ] {
            assert_eq!(guard_cell(cell), written);
            assert_eq!(unguard_cell(written), cell);
        }
        assert!(matches!(guard_cell("plain"), Cow::Borrowed(_)));
    }
}
