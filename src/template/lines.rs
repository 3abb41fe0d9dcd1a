//! Line handling: line-ending normalization and the 998-octet line limit.

use super::{MAX_LINE, RowError};

/// CRLF, lone CR and LF all become LF.
pub(crate) fn normalize_to_lf(text: &str) -> String {
    text.replace("\r\n", "\n").replace('\r', "\n")
}

/// Appends `text` with CRLF line endings (CRLF, lone CR and LF become CRLF); makes sure `out`
/// ends with CRLF. The engine's body normalizer does the copying: line ends are found with
/// `memchr` and runs of well-formed lines are copied in one piece.
pub(crate) fn push_normalized(out: &mut Vec<u8>, text: &str) {
    crate::engine::body::normalize_into(text.as_bytes(), out);
    if !out.ends_with(b"\r\n") {
        out.extend_from_slice(b"\r\n");
    }
}

pub(crate) fn push_line(out: &mut Vec<u8>, line: &str) {
    out.extend_from_slice(line.as_bytes());
    out.extend_from_slice(b"\r\n");
}

/// [`check_line_lengths`] for a message whose every LF ends a CRLF (a composed message): jumps
/// from the last LF of one 1,000-octet window to the next with `memrchr`, so a long base64
/// attachment costs one search per window instead of one per line. On failure the exact line
/// is found by [`check_line_lengths`].
pub(crate) fn check_crlf_line_lengths(data: &[u8]) -> Result<(), RowError> {
    if !data.ends_with(b"\r\n") {
        return check_line_lengths(data);
    }
    let window = MAX_LINE + 2;
    let mut start = 0;
    while data.len() - start > window {
        match memchr::memrchr(b'\n', &data[start..start + window]) {
            Some(i) => start += i + 1,
            None => return check_line_lengths(data),
        }
    }
    Ok(())
}

pub(crate) fn check_line_lengths(data: &[u8]) -> Result<(), RowError> {
    // Lines end at CRLF only. Jumping from LF to LF with memchr (`str::find`) instead of
    // testing every byte: the message is UTF-8 (built from `str`s), the slow path is a guard.
    let Ok(text) = std::str::from_utf8(data) else {
        return check_line_lengths_bytewise(data);
    };
    let mut line = 0;
    let mut start = 0;
    let mut from = 0;
    while let Some(i) = text[from..].find('\n').map(|i| from + i) {
        from = i + 1;
        if i > 0 && data[i - 1] == b'\r' {
            line += 1;
            let length = i - 1 - start;
            if length > MAX_LINE {
                return Err(RowError::LineTooLong { line, length });
            }
            start = i + 1;
        }
    }
    Ok(())
}

pub(crate) fn check_line_lengths_bytewise(data: &[u8]) -> Result<(), RowError> {
    let mut line = 0;
    let mut start = 0;
    let mut i = 0;
    while i + 1 < data.len() {
        if data[i] == b'\r' && data[i + 1] == b'\n' {
            line += 1;
            let length = i - start;
            if length > MAX_LINE {
                return Err(RowError::LineTooLong { line, length });
            }
            i += 2;
            start = i;
        } else {
            i += 1;
        }
    }
    Ok(())
}

/// 1-based line and column (in characters) of byte `offset` in `text`.
pub(crate) fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    (line, before[line_start..].chars().count() + 1)
}
