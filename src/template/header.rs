//! Header values: injection-safe rendering rules, RFC 2047 encoded-words and folding
//! (RFC 5322 §2.2.3), and the checks of a template's header section.

use base64::Engine as _;

use super::address::{find_top_level, split_top_level};
use crate::engine::check_address;

/// Longest RFC 2047 encoded-word (RFC 2047 §2).
pub(crate) const MAX_ENCODED_WORD: usize = 75;

/// Line length folding aims for (RFC 5322 §2.1.1 "SHOULD").
pub(crate) const FOLD_AT: usize = 78;

/// Address header fields: only their display names are RFC 2047-encoded.
pub(crate) const ADDRESS_FIELDS: &[&str] = &[
    "from",
    "to",
    "cc",
    "bcc",
    "reply-to",
    "sender",
    "resent-from",
    "resent-to",
    "resent-cc",
    "resent-bcc",
    "resent-sender",
];

pub(crate) fn needs_sanitizing(c: char) -> bool {
    c.is_control() && c != '\t'
}

/// Strips `{% … %}` and `{# … #}` tags from the start of a header line. Errors if one does not
/// close on the line.
pub(crate) fn strip_leading_tags(line: &str) -> Result<&str, String> {
    let mut rest = line;
    loop {
        let close = if rest.starts_with("{%") {
            "%}"
        } else if rest.starts_with("{#") {
            "#}"
        } else {
            return Ok(rest);
        };
        match rest[2..].find(close) {
            Some(i) => rest = &rest[2 + i + 2..],
            None => {
                return Err(format!(
                    "a tag at the start of a header line must end on that line (with {close})"
                ));
            }
        }
    }
}

/// Checks the header section of a template and returns its field names.
pub(crate) fn check_header_source(src: &str) -> Result<Vec<String>, (usize, String)> {
    let mut names = Vec::new();
    for (i, line) in src.split('\n').enumerate() {
        let lineno = i + 1;
        let rest = strip_leading_tags(line).map_err(|m| (lineno, m))?;
        if rest.is_empty() {
            continue;
        }
        if rest.starts_with([' ', '\t']) {
            if names.is_empty() {
                return Err((
                    lineno,
                    "a folded continuation line (starting with white space) must follow a \
                     header line"
                        .to_owned(),
                ));
            }
            continue;
        }
        let name = rest.split_once(':').map(|(n, _)| n);
        match name {
            Some(n) if is_field_name(n) => names.push(n.to_owned()),
            _ => {
                return Err((
                    lineno,
                    format!(
                        "not a header line: {:?}; header lines look like \"Name: value\", and a \
                         blank line must separate the headers from the body",
                        truncate(line, 60)
                    ),
                ));
            }
        }
    }
    Ok(names)
}

/// A header field name: printable ASCII except ':' (RFC 5322 §2.2), and no braces (so no
/// template tag can form part of it).
pub(crate) fn is_field_name(n: &str) -> bool {
    !n.is_empty()
        && n.bytes()
            .all(|b| b.is_ascii_graphic() && b != b':' && b != b'{' && b != b'}')
}

pub(crate) fn truncate(s: &str, max: usize) -> String {
    if s.chars().count() <= max {
        s.to_owned()
    } else {
        let mut t: String = s.chars().take(max).collect();
        t.push('…');
        t
    }
}

/// One field of a rendered header section.
#[derive(Debug)]
pub(crate) struct Field<'a> {
    /// The field name as written in the template.
    pub(crate) name: &'a str,
    /// The field's lines: the first holds `name:`, the others start with white space.
    pub(crate) lines: Vec<&'a str>,
}

impl Field<'_> {
    /// The value with folding removed (RFC 5322 §2.2.3), without the name and colon.
    pub(crate) fn unfolded_value(&self) -> String {
        let mut v = String::new();
        for (i, line) in self.lines.iter().enumerate() {
            if i == 0 {
                v.push_str(&line[self.name.len() + 1..]);
            } else {
                v.push_str(line);
            }
        }
        v
    }
}

/// `text.split(['\n', '\r'])`, with the line ends found by `memchr2`.
pub(crate) fn split_lf_cr(text: &str) -> impl Iterator<Item = &str> {
    let mut rest = Some(text);
    std::iter::from_fn(move || {
        let r = rest?;
        match memchr::memchr2(b'\n', b'\r', r.as_bytes()) {
            Some(i) => {
                rest = Some(&r[i + 1..]);
                Some(&r[..i])
            }
            None => {
                rest = None;
                Some(r)
            }
        }
    })
}

