//! Command encoders (RFC 5321 §4.1) that append to a caller-owned buffer, and address checks.
//!
//! Every encoder writes straight into the output `Vec<u8>`; nothing here allocates per command.

use std::fmt;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;

/// Why an address cannot be put on a `MAIL FROM` / `RCPT TO` line.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AddressError {
    /// The address is empty (only the null reverse-path `<>` may be empty, and only in MAIL).
    #[error("empty address")]
    Empty,
    /// The address contains CR, LF or NUL: it would break the command line.
    #[error("address contains a control character (CR, LF, NUL, a bidi control or other)")]
    Control,
    /// The address contains `<` or `>`.
    #[error("address contains '<' or '>'")]
    AngleBracket,
    /// The address contains white space outside a quoted local part.
    #[error("address contains white space")]
    Space,
    /// No `@`, or an empty local part or domain.
    #[error("address is not of the form local@domain")]
    Syntax,
    /// Longer than RFC 5321 allows (local part 64, domain 255, path 256 octets).
    #[error("address is too long")]
    TooLong,
}

/// Checks that `addr` can be sent as an SMTP path: `local@domain`, no CR/LF/NUL or other
/// control characters, no angle brackets, no unquoted white space, RFC 5321 length limits.
///
/// Non-ASCII is allowed here (it needs SMTPUTF8 on the wire; the session checks that).
pub fn check_address(addr: &str) -> Result<(), AddressError> {
    if addr.is_ascii() {
        check_ascii_address(addr.as_bytes())
    } else {
        check_any_address(addr)
    }
}

/// [`check_address`] for any text, a character at a time.
fn check_any_address(addr: &str) -> Result<(), AddressError> {
    if addr.is_empty() {
        return Err(AddressError::Empty);
    }
    // Bidirectional controls and line/paragraph separators too: an address must show as
    // what it is in the report and on a terminal (issue 16).
    let control = {
        addr.chars().any(|c| {
            c.is_control()
                || matches!(
                    c,
                    '\u{61c}' | '\u{200e}' | '\u{200f}' | '\u{2028}'..='\u{202e}' | '\u{2066}'..='\u{2069}'
                )
        })
    };
    if control {
        return Err(AddressError::Control);
    }
    if addr.contains(['<', '>']) {
        return Err(AddressError::AngleBracket);
    }
    let at = addr.rfind('@').ok_or(AddressError::Syntax)?;
    let (local, domain) = (&addr[..at], &addr[at + 1..]);
    if local.is_empty() || domain.is_empty() {
        return Err(AddressError::Syntax);
    }
    let quoted = local.len() >= 2 && local.starts_with('"') && local.ends_with('"');
    if !quoted && local.contains(char::is_whitespace) || domain.contains(char::is_whitespace) {
        return Err(AddressError::Space);
    }
    if !quoted
        && (local.contains('@')
            || local.starts_with('.')
            || local.ends_with('.')
            || local.contains(".."))
    {
        return Err(AddressError::Syntax);
    }
    if domain.starts_with('.') || domain.ends_with('.') || domain.contains("..") {
        return Err(AddressError::Syntax);
    }
    if local.len() > 64 || domain.len() > 255 || addr.len() > 254 {
        return Err(AddressError::TooLong);
    }
    Ok(())
}

