//! Resumable SMTP reply parser (RFC 5321 §4.2) with RFC 3463 enhanced status codes.
//!
//! Bytes go in as they arrive from the socket, split anywhere; complete replies come out. The
//! parser keeps only the unfinished line and the lines of the unfinished reply, so several
//! replies in one read and one reply spread over many reads both work. A line longer than
//! [`MAX_LINE`] octets or a line that is not `ddd[ -]text` is a [`ProtocolError`].

use std::fmt;

use super::command::Verb;

/// Longest reply line accepted, CRLF included (RFC 5321 §4.5.3.1.5 says 512).
pub const MAX_LINE: usize = 512;
/// Most lines one reply may have before it is treated as an attack.
pub const MAX_LINES: usize = 256;

/// The server broke the protocol.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProtocolError {
    /// A reply line longer than 512 octets.
    #[error("server sent a reply line longer than 512 octets")]
    LineTooLong,
    /// A line that is not `ddd[ -]text`, or a multi-line reply whose codes differ.
    #[error("malformed reply: {0}")]
    Malformed(String),
    /// A reply arrived while no command was waiting for one.
    #[error("server sent a reply to a command that was never sent: {0}")]
    UnexpectedReply(String),
    /// Bytes followed the `220` to STARTTLS before the TLS handshake (CVE-2011-0411).
    #[error(
        "server sent data after its 220 reply to STARTTLS, before the TLS handshake (response injection)"
    )]
    StartTlsInjection,
    /// A reply code that makes no sense for the command (e.g. 354 to RCPT).
    #[error("unexpected reply to {verb}: {reply}")]
    UnexpectedCode {
        /// The command it answered.
        verb: Verb,
        /// What the server said.
        reply: Reply,
    },
}

/// Reply class by first digit (RFC 5321 §4.2.1), classified by type, never by string.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Severity {
    /// 2yz: the command succeeded.
    Positive,
    /// 3yz: go on (354 after DATA, 334 during AUTH).
    Intermediate,
    /// 4yz: failed for now; trying again later may work.
    Transient,
    /// 5yz: failed for good.
    Permanent,
}

/// An RFC 3463 enhanced status code, `class.subject.detail`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EnhancedCode {
    /// 2, 4 or 5.
    pub class: u8,
    /// Subject, 0..=999.
    pub subject: u16,
    /// Detail, 0..=999.
    pub detail: u16,
}

impl fmt::Display for EnhancedCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}.{}", self.class, self.subject, self.detail)
    }
}

/// One complete server reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    /// The three-digit code, 200..=599.
    pub code: u16,
    /// Enhanced status code from the first line, when the server gave one.
    pub enhanced: Option<EnhancedCode>,
    /// The text of each line, without code, separator, enhanced code or CRLF.
    pub lines: Vec<String>,
}

impl Reply {
    /// Builds a reply from a code and one line of text (for locally made outcomes and tests).
    pub fn new(code: u16, text: &str) -> Self {
        Self {
            code,
            enhanced: None,
            lines: vec![text.to_string()],
        }
    }

    /// The reply's class.
    pub fn severity(&self) -> Severity {
        match self.code / 100 {
            2 => Severity::Positive,
            3 => Severity::Intermediate,
            4 => Severity::Transient,
            _ => Severity::Permanent,
        }
    }

    /// 2yz.
    pub fn is_positive(&self) -> bool {
        self.severity() == Severity::Positive
    }

    /// 4yz: worth trying again later.
    pub fn is_transient(&self) -> bool {
        self.severity() == Severity::Transient
    }

    /// 5yz.
    pub fn is_permanent(&self) -> bool {
        self.severity() == Severity::Permanent
    }

    /// All lines joined with a space: the text a report shows.
    pub fn text(&self) -> String {
        self.lines.join(" ")
    }
}

impl fmt::Display for Reply {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.code)?;
        if let Some(e) = self.enhanced {
            write!(f, " {e}")?;
        }
        let text = self.text();
        if !text.is_empty() {
            write!(f, " {text}")?;
        }
        Ok(())
    }
}

/// The resumable parser. Feed it with [`ReplyParser::feed`], take replies with
/// [`ReplyParser::next_reply`].
#[derive(Debug, Default)]
pub struct ReplyParser {
    buf: Vec<u8>,
    pos: usize,
    lines: Vec<String>,
    code: u16,
    enhanced: Option<EnhancedCode>,
}

impl ReplyParser {
    /// A parser with nothing buffered.
    pub fn new() -> Self {
        Self::default()
    }

    /// Appends bytes read from the server.
    pub fn feed(&mut self, bytes: &[u8]) {
        if self.pos > 0 && self.pos == self.buf.len() {
            self.buf.clear();
            self.pos = 0;
        }
        self.buf.extend_from_slice(bytes);
    }

