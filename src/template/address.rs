//! Address lists: a scanner aware of quoted strings, comments and angle brackets, and the
//! finder of the From address.

use crate::engine::check_address;

/// The addr-spec of the first address in the `From:` header of a rendered message
/// (`Name <a@b>` or a bare `a@b`), if there is one and it is a valid address.
pub fn from_address_of(rendered: &[u8]) -> Option<String> {
    from_field_value(&String::from_utf8_lossy(rendered))
        .as_deref()
        .and_then(address_in)
}

/// The unfolded value of the first `From:` field of a header section (which ends at the
/// first empty line, if any).
pub(crate) fn from_field_value(text: &str) -> Option<String> {
    field_value(text, "from")
}

/// The unfolded value of the first header field called `name` (ASCII case-insensitive) in a
/// header section (`\n` or CRLF line ends; the section ends at the first empty line).
pub(crate) fn field_value(text: &str, name: &str) -> Option<String> {
    let mut value: Option<String> = None;
    for line in text.split('\n') {
        let line = line.strip_suffix('\r').unwrap_or(line);
        if line.is_empty() {
            break;
        }
        if line.starts_with([' ', '\t']) {
            if let Some(v) = value.as_mut() {
                v.push_str(line);
            }
            continue;
        }
        if value.is_some() {
            break;
        }
        if let Some((field, rest)) = line.split_once(':')
            && field.trim().eq_ignore_ascii_case(name)
        {
            value = Some(rest.to_owned());
        }
    }
    value
}

/// The addr-spec of the first mailbox of an address-list header value.
pub(crate) fn address_in(value: &str) -> Option<String> {
    let first = split_top_level(value, ',').into_iter().next()?;
    let addr = match find_top_level(first, '<') {
        Some(lt) => {
            let rest = &first[lt + 1..];
            let gt = rest.find('>')?;
            rest[..gt].trim().to_owned()
        }
        None => strip_comments(first).trim().to_owned(),
    };
    check_address(&addr).ok().map(|()| addr)
}

pub(crate) fn is_plain_domain(d: &str) -> bool {
    !d.is_empty()
        && d.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.')
}

/// The address of a static `From:` header in the template's header section.
pub(crate) fn static_from_address(src: &str) -> Option<String> {
    let value = from_field_value(src);
    let value = value?;
    if super::has_template_syntax(&value) {
        return None;
    }
    address_in(&value)
}

/// Removes `( … )` comments outside quoted strings.
pub(crate) fn strip_comments(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut depth = 0usize;
    let mut quoted = false;
    let mut escaped = false;
    for c in s.chars() {
        if escaped {
            escaped = false;
            if depth == 0 {
                out.push(c);
            }
            continue;
        }
        match c {
            '\\' => {
                escaped = true;
                if depth == 0 {
                    out.push(c);
                }
            }
            '"' if depth == 0 => {
                quoted = !quoted;
                out.push(c);
            }
            '(' if !quoted => depth += 1,
            ')' if !quoted && depth > 0 => depth -= 1,
            _ if depth == 0 => out.push(c),
            _ => {}
        }
    }
    out
}

/// Scans `s` tracking quoted strings, comments and angle brackets; calls `f(index, char)` for
/// every character at top level.
pub(crate) fn scan_top_level(s: &str, mut f: impl FnMut(usize, char) -> bool) {
    let mut quoted = false;
    let mut escaped = false;
    let mut comment = 0usize;
    let mut angle = false;
    for (i, c) in s.char_indices() {
        if escaped {
            escaped = false;
            continue;
        }
        if c == '\\' && (quoted || comment > 0) {
            escaped = true;
            continue;
        }
        if quoted {
            quoted = c != '"';
            continue;
        }
        if comment > 0 {
            match c {
                '(' => comment += 1,
                ')' => comment -= 1,
                _ => {}
            }
            continue;
        }
        if angle {
            angle = c != '>';
            continue;
        }
        if !f(i, c) {
            return;
        }
        match c {
            '"' => quoted = true,
            '(' => comment = 1,
            '<' => angle = true,
            _ => {}
        }
    }
}

pub(crate) fn split_top_level(s: &str, sep: char) -> Vec<&str> {
    let mut parts = Vec::new();
    let mut start = 0;
    scan_top_level(s, |i, c| {
        if c == sep {
            parts.push(&s[start..i]);
            start = i + c.len_utf8();
        }
        true
    });
    parts.push(&s[start..]);
    parts
}

pub(crate) fn find_top_level(s: &str, wanted: char) -> Option<usize> {
    let mut found = None;
    scan_top_level(s, |i, c| {
        if c == wanted {
            found = Some(i);
            false
        } else {
            true
        }
    });
    found
}

/// Every addr-spec of an address-list header value (`To`, `Cc`, `Bcc`): mailboxes
/// (`Name <a@b>`, `a@b`, with comments) and groups (`Team: a@b, c@d;`). Returns the first item
/// that holds no valid address as the error.
pub(crate) fn addr_specs(value: &str) -> Result<Vec<String>, String> {
    let mut out = Vec::new();
    for item in split_top_level(value, ',') {
        let mut item = item.trim();
        // A group: `display-name:` before the first mailbox, `;` after the last one.
        if let Some(colon) = find_top_level(item, ':') {
            item = item[colon + 1..].trim_start();
        }
        if let Some(semi) = find_top_level(item, ';') {
            item = item[..semi].trim_end();
        }
        if strip_comments(item).trim().is_empty() {
            continue;
        }
        let addr = match find_top_level(item, '<') {
            Some(lt) => {
                let rest = &item[lt + 1..];
                rest.find('>')
                    .map_or(rest, |gt| &rest[..gt])
                    .trim()
                    .to_owned()
            }
            None => strip_comments(item).trim().to_owned(),
        };
        match check_address(&addr) {
            Ok(()) => out.push(addr),
            Err(_) => return Err(item.to_owned()),
        }
    }
    Ok(out)
}
