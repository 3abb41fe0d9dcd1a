//! Errors that end a session. A negative reply to MAIL, RCPT, DATA or the body is an
//! outcome ([`super::outcome`]), not an error.
//!
//! Each error's `Display` is complete: reports and logs print it as one line. The typed cause
//! stays in the variant ([`IoFailure::kind`], [`TlsFailure::kind`], the [`Reply`]) and
//! [`std::error::Error::source`] continues *below* what `Display` already printed, so
//! `{:#}`-style chain printing never repeats a cause.

use std::error::Error as StdError;
use std::fmt;
use std::io;
use std::sync::Arc;

use super::command::Verb;
use super::config::AuthMechanism;
use super::outcome::Stage;
pub use super::reply::ProtocolError;
use super::reply::Reply;

/// An I/O error with its [`io::ErrorKind`], cheap to clone and comparable (by kind and text).
#[derive(Debug, Clone, thiserror::Error)]
#[error(transparent)]
pub struct IoFailure(Arc<io::Error>);

impl IoFailure {
    /// Wraps an I/O error.
    pub fn new(err: io::Error) -> Self {
        Self(Arc::new(err))
    }

    /// What kind of error it was (`ConnectionReset`, `TimedOut`...).
    pub fn kind(&self) -> io::ErrorKind {
        self.0.kind()
    }

    /// The error itself.
    pub fn get_ref(&self) -> &io::Error {
        &self.0
    }
}

impl From<io::Error> for IoFailure {
    fn from(err: io::Error) -> Self {
        Self::new(err)
    }
}

impl PartialEq for IoFailure {
    fn eq(&self, other: &Self) -> bool {
        self.kind() == other.kind() && self.0.to_string() == other.0.to_string()
    }
}

impl Eq for IoFailure {}

/// What went wrong with TLS, as far as the driver could tell.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TlsFailureKind {
    /// The certificate does not chain to a trusted CA (e.g. self-signed).
    Untrusted,
    /// The certificate does not name the host.
    NameMismatch,
    /// The certificate has expired.
    Expired,
    /// TLS could not be set up locally (no connector, already encrypted).
    Setup,
    /// Anything else the TLS library reported.
    Other,
}

/// A failed TLS handshake: whom with, what the TLS library said, and the hint the caller
/// configured for this kind of failure.
#[derive(Clone)]
pub struct TlsFailure {
    kind: TlsFailureKind,
    host: Option<String>,
    detail: String,
    hint: Option<String>,
    source: Option<Arc<dyn StdError + Send + Sync>>,
}

impl TlsFailure {
    /// A failure of `kind`, described by `detail` (usually the TLS library's message).
    pub fn new(kind: TlsFailureKind, detail: impl Into<String>) -> Self {
        Self {
            kind,
            host: None,
            detail: detail.into(),
            hint: None,
            source: None,
        }
    }

    /// The host name the handshake was for (printed first).
    pub fn with_host(mut self, host: impl Into<String>) -> Self {
        self.host = Some(host.into());
        self
    }

    /// Advice printed after the detail, in parentheses.
    pub fn with_hint(mut self, hint: impl Into<String>) -> Self {
        let hint = hint.into();
        self.hint = (!hint.is_empty()).then_some(hint);
        self
    }

    /// The TLS library's error; its own causes become this error's source.
    pub fn with_source(mut self, err: impl StdError + Send + Sync + 'static) -> Self {
        self.source = Some(Arc::new(err));
        self
    }

    /// What kind of failure.
    pub fn kind(&self) -> TlsFailureKind {
        self.kind
    }

    /// The TLS library's error, when there was one.
    pub fn cause(&self) -> Option<&(dyn StdError + Send + Sync + 'static)> {
        self.source.as_deref()
    }
}

impl From<&str> for TlsFailure {
    fn from(detail: &str) -> Self {
        Self::new(TlsFailureKind::Other, detail)
    }
}

impl From<String> for TlsFailure {
    fn from(detail: String) -> Self {
        Self::new(TlsFailureKind::Other, detail)
    }
}

impl fmt::Debug for TlsFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TlsFailure")
            .field("kind", &self.kind)
            .field("host", &self.host)
            .field("detail", &self.detail)
            .field("hint", &self.hint)
            .finish_non_exhaustive()
    }
}

impl fmt::Display for TlsFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(h) = &self.host {
            write!(f, "{h}: ")?;
        }
        f.write_str(&self.detail)?;
        if let Some(h) = &self.hint {
            write!(f, " ({h})")?;
        }
        Ok(())
    }
}

impl StdError for TlsFailure {
    /// The detail already shows the TLS library's message; the chain goes on below it.
    fn source(&self) -> Option<&(dyn StdError + 'static)> {
        self.source.as_deref().and_then(|e| e.source())
    }
}

impl PartialEq for TlsFailure {
    fn eq(&self, other: &Self) -> bool {
        (self.kind, &self.host, &self.detail, &self.hint)
            == (other.kind, &other.host, &other.detail, &other.hint)
    }
}

impl Eq for TlsFailure {}