    /// Bytes fed but not yet part of a complete reply.
    pub fn buffered(&self) -> usize {
        self.buf.len() - self.pos + self.lines.iter().map(|l| l.len() + 6).sum::<usize>()
    }

    /// The next complete reply, `Ok(None)` when more bytes are needed.
    pub fn next_reply(&mut self) -> Result<Option<Reply>, ProtocolError> {
        loop {
            let rest = &self.buf[self.pos..];
            let Some(nl) = memchr::memchr(b'\n', rest) else {
                if rest.len() > MAX_LINE {
                    return Err(ProtocolError::LineTooLong);
                }
                self.compact();
                return Ok(None);
            };
            if nl + 1 > MAX_LINE {
                return Err(ProtocolError::LineTooLong);
            }
            let mut line = &rest[..nl];
            if let [head @ .., b'\r'] = line {
                line = head;
            }
            let (code, last, text) = split_line(line)?;
            let consumed = nl + 1;
            if self.lines.is_empty() {
                self.code = code;
            } else if code != self.code {
                return Err(ProtocolError::Malformed(format!(
                    "reply line with code {code} inside a {} reply",
                    self.code
                )));
            }
            if self.lines.len() >= MAX_LINES {
                return Err(ProtocolError::Malformed("reply has too many lines".into()));
            }
            let mut text = text;
            if self.lines.is_empty() {
                if let Some((enh, rest)) = parse_enhanced(text, code) {
                    self.enhanced = Some(enh);
                    text = rest;
                }
            } else if let Some(enh) = self.enhanced {
                // Continuation lines repeat the enhanced code; drop it from the text.
                let prefix = enh.to_string();
                if let Some(stripped) = text.strip_prefix(prefix.as_bytes()) {
                    text = stripped.strip_prefix(b" ").unwrap_or(stripped);
                }
            }
            self.lines.push(String::from_utf8_lossy(text).into_owned());
            self.pos += consumed;
            if last {
                let reply = Reply {
                    code: self.code,
                    enhanced: self.enhanced.take(),
                    lines: std::mem::take(&mut self.lines),
                };
                return Ok(Some(reply));
            }
        }
    }

    fn compact(&mut self) {
        if self.pos > 0 {
            self.buf.drain(..self.pos);
            self.pos = 0;
        }
    }
}

/// `ddd text`, `ddd-text` or a bare `ddd`: (code, is last line, text).
fn split_line(line: &[u8]) -> Result<(u16, bool, &[u8]), ProtocolError> {
    let malformed = || {
        ProtocolError::Malformed(format!(
            "bad reply line {:?}",
            String::from_utf8_lossy(line)
        ))
    };
    if line.len() < 3 || !line[..3].iter().all(u8::is_ascii_digit) {
        return Err(malformed());
    }
    let code = u16::from(line[0] - b'0') * 100
        + u16::from(line[1] - b'0') * 10
        + u16::from(line[2] - b'0');
    if !(200..=599).contains(&code) {
        return Err(malformed());
    }
    match line.get(3) {
        None => Ok((code, true, &[])),
        Some(b' ') => Ok((code, true, &line[4..])),
        Some(b'-') => Ok((code, false, &line[4..])),
        Some(_) => Err(malformed()),
    }
}

/// Parses `x.y.z ` at the start of `text` when its class matches the reply code's class:
/// `x` one digit (2, 4 or 5), `y` and `z` one to three digits each.
fn parse_enhanced(text: &[u8], code: u16) -> Option<(EnhancedCode, &[u8])> {
    let end = memchr::memchr(b' ', text).unwrap_or(text.len());
    let mut parts = text[..end].split(|&b| b == b'.');
    let (c, s, d) = (parts.next()?, parts.next()?, parts.next()?);
    if parts.next().is_some() || c.len() != 1 {
        return None;
    }
    let class = digits(c)?;
    if class != code / 100 || !matches!(class, 2 | 4 | 5) {
        return None;
    }
    let enh = EnhancedCode {
        class: class as u8,
        subject: digits(s)?,
        detail: digits(d)?,
    };
    let rest = text.get(end + 1..).unwrap_or(&[]);
    Some((enh, rest))
}