/// Re-encodes a non-ASCII field with RFC 2047 encoded-words and folds it.
pub(crate) fn encode_field(field: &Field<'_>) -> Vec<String> {
    let value = field.unfolded_value();
    let lower = field.name.to_ascii_lowercase();
    let tokens = if ADDRESS_FIELDS.contains(&lower.as_str()) {
        encode_address_list(&value)
    } else {
        // Size the first word to fit on the line with "Name: ".
        let room = FOLD_AT.saturating_sub(field.name.len() + 2);
        encode_words(value.trim(), room)
    };
    fold(field.name, &tokens)
}

/// Folds `name:` followed by `tokens` (separated by single spaces) into lines of about
/// [`FOLD_AT`] characters.
pub(crate) fn fold(name: &str, tokens: &[String]) -> Vec<String> {
    let mut lines = Vec::new();
    let mut cur = format!("{name}:");
    let mut has_token = false;
    for tok in tokens {
        if has_token && cur.len() + 1 + tok.len() > FOLD_AT {
            lines.push(std::mem::take(&mut cur));
        }
        cur.push(' ');
        cur.push_str(tok);
        has_token = true;
    }
    lines.push(cur);
    lines
}

/// RFC 2047 B-encoded words for `text`, each at most 75 characters (the first one at most
/// `first_room`, but always room for at least one character), split at character boundaries.
pub(crate) fn encode_words(text: &str, first_room: usize) -> Vec<String> {
    // "=?UTF-8?B?" + base64 + "?=": 12 characters of overhead; 45 bytes -> 60 characters.
    let chunk_for = |room: usize| (room.min(MAX_ENCODED_WORD).saturating_sub(12) / 4 * 3).max(4);
    let mut words = Vec::new();
    let mut start = 0;
    while start < text.len() {
        let room = if words.is_empty() {
            first_room
        } else {
            MAX_ENCODED_WORD
        };
        let mut end = (start + chunk_for(room)).min(text.len());
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        let mut word = String::from("=?UTF-8?B?");
        base64::engine::general_purpose::STANDARD.encode_string(&text[start..end], &mut word);
        word.push_str("?=");
        words.push(word);
        start = end;
    }
    words
}

/// Encodes the display names of an address list; addresses are kept as they are.
pub(crate) fn encode_address_list(value: &str) -> Vec<String> {
    let items: Vec<&str> = split_top_level(value, ',')
        .into_iter()
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .collect();
    let mut tokens = Vec::new();
    for (n, item) in items.iter().enumerate() {
        let before = tokens.len();
        // `phrase <addr>`: the last `<` of an item that ends with a valid `<addr>` (so a `<`
        // inside an unquoted phrase stays in the phrase); otherwise the first top-level `<`,
        // and with unbalanced quotes or parentheses in the phrase, the last `<`.
        let last = item
            .ends_with('>')
            .then(|| item.rfind('<'))
            .flatten()
            .filter(|&lt| check_address(item[lt + 1..item.len() - 1].trim()).is_ok());
        let angle = last
            .or_else(|| find_top_level(item, '<'))
            .or_else(|| item.ends_with('>').then(|| item.rfind('<')).flatten());
        match angle {
            Some(lt) => {
                let phrase = item[..lt].trim();
                if !phrase.is_ascii() {
                    tokens.extend(encode_words(&phrase_text(phrase), MAX_ENCODED_WORD));
                } else if !phrase.is_empty() {
                    tokens.push(phrase.to_owned());
                }
                tokens.push(item[lt..].trim().to_owned());
            }
            // A display name with no address at all: encode it. A bare non-ASCII address is
            // kept (it needs SMTPUTF8).
            None if !item.is_ascii() && !item.contains('@') => {
                tokens.extend(encode_words(&phrase_text(item), MAX_ENCODED_WORD));
            }
            None => tokens.push((*item).to_owned()),
        }
        if n + 1 < items.len()
            && tokens.len() > before
            && let Some(last) = tokens.last_mut()
        {
            last.push(',');
        }
    }
    tokens
}

/// The text of a phrase: quote marks removed, backslash escapes inside quotes resolved.
pub(crate) fn phrase_text(phrase: &str) -> String {
    let mut out = String::with_capacity(phrase.len());
    let mut quoted = false;
    let mut escaped = false;
    for c in phrase.chars() {
        if escaped {
            out.push(c);
            escaped = false;
        } else if quoted && c == '\\' {
            escaped = true;
        } else if c == '"' {
            quoted = !quoted;
        } else {
            out.push(c);
        }
    }
    out
}
