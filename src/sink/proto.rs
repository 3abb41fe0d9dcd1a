//! Sans-IO pieces of the server side: command line framing, DATA body decoding and command
//! argument parsing.

/// Longest command line accepted, CRLF included (RFC 5321 §4.5.3.1.4 allows 512; the sink is
/// lenient up to 1000, the text line limit).
pub(crate) const MAX_LINE: usize = 1000;

/// Result of looking for a command line at the start of a buffer.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum LineScan {
    /// A complete line: its content is `buf[..len]` (without CR LF or bare LF) and the line with
    /// its terminator is `consumed` bytes long.
    Line { len: usize, consumed: usize },
    /// No line end within [`MAX_LINE`] bytes: the line is too long.
    TooLong,
    /// No line end yet.
    Incomplete,
}

/// Finds the first command line in `buf`. Lines end at LF (a CR before it is dropped).
pub(crate) fn scan_line(buf: &[u8]) -> LineScan {
    let window = &buf[..buf.len().min(MAX_LINE)];
    match window.iter().position(|&b| b == b'\n') {
        Some(i) => {
            let len = if i > 0 && buf[i - 1] == b'\r' {
                i - 1
            } else {
                i
            };
            LineScan::Line {
                len,
                consumed: i + 1,
            }
        }
        None if buf.len() >= MAX_LINE => LineScan::TooLong,
        None => LineScan::Incomplete,
    }
}

/// Bytes to discard of an over-long line: `(consumed, ended)`; `ended` when its LF was found.
pub(crate) fn skip_line(buf: &[u8]) -> (usize, bool) {
    match buf.iter().position(|&b| b == b'\n') {
        Some(i) => (i + 1, true),
        None => (buf.len(), false),
    }
}

/// Position of the first CR LF in `buf`.
fn find_crlf(buf: &[u8]) -> Option<usize> {
    let mut from = 0;
    while let Some(i) = buf[from..].iter().position(|&b| b == b'\n') {
        let at = from + i;
        if at > 0 && buf[at - 1] == b'\r' {
            return Some(at - 1);
        }
        from = at + 1;
    }
    None
}

/// Incremental decoder of a DATA body (RFC 5321 §4.5.2): removes the stuffed leading dot of
/// lines and stops at the `CRLF . CRLF` terminator. Lines are delimited by CR LF only; bare LF
/// and bare CR are content.
#[derive(Debug)]
pub(crate) struct DotDecoder {
    at_line_start: bool,
}

impl DotDecoder {
    /// A decoder positioned right after the `354` (which counts as a line start, so a lone `.`
    /// is an empty message).
    pub(crate) fn new() -> Self {
        Self {
            at_line_start: true,
        }
    }

    /// Decodes from `buf`, passing content to `out`. Returns `(consumed, done)`: `done` when the
    /// terminator was consumed. Unconsumed bytes (at most 2, a possible start of a terminator or
    /// of a CR LF) must be presented again with more input.
    pub(crate) fn feed(&mut self, buf: &[u8], mut out: impl FnMut(&[u8])) -> (usize, bool) {
        let mut i = 0;
        loop {
            if self.at_line_start {
                let rest = &buf[i..];
                if rest.is_empty() {
                    return (i, false);
                }
                if rest[0] == b'.' {
                    if rest.len() < 3 && b".\r\n".starts_with(rest) {
                        return (i, false);
                    }
                    if rest.starts_with(b".\r\n") {
                        return (i + 3, true);
                    }
                    // A stuffed dot: drop it, the rest of the line is content.
                    i += 1;
                }
                self.at_line_start = false;
            }
            let rest = &buf[i..];
            match find_crlf(rest) {
                Some(j) => {
                    out(&rest[..j + 2]);
                    i += j + 2;
                    self.at_line_start = true;
                }
                None => {
                    // Keep a trailing CR back: it may start the CR LF.
                    let n = rest.len() - usize::from(rest.last() == Some(&b'\r'));
                    if n > 0 {
                        out(&rest[..n]);
                    }
                    return (i + n, false);
                }
            }
        }
    }
}

/// The SMTP command verbs the server knows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verb {
    /// `EHLO`
    Ehlo,
    /// `HELO`
    Helo,
    /// `MAIL`
    Mail,
    /// `RCPT`
    Rcpt,
    /// `DATA`
    Data,
    /// `BDAT`
    Bdat,
    /// `RSET`
    Rset,
    /// `NOOP`
    Noop,
    /// `VRFY`
    Vrfy,
    /// `QUIT`
    Quit,
    /// `STARTTLS`
    StartTls,
    /// `AUTH`
    Auth,
    /// Anything else.
    Unknown,
}