/// One to three ASCII digits as a number.
fn digits(text: &[u8]) -> Option<u16> {
    if !(1..=3).contains(&text.len()) {
        return None;
    }
    text.iter().try_fold(0u16, |n, &b| {
        b.is_ascii_digit().then(|| n * 10 + u16::from(b - b'0'))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The `str`-based parser the byte one replaced, kept as the reference.
    /// Parses `x.y.z ` at the start of `text` when its class matches the reply code's class.
    fn reference_enhanced(text: &[u8], code: u16) -> Option<(EnhancedCode, &[u8])> {
        let end = text.iter().position(|&b| b == b' ').unwrap_or(text.len());
        let word = std::str::from_utf8(&text[..end]).ok()?;
        let mut parts = word.split('.');
        let (c, s, d) = (parts.next()?, parts.next()?, parts.next()?);
        if parts.next().is_some()
            || c.len() != 1
            || !(1..=3).contains(&s.len())
            || !(1..=3).contains(&d.len())
        {
            return None;
        }
        let class: u8 = c.parse().ok()?;
        if u16::from(class) != code / 100 || !matches!(class, 2 | 4 | 5) {
            return None;
        }
        let enh = EnhancedCode {
            class,
            subject: s.parse().ok()?,
            detail: d.parse().ok()?,
        };
        let rest = text.get(end + 1..).unwrap_or(&[]);
        Some((enh, rest))
    }

    proptest::proptest! {
        #[test]
        fn enhanced_codes_parse_as_the_reference_does(
            text in "[0-9.a ]{0,14}|[245]\\.[0-9]{1,4}\\.[0-9]{1,4}( .{0,5})?",
            code in proptest::sample::select(vec![250_u16, 451, 550, 354, 221]),
        ) {
            proptest::prop_assert_eq!(
                parse_enhanced(text.as_bytes(), code),
                reference_enhanced(text.as_bytes(), code)
            );
        }
    }

    fn all(input: &[u8]) -> Result<Vec<Reply>, ProtocolError> {
        let mut p = ReplyParser::new();
        p.feed(input);
        let mut out = Vec::new();
        while let Some(r) = p.next_reply()? {
            out.push(r);
        }
        Ok(out)
    }

    #[test]
    fn single_and_multi_line() {
        let r =
            all(b"250 2.1.0 Ok\r\n250-mx.example\r\n250-PIPELINING\r\n250 SIZE 100\r\n").unwrap();
        assert_eq!(r.len(), 2);
        assert_eq!(r[0].code, 250);
        assert_eq!(r[0].enhanced.unwrap().to_string(), "2.1.0");
        assert_eq!(r[0].lines, vec!["Ok"]);
        assert_eq!(r[1].lines, vec!["mx.example", "PIPELINING", "SIZE 100"]);
    }

    #[test]
    fn split_at_every_byte() {
        let input = b"220 hi there\r\n250-a\r\n250 2.0.0 b\r\n550 5.1.1 <x@y>: no\r\n";
        let whole = all(input).unwrap();
        for cut in 0..input.len() {
            let mut p = ReplyParser::new();
            let mut got = Vec::new();
            for part in [&input[..cut], &input[cut..]] {
                p.feed(part);
                while let Some(r) = p.next_reply().unwrap() {
                    got.push(r);
                }
            }
            assert_eq!(got, whole, "cut at {cut}");
        }
        // one byte at a time
        let mut p = ReplyParser::new();
        let mut got = Vec::new();
        for b in input {
            p.feed(std::slice::from_ref(b));
            while let Some(r) = p.next_reply().unwrap() {
                got.push(r);
            }
        }
        assert_eq!(got, whole);
    }

    #[test]
    fn empty_final_line_and_bare_code() {
        let r = all(b"250-smtp-sink\r\n250-PIPELINING\r\n250 \r\n354\r\n").unwrap();
        assert_eq!(r[0].lines, vec!["smtp-sink", "PIPELINING", ""]);
        assert_eq!(r[1].code, 354);
        assert!(r[1].severity() == Severity::Intermediate);
    }

    #[test]
    fn errors_not_panics() {
        assert!(matches!(
            all(b"hello\r\n"),
            Err(ProtocolError::Malformed(_))
        ));
        assert!(matches!(
            all(b"250-a\r\n251 b\r\n"),
            Err(ProtocolError::Malformed(_))
        ));
        assert!(matches!(
            all(b"250xyz\r\n"),
            Err(ProtocolError::Malformed(_))
        ));
        assert!(matches!(
            all(b"199 no\r\n"),
            Err(ProtocolError::Malformed(_))
        ));
        let long = [b"250 ".as_slice(), &[b'a'; 600], b"\r\n"].concat();
        assert!(matches!(all(&long), Err(ProtocolError::LineTooLong)));
        let mut p = ReplyParser::new();
        p.feed(&[b'2'; 600]);
        assert!(matches!(p.next_reply(), Err(ProtocolError::LineTooLong)));
    }

    #[test]
    fn enhanced_code_class_must_match() {
        let r = all(b"250 5.1.1 odd\r\n").unwrap();
        assert_eq!(r[0].enhanced, None);
        assert_eq!(r[0].lines, vec!["5.1.1 odd"]);
        let r = all(b"550-5.1.1 line one\r\n550 5.1.1 line two\r\n").unwrap();
        assert_eq!(r[0].lines, vec!["line one", "line two"]);
        assert_eq!(r[0].to_string(), "550 5.1.1 line one line two");
    }
}
