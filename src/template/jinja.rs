//! Mapping minijinja errors to template positions.

use super::TemplateError;
use super::lines::line_col;

pub(crate) fn jinja_error(
    e: minijinja::Error,
    src: &str,
    line_offset: usize,
    file: &str,
) -> TemplateError {
    let (line, column) = match e.range() {
        Some(r) if r.start <= src.len() && src.is_char_boundary(r.start) => line_col(src, r.start),
        _ => (e.line().unwrap_or(1), 1),
    };
    let line = line + line_offset;
    let detail = e.detail().unwrap_or_default();
    if let Some(statement) = detail.strip_prefix("unknown statement ") {
        return TemplateError::Unsupported {
            file: file.to_owned(),
            line,
            column,
            statement: statement.trim().to_owned(),
        };
    }
    TemplateError::Syntax {
        file: file.to_owned(),
        line,
        column,
        message: if detail.is_empty() {
            e.kind().to_string()
        } else {
            format!("{}: {detail}", e.kind())
        },
    }
}

/// Line and column of the first use of variable `name` inside a `{{ }}` or `{% %}` tag.
pub(crate) fn find_variable(src: &str, name: &str) -> (usize, usize) {
    let mut pos = 0;
    while let Some(open) = src[pos..].find(['{']).map(|i| i + pos) {
        let rest = &src[open..];
        let close = if rest.starts_with("{{") {
            "}}"
        } else if rest.starts_with("{%") {
            "%}"
        } else {
            pos = open + 1;
            continue;
        };
        let end = rest[2..].find(close).map_or(src.len(), |i| open + 2 + i);
        let inner = &src[open + 2..end];
        let mut quote: Option<char> = None;
        let mut prev: char = ' ';
        let mut iter = inner.char_indices().peekable();
        while let Some((i, c)) = iter.next() {
            match quote {
                Some(q) if c == q && prev != '\\' => quote = None,
                Some(_) => {}
                None if c == '"' || c == '\'' => quote = Some(c),
                None if (c.is_ascii_alphabetic() || c == '_')
                    && !(prev.is_ascii_alphanumeric() || prev == '_' || prev == '.') =>
                {
                    let mut j = i + c.len_utf8();
                    while let Some(&(k, d)) = iter.peek() {
                        if d.is_ascii_alphanumeric() || d == '_' {
                            j = k + d.len_utf8();
                            iter.next();
                        } else {
                            break;
                        }
                    }
                    if &inner[i..j] == name {
                        return line_col(src, open + 2 + i);
                    }
                    prev = 'a';
                    continue;
                }
                None => {}
            }
            prev = c;
        }
        pos = end.max(open + 1);
    }
    (1, 1)
}