impl Verb {
    /// Splits a command line into its verb (case-insensitive) and its argument text (leading
    /// and trailing blanks removed).
    pub fn split(line: &[u8]) -> (Self, &[u8]) {
        let end = line.iter().position(|&b| b == b' ').unwrap_or(line.len());
        let word = &line[..end];
        let verb = [
            (&b"EHLO"[..], Self::Ehlo),
            (b"HELO", Self::Helo),
            (b"MAIL", Self::Mail),
            (b"RCPT", Self::Rcpt),
            (b"DATA", Self::Data),
            (b"BDAT", Self::Bdat),
            (b"RSET", Self::Rset),
            (b"NOOP", Self::Noop),
            (b"VRFY", Self::Vrfy),
            (b"QUIT", Self::Quit),
            (b"STARTTLS", Self::StartTls),
            (b"AUTH", Self::Auth),
        ]
        .into_iter()
        .find_map(|(name, v)| word.eq_ignore_ascii_case(name).then_some(v))
        .unwrap_or(Self::Unknown);
        (verb, trim(&line[end..]))
    }
}

/// Splits a command line into its upper-cased verb and its argument text (leading and trailing
/// blanks removed).
pub(crate) fn split_verb(line: &[u8]) -> (String, &[u8]) {
    let end = line.iter().position(|&b| b == b' ').unwrap_or(line.len());
    let verb = String::from_utf8_lossy(&line[..end]).to_ascii_uppercase();
    (verb, trim(&line[end..]))
}

/// `s` without leading and trailing spaces and tabs.
pub(crate) fn trim(s: &[u8]) -> &[u8] {
    let start = s
        .iter()
        .position(|&b| b != b' ' && b != b'\t')
        .unwrap_or(s.len());
    let end = s
        .iter()
        .rposition(|&b| b != b' ' && b != b'\t')
        .map_or(start, |i| i + 1);
    &s[start..end.max(start)]
}

/// Why a MAIL/RCPT argument could not be parsed.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum PathError {
    /// Not `FROM:<...>` / `TO:<...>`.
    Syntax,
}

/// Parses `FROM:<addr> params` (with `keyword` = `FROM:`) or `TO:<addr> params`. Returns the
/// address without angle brackets or source route, and the parameters.
pub(crate) fn parse_path<'a>(
    args: &'a [u8],
    keyword: &str,
) -> Result<(String, Vec<&'a str>), PathError> {
    let k = keyword.len();
    if args.len() < k || !args[..k].eq_ignore_ascii_case(keyword.as_bytes()) {
        return Err(PathError::Syntax);
    }
    let rest = trim(&args[k..]);
    let rest = std::str::from_utf8(rest).map_err(|_| PathError::Syntax)?;
    let inner_and_more = rest.strip_prefix('<').ok_or(PathError::Syntax)?;
    // Find the closing '>' outside a quoted string.
    let mut in_quote = false;
    let mut escaped = false;
    let mut close = None;
    for (i, c) in inner_and_more.char_indices() {
        if escaped {
            escaped = false;
        } else if c == '\\' && in_quote {
            escaped = true;
        } else if c == '"' {
            in_quote = !in_quote;
        } else if c == '>' && !in_quote {
            close = Some(i);
            break;
        }
    }
    let close = close.ok_or(PathError::Syntax)?;
    let mut addr = &inner_and_more[..close];
    let params_text = &inner_and_more[close + 1..];
    if !params_text.is_empty() && !params_text.starts_with(' ') {
        return Err(PathError::Syntax);
    }
    // Drop an obsolete source route: "@a,@b:user@c".
    if addr.starts_with('@') {
        match addr.find(':') {
            Some(colon) => addr = &addr[colon + 1..],
            None => return Err(PathError::Syntax),
        }
    }
    if addr.chars().any(|c| c.is_control() || c == ' ') && !addr.starts_with('"') {
        return Err(PathError::Syntax);
    }
    if addr.chars().any(|c| c == '\r' || c == '\n' || c == '\0') {
        return Err(PathError::Syntax);
    }
    let params = params_text.split(' ').filter(|p| !p.is_empty()).collect();
    Ok((addr.to_string(), params))
}