/// [`check_address`] for an ASCII address, in one pass over its bytes (the same rules: in
/// ASCII, white space other than the space is a control character).
fn check_ascii_address(addr: &[u8]) -> Result<(), AddressError> {
    if addr.is_empty() {
        return Err(AddressError::Empty);
    }
    let mut angle = false;
    let mut at = None;
    for (i, &b) in addr.iter().enumerate() {
        match b {
            0..=0x1f | 0x7f => return Err(AddressError::Control),
            b'<' | b'>' => angle = true,
            b'@' => at = Some(i),
            _ => {}
        }
    }
    if angle {
        return Err(AddressError::AngleBracket);
    }
    let at = at.ok_or(AddressError::Syntax)?;
    let (local, domain) = (&addr[..at], &addr[at + 1..]);
    if local.is_empty() || domain.is_empty() {
        return Err(AddressError::Syntax);
    }
    let quoted = local.len() >= 2 && local.starts_with(b"\"") && local.ends_with(b"\"");
    if !quoted && local.contains(&b' ') || domain.contains(&b' ') {
        return Err(AddressError::Space);
    }
    let dots =
        |s: &[u8]| s.starts_with(b".") || s.ends_with(b".") || s.windows(2).any(|w| w == b"..");
    if !quoted && (local.contains(&b'@') || dots(local)) {
        return Err(AddressError::Syntax);
    }
    if dots(domain) {
        return Err(AddressError::Syntax);
    }
    if local.len() > 64 || domain.len() > 255 || addr.len() > 254 {
        return Err(AddressError::TooLong);
    }
    Ok(())
}

/// True when the address needs SMTPUTF8 (RFC 6531) to be sent.
pub fn needs_smtputf8(addr: &str) -> bool {
    !addr.is_ascii()
}

/// An SMTP command the engine can send. Used to label replies, errors and transcripts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Verb {
    /// `EHLO`
    Ehlo,
    /// `HELO`
    Helo,
    /// `STARTTLS`
    StartTls,
    /// `AUTH` and its continuation lines
    Auth,
    /// `MAIL FROM`
    Mail,
    /// `RCPT TO`
    Rcpt,
    /// `DATA`
    Data,
    /// The message body and its final `.` (after `354`)
    Body,
    /// `BDAT n LAST` with its chunk
    Bdat,
    /// `RSET`
    Rset,
    /// `NOOP`
    Noop,
    /// `QUIT`
    Quit,
}

impl Verb {
    /// RFC 2920 §3.1: may this command stand anywhere in a pipelined group, or must it end it?
    pub fn ends_group(self) -> bool {
        !matches!(
            self,
            Self::Mail | Self::Rcpt | Self::Rset | Self::Bdat | Self::Body
        )
    }
}

impl fmt::Display for Verb {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Ehlo => "EHLO",
            Self::Helo => "HELO",
            Self::StartTls => "STARTTLS",
            Self::Auth => "AUTH",
            Self::Mail => "MAIL",
            Self::Rcpt => "RCPT",
            Self::Data => "DATA",
            Self::Body => ".",
            Self::Bdat => "BDAT",
            Self::Rset => "RSET",
            Self::Noop => "NOOP",
            Self::Quit => "QUIT",
        })
    }
}

/// A single command for lock-step use (the Net::SMTP-style API and probes).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RawCommand {
    /// `MAIL FROM:<addr>`
    Mail(String),
    /// `RCPT TO:<addr>`
    Rcpt(String),
    /// `DATA`
    Data,
    /// A message body with its final dot (send only after 354).
    Body(Vec<u8>),
    /// `RSET`
    Rset,
    /// `NOOP`
    Noop,
    /// `QUIT`
    Quit,
}

/// ESMTP parameters of `MAIL FROM` (RFC 1870, RFC 6152, RFC 6531).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct MailParams {
    /// `SIZE=n`, when the server offers SIZE.
    pub size: Option<usize>,
    /// `BODY=8BITMIME`.
    pub eight_bit: bool,
    /// `SMTPUTF8`.
    pub smtputf8: bool,
}

/// Appends `s` without CR, LF or NUL: whatever the caller passed, one command stays one line.
fn push_clean(out: &mut Vec<u8>, s: &str) {
    out.extend(s.bytes().filter(|&b| b != b'\r' && b != b'\n' && b != 0));
}