/// Why `--tls starttls`-style required TLS could not be had.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TlsRefusal {
    /// EHLO did not list STARTTLS.
    #[error("does not offer STARTTLS")]
    NotOffered,
    /// The server answered STARTTLS with something other than 220.
    #[error("refused STARTTLS: {0}")]
    Refused(Reply),
}

/// The AUTH mechanisms a server offered when none of them is supported.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AuthOffer(pub Vec<String>);

impl fmt::Display for AuthOffer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.is_empty() {
            f.write_str(" (it advertises no AUTH)")
        } else {
            write!(f, " (it offers {})", self.0.join(" "))
        }
    }
}

/// Why a session ended before or instead of `QUIT`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SessionError {
    /// The server broke the protocol.
    #[error(transparent)]
    Protocol(#[from] ProtocolError),
    /// No 220 greeting in time.
    #[error("timed out waiting for the server's greeting")]
    GreetingTimeout,
    /// No reply to a command in time.
    #[error("timed out waiting for the reply to {0}")]
    Timeout(Verb),
    /// The server closed the connection.
    #[error("server closed the connection")]
    Closed,
    /// The greeting was not 220 (554, or 421: busy).
    #[error("server refused the session: {0}")]
    Greeting(Reply),
    /// Both EHLO and HELO were refused.
    #[error("server refused EHLO and HELO: {0}")]
    Helo(Reply),
    /// The server said 421 (closing) to a command.
    #[error("server is closing the session: {0}")]
    ServiceClosing(Reply),
    /// TLS is required but the server does not offer STARTTLS, or refused it.
    #[error("TLS is required but the server {0}")]
    TlsRequired(TlsRefusal),
    /// PIPELINING is required but the server does not offer it.
    #[error("PIPELINING is required but the server does not advertise it")]
    PipeliningRequired,
    /// AUTH is configured but the connection is not encrypted.
    #[error(
        "refusing to send credentials over an unencrypted connection (use TLS, or allow plaintext AUTH explicitly)"
    )]
    AuthOverPlaintext,
    /// AUTH is configured but the server offers neither PLAIN nor LOGIN.
    #[error("server offers no AUTH mechanism pipemail supports (PLAIN, LOGIN){0}")]
    AuthUnsupported(AuthOffer),
    /// AUTH is configured with a mechanism (`--auth-mech`) the server does not offer.
    #[error("server does not offer AUTH {0}{1}")]
    AuthMechanismNotOffered(AuthMechanism, AuthOffer),
    /// The server refused the credentials.
    #[error("authentication failed: {0}")]
    AuthFailed(Reply),
    /// The driver could not read from or write to the socket.
    #[error("connection error: {0}")]
    Io(IoFailure),
    /// The TLS handshake failed (certificate not trusted, name mismatch, protocol error).
    #[error("TLS handshake failed: {0}")]
    Tls(TlsFailure),
}

impl From<io::Error> for SessionError {
    fn from(err: io::Error) -> Self {
        Self::Io(IoFailure::new(err))
    }
}

impl SessionError {
    /// True when trying again later may work (timeouts, drops, 4xx, busy server).
    pub fn is_transient(&self) -> bool {
        match self {
            Self::GreetingTimeout
            | Self::Timeout(_)
            | Self::Closed
            | Self::ServiceClosing(_)
            | Self::Io(_) => true,
            Self::Greeting(r) | Self::Helo(r) | Self::AuthFailed(r) => r.is_transient(),
            _ => false,
        }
    }

    /// True when the error ends the run, not just this connection: another connection to
    /// the same server with the same settings cannot do better (TLS or PIPELINING required
    /// but absent, AUTH impossible or refused, a certificate that does not verify, a
    /// permanent refusal of the greeting or of EHLO and HELO). Drops, timeouts, 421 and
    /// protocol errors are transient problems of one connection.
    pub fn is_fatal(&self) -> bool {
        match self {
            Self::TlsRequired(_)
            | Self::PipeliningRequired
            | Self::AuthOverPlaintext
            | Self::AuthUnsupported(_)
            | Self::AuthMechanismNotOffered(..)
            | Self::AuthFailed(_)
            | Self::Tls(_) => true,
            Self::Greeting(r) | Self::Helo(r) => r.is_permanent(),
            _ => false,
        }
    }

    /// The stage a report names for messages this error kept from being sent: `tls` for
    /// STARTTLS and handshake failures, `auth` for AUTH, `connect` otherwise.
    pub fn stage(&self) -> Stage {
        match self {
            Self::TlsRequired(_) | Self::Tls(_) => Stage::Tls,
            Self::AuthOverPlaintext
            | Self::AuthUnsupported(_)
            | Self::AuthMechanismNotOffered(..)
            | Self::AuthFailed(_) => Stage::Auth,
            _ => Stage::Connect,
        }
    }

    /// The I/O error behind [`SessionError::Io`].
    pub fn io_error(&self) -> Option<&io::Error> {
        match self {
            Self::Io(e) => Some(e.get_ref()),
            _ => None,
        }
    }
}
