//! Command encoders (RFC 5321 §4.1) that append to a caller-owned buffer, and address checks.
//!
//! Every encoder writes straight into the output `Vec<u8>`; nothing here allocates per command.

use std::fmt;

/// Why an address cannot be put on a `MAIL FROM` / `RCPT TO` line.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AddressError {
    /// The address is empty (only the null reverse-path `<>` may be empty, and only in MAIL).
    #[error("empty address")]
    Empty,
    /// The address contains CR, LF or NUL: it would break the command line.
    #[error("address contains a control character (CR, LF, NUL or other)")]
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
    if addr.is_empty() {
        return Err(AddressError::Empty);
    }
    if addr.chars().any(|c| c.is_control()) {
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