/// Parses `BDAT <size> [LAST]`'s arguments.
pub(crate) fn parse_bdat(args: &[u8]) -> Option<(u64, bool)> {
    let text = std::str::from_utf8(args).ok()?;
    let mut words = text.split(' ').filter(|w| !w.is_empty());
    let size_text = words.next()?;
    if !size_text.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let size: u64 = size_text.parse().ok()?;
    let last = match words.next() {
        None => false,
        Some(w) if w.eq_ignore_ascii_case("LAST") => true,
        Some(_) => return None,
    };
    if words.next().is_some() {
        return None;
    }
    Some((size, last))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode_all(input: &[u8], split_every: usize) -> (Vec<u8>, usize, bool) {
        // Feed `input` in pieces of `split_every` bytes, re-presenting unconsumed bytes.
        let mut dec = DotDecoder::new();
        let mut out = Vec::new();
        let mut pending: Vec<u8> = Vec::new();
        let mut total = 0;
        for piece in input.chunks(split_every.max(1)) {
            pending.extend_from_slice(piece);
            let (n, done) = dec.feed(&pending, |b| out.extend_from_slice(b));
            total += n;
            pending.drain(..n);
            if done {
                return (out, total, true);
            }
        }
        (out, total, false)
    }

    #[test]
    fn dot_decoding_at_every_split() {
        let wire =
            b"Subject: t\r\n\r\n..leading dot\r\n...two\r\n.\r\nx\nbare lf\r\nlast\r\n.\r\nAFTER";
        // The ".\r\n" on its own line after "...two" ends the body; the rest is not body.
        let end = wire
            .windows(5)
            .position(|w| w == b"\r\n.\r\n")
            .expect("terminator")
            + 5;
        for split in 1..wire.len() {
            let (out, consumed, done) = decode_all(wire, split);
            assert!(done, "split {split}");
            assert_eq!(consumed, end, "split {split}");
            assert_eq!(
                out, b"Subject: t\r\n\r\n.leading dot\r\n..two\r\n",
                "split {split}"
            );
        }
    }

    #[test]
    fn empty_message_and_edge_lines() {
        assert_eq!(decode_all(b".\r\n", 1), (Vec::new(), 3, true));
        assert_eq!(decode_all(b"..\r\n.\r\n", 2), (b".\r\n".to_vec(), 7, true));
        // "." followed by other characters is a stuffed line, not the end.
        assert_eq!(decode_all(b".x\r\n.\r\n", 1), (b"x\r\n".to_vec(), 7, true));
        assert_eq!(
            decode_all(b".\rx\r\n.\r\n", 1),
            (b"\rx\r\n".to_vec(), 8, true)
        );
        // A dot after a bare LF is not at a line start.
        assert_eq!(
            decode_all(b"a\n.\r\n.\r\n", 3),
            (b"a\n.\r\n".to_vec(), 8, true)
        );
        // Bare CR LF sequences in the middle.
        assert_eq!(
            decode_all(b"a\r\rb\r\n.\r\n", 1),
            (b"a\r\rb\r\n".to_vec(), 9, true)
        );
        // Not finished.
        assert!(!decode_all(b"abc\r\n.\r", 1).2);
    }

    #[test]
    fn line_scanning() {
        assert_eq!(
            scan_line(b"NOOP\r\nX"),
            LineScan::Line {
                len: 4,
                consumed: 6
            }
        );
        assert_eq!(
            scan_line(b"NOOP\nX"),
            LineScan::Line {
                len: 4,
                consumed: 5
            }
        );
        assert_eq!(scan_line(b"NOOP\r"), LineScan::Incomplete);
        let mut ok = vec![b'a'; MAX_LINE - 2];
        ok.extend_from_slice(b"\r\n");
        assert_eq!(
            scan_line(&ok),
            LineScan::Line {
                len: MAX_LINE - 2,
                consumed: MAX_LINE
            }
        );
        let mut long = vec![b'a'; MAX_LINE - 1];
        long.extend_from_slice(b"\r\n");
        assert_eq!(scan_line(&long), LineScan::TooLong);
        assert_eq!(skip_line(b"abc\r\nNOOP"), (5, true));
        assert_eq!(skip_line(b"abc"), (3, false));
    }

    #[test]
    fn verbs_and_paths() {
        let (verb, args) = split_verb(b"mail FROM:<a@b.example> SIZE=10  BODY=8BITMIME ");
        assert_eq!(verb, "MAIL");
        let (addr, params) = parse_path(args, "FROM:").expect("path");
        assert_eq!(addr, "a@b.example");
        assert_eq!(params, vec!["SIZE=10", "BODY=8BITMIME"]);
        assert_eq!(
            parse_path(b"from: <>", "FROM:"),
            Ok((String::new(), vec![]))
        );
        assert_eq!(
            parse_path(b"TO:<@r1,@r2:u@d.example>", "TO:"),
            Ok(("u@d.example".to_string(), vec![]))
        );
        assert_eq!(
            parse_path(b"TO:<\"a>b\"@d.example>", "TO:"),
            Ok(("\"a>b\"@d.example".to_string(), vec![]))
        );
        assert_eq!(parse_path(b"TO:u@d", "TO:"), Err(PathError::Syntax));
        assert_eq!(parse_path(b"TO:<u@d", "TO:"), Err(PathError::Syntax));
        assert_eq!(parse_path(b"TO:<u@d>x", "TO:"), Err(PathError::Syntax));
        assert_eq!(parse_path(b"FROM:<u@d>", "TO:"), Err(PathError::Syntax));
        let (verb, args) = split_verb(b"QUIT");
        assert_eq!((verb.as_str(), args), ("QUIT", &b""[..]));
    }

    #[test]
    fn bdat_arguments() {
        assert_eq!(parse_bdat(b"100"), Some((100, false)));
        assert_eq!(parse_bdat(b"0 LAST"), Some((0, true)));
        assert_eq!(parse_bdat(b"7 last"), Some((7, true)));
        assert_eq!(parse_bdat(b""), None);
        assert_eq!(parse_bdat(b"-1"), None);
        assert_eq!(parse_bdat(b"+1"), None);
        assert_eq!(parse_bdat(b"1 LAST x"), None);
        assert_eq!(parse_bdat(b"1 FIRST"), None);
        assert_eq!(parse_bdat(b"99999999999999999999999"), None);
    }
}