/// Appends `n` in decimal, without allocating.
fn push_decimal(out: &mut Vec<u8>, mut n: usize) {
    let mut digits = [0u8; 20];
    let mut i = digits.len();
    loop {
        i -= 1;
        digits[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(&digits[i..]);
}

/// Appends the base64 of `data` (RFC 4648, padded).
fn push_base64(out: &mut Vec<u8>, data: &[u8]) {
    let start = out.len();
    let len = base64::encoded_len(data.len(), true).expect("a command-sized input");
    out.resize(start + len, 0);
    let n = B64
        .encode_slice(data, &mut out[start..])
        .expect("buffer sized by encoded_len");
    out.truncate(start + n);
}

/// The transcript text of one encoded command line: without its CRLF.
pub(super) fn line_text(bytes: &[u8]) -> String {
    let line = bytes.strip_suffix(b"\r\n").unwrap_or(bytes);
    String::from_utf8_lossy(line).into_owned()
}

/// `EHLO name`
pub fn ehlo(out: &mut Vec<u8>, name: &str) {
    out.extend_from_slice(b"EHLO ");
    push_clean(out, name);
    out.extend_from_slice(b"\r\n");
}

/// `HELO name`
pub fn helo(out: &mut Vec<u8>, name: &str) {
    out.extend_from_slice(b"HELO ");
    push_clean(out, name);
    out.extend_from_slice(b"\r\n");
}

/// `STARTTLS` (RFC 3207)
pub fn starttls(out: &mut Vec<u8>) {
    out.extend_from_slice(b"STARTTLS\r\n");
}

/// `AUTH PLAIN <base64(\0user\0password)>` (RFC 4954, RFC 4616)
pub fn auth_plain(out: &mut Vec<u8>, user: &str, password: &str) {
    out.extend_from_slice(b"AUTH PLAIN ");
    let mut token = Vec::with_capacity(user.len() + password.len() + 2);
    token.push(0);
    token.extend_from_slice(user.as_bytes());
    token.push(0);
    token.extend_from_slice(password.as_bytes());
    push_base64(out, &token);
    token.fill(0);
    out.extend_from_slice(b"\r\n");
}

/// `AUTH LOGIN`; the server then asks for the user name and the password.
pub fn auth_login(out: &mut Vec<u8>) {
    out.extend_from_slice(b"AUTH LOGIN\r\n");
}

/// One answer to an AUTH LOGIN challenge: the base64 of `value`.
pub fn auth_response(out: &mut Vec<u8>, value: &str) {
    push_base64(out, value.as_bytes());
    out.extend_from_slice(b"\r\n");
}

/// `AUTH XOAUTH2 <base64(user=U ^A auth=Bearer T ^A ^A)>` (Google's and Microsoft's
/// OAuth 2.0 mechanism, the same client message as RFC 7628 without the GS2 header).
pub fn auth_xoauth2(out: &mut Vec<u8>, user: &str, token: &str) {
    out.extend_from_slice(b"AUTH XOAUTH2 ");
    let mut msg = Vec::with_capacity(user.len() + token.len() + 20);
    msg.extend_from_slice(b"user=");
    msg.extend_from_slice(user.as_bytes());
    msg.extend_from_slice(b"\x01auth=Bearer ");
    msg.extend_from_slice(token.as_bytes());
    msg.extend_from_slice(b"\x01\x01");
    push_base64(out, &msg);
    msg.fill(0);
    out.extend_from_slice(b"\r\n");
}

/// `AUTH OAUTHBEARER <base64(n,a=U, ^A auth=Bearer T ^A ^A)>` (RFC 7628 §3.1): a GS2 header
/// naming the user (`,` and `=` escaped as `=2C` and `=3D`, RFC 5801), then the bearer token.
pub fn auth_oauthbearer(out: &mut Vec<u8>, user: &str, token: &str) {
    out.extend_from_slice(b"AUTH OAUTHBEARER ");
    let mut msg = Vec::with_capacity(user.len() + token.len() + 24);
    msg.extend_from_slice(b"n,a=");
    for b in user.bytes() {
        match b {
            b',' => msg.extend_from_slice(b"=2C"),
            b'=' => msg.extend_from_slice(b"=3D"),
            _ => msg.push(b),
        }
    }
    msg.extend_from_slice(b",\x01auth=Bearer ");
    msg.extend_from_slice(token.as_bytes());
    msg.extend_from_slice(b"\x01\x01");
    push_base64(out, &msg);
    msg.fill(0);
    out.extend_from_slice(b"\r\n");
}

/// The answer to an OAuth error challenge (a 334 carrying base64 JSON): OAUTHBEARER sends a
/// single `^A` (`AQ==`, RFC 7628 §3.2.3), XOAUTH2 an empty line; the server then sends its
/// final negative reply.
pub fn auth_oauth_error_ack(out: &mut Vec<u8>, bearer: bool) {
    if bearer {
        out.extend_from_slice(b"AQ==");
    }
    out.extend_from_slice(b"\r\n");
}

/// `MAIL FROM:<from>` with its parameters; an empty `from` is the null reverse-path `<>`.
pub fn mail_from(out: &mut Vec<u8>, from: &str, params: MailParams) {
    mail_from_with(out, from, params, "");
}

/// Appends ` extra` (CR, LF and NUL removed) when `extra` is not empty.
fn push_extra(out: &mut Vec<u8>, extra: &str) {
    if !extra.is_empty() {
        out.push(b' ');
        push_clean(out, extra);
    }
}

/// [`mail_from`] followed by caller parameters (e.g. DSN's `RET=HDRS ENVID=…`, RFC 3461).
pub fn mail_from_with(out: &mut Vec<u8>, from: &str, params: MailParams, extra: &str) {
    out.extend_from_slice(b"MAIL FROM:<");
    push_clean(out, from);
    out.push(b'>');
    if let Some(n) = params.size {
        out.extend_from_slice(b" SIZE=");
        push_decimal(out, n);
    }
    if params.eight_bit {
        out.extend_from_slice(b" BODY=8BITMIME");
    }
    if params.smtputf8 {
        out.extend_from_slice(b" SMTPUTF8");
    }
    push_extra(out, extra);
    out.extend_from_slice(b"\r\n");
}

/// `RCPT TO:<to>`
pub fn rcpt_to(out: &mut Vec<u8>, to: &str) {
    rcpt_to_with(out, to, "");
}

/// `RCPT TO:<to>` followed by caller parameters (e.g. DSN's `NOTIFY=… ORCPT=…`).
pub fn rcpt_to_with(out: &mut Vec<u8>, to: &str, extra: &str) {
    out.extend_from_slice(b"RCPT TO:<");
    push_clean(out, to);
    out.push(b'>');
    push_extra(out, extra);
    out.extend_from_slice(b"\r\n");
}

/// `DATA`
pub fn data(out: &mut Vec<u8>) {
    out.extend_from_slice(b"DATA\r\n");
}

/// `RSET`
pub fn rset(out: &mut Vec<u8>) {
    out.extend_from_slice(b"RSET\r\n");
}

/// `NOOP`
pub fn noop(out: &mut Vec<u8>) {
    out.extend_from_slice(b"NOOP\r\n");
}

/// `QUIT`
pub fn quit(out: &mut Vec<u8>) {
    out.extend_from_slice(b"QUIT\r\n");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encoders_append_exact_lines() {
        let mut out = b"x".to_vec();
        mail_from(
            &mut out,
            "a@b.c",
            MailParams {
                size: Some(1_234_567),
                eight_bit: true,
                smtputf8: true,
            },
        );
        rcpt_to(&mut out, "d@e.f\r\nRSET");
        mail_from(&mut out, "", MailParams::default());
        ehlo(&mut out, "client.example");
        data(&mut out);
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "xMAIL FROM:<a@b.c> SIZE=1234567 BODY=8BITMIME SMTPUTF8\r\n\
             RCPT TO:<d@e.fRSET>\r\n\
             MAIL FROM:<>\r\n\
             EHLO client.example\r\n\
             DATA\r\n"
        );
        let mut out = Vec::new();
        push_decimal(&mut out, 0);
        push_decimal(&mut out, usize::MAX);
        assert_eq!(out, format!("0{}", usize::MAX).into_bytes());
    }

    #[test]
    fn encoders_append_caller_parameters() {
        let mut out = Vec::new();
        mail_from_with(
            &mut out,
            "bounces+7@b.c",
            MailParams {
                size: Some(42),
                ..MailParams::default()
            },
            "RET=HDRS ENVID=c1.7",
        );
        rcpt_to_with(
            &mut out,
            "d@e.f",
            "NOTIFY=FAILURE,DELAY ORCPT=rfc822;d@e.f\r\nRSET",
        );
        rcpt_to_with(&mut out, "g@h.i", "");
        mail_from_with(&mut out, "", MailParams::default(), "");
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "MAIL FROM:<bounces+7@b.c> SIZE=42 RET=HDRS ENVID=c1.7\r\n\
             RCPT TO:<d@e.f> NOTIFY=FAILURE,DELAY ORCPT=rfc822;d@e.fRSET\r\n\
             RCPT TO:<g@h.i>\r\n\
             MAIL FROM:<>\r\n"
        );
    }

    #[test]
    fn auth_encoders() {
        let mut out = Vec::new();
        auth_plain(&mut out, "user", "pass");
        auth_response(&mut out, "user");
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "AUTH PLAIN AHVzZXIAcGFzcw==\r\ndXNlcg==\r\n"
        );
    }

    #[test]
    fn oauth_encoders_byte_exact() {
        use base64::Engine as _;
        let b64 = base64::engine::general_purpose::STANDARD;
        let mut out = Vec::new();
        auth_xoauth2(
            &mut out,
            "someuser@example.com",
            "ya29.vF9dft4qmTc2Nvb3RlckBhdHRhdmlzdGEuY29tCg",
        );
        // Google's documented example.
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "AUTH XOAUTH2 dXNlcj1zb21ldXNlckBleGFtcGxlLmNvbQFhdXRoPUJlYXJlciB5YTI5LnZGOWRmdDRxbVRjMk52YjNSbGNrQmhkSFJoZG1semRHRXVZMjl0Q2cBAQ==\r\n"
        );
        let mut out = Vec::new();
        auth_oauthbearer(
            &mut out,
            "user@example.com",
            "vF9dft4qmTc2Nvb3RlckBhbHRhdmlzdGEuY29tCg==",
        );
        let line = String::from_utf8(out).unwrap();
        let b = line
            .strip_prefix("AUTH OAUTHBEARER ")
            .and_then(|l| l.strip_suffix("\r\n"))
            .unwrap();
        // RFC 7628 §4.1 without the optional host and port.
        assert_eq!(
            b64.decode(b).unwrap(),
            b"n,a=user@example.com,\x01auth=Bearer vF9dft4qmTc2Nvb3RlckBhbHRhdmlzdGEuY29tCg==\x01\x01"
        );
        let mut out = Vec::new();
        auth_oauthbearer(&mut out, "a,b=c", "t");
        let b = &out[b"AUTH OAUTHBEARER ".len()..out.len() - 2];
        assert_eq!(
            b64.decode(b).unwrap(),
            b"n,a=a=2Cb=3Dc,\x01auth=Bearer t\x01\x01"
        );
        let mut out = Vec::new();
        auth_oauth_error_ack(&mut out, true);
        auth_oauth_error_ack(&mut out, false);
        assert_eq!(out, b"AQ==\r\n\r\n");
    }
}

#[cfg(test)]
mod address_tests {
    use proptest::prelude::*;

    use super::{check_any_address, check_ascii_address};

    proptest! {
        /// The one-pass ASCII check gives the character-at-a-time check's answer.
        #[test]
        fn the_ascii_fast_path_agrees(s in "[ -~\t\r\n\x00\x7f]{0,12}|[a-z.\" @<>]{0,12}|([a-z.]{0,70}@[a-z.]{0,4}){1,2}") {
            prop_assert_eq!(check_ascii_address(s.as_bytes()), check_any_address(&s));
        }
    }
}
