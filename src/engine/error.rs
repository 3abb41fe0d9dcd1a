//! Errors that end a session. A negative reply to MAIL, RCPT, DATA or the body is an
//! outcome ([`super::outcome`]), not an error.

use super::command::Verb;
use super::reply::Reply;

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

/// Why a session ended before or instead of `QUIT`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SessionError {
    /// The server broke the protocol.
    #[error(transparent)]
    Protocol(#[from] ProtocolError),
    /// No reply in time.
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
    /// `--tls starttls` but the server does not offer STARTTLS, or refused it.
    #[error("TLS is required but the server {0}")]
    TlsRequired(String),
    /// `--require-pipelining` but the server does not offer PIPELINING.
    #[error("PIPELINING is required but the server does not advertise it")]
    PipeliningRequired,
    /// AUTH is configured but the connection is not encrypted.
    #[error(
        "refusing to send credentials over an unencrypted connection (use TLS, or allow plaintext AUTH explicitly)"
    )]
    AuthOverPlaintext,
    /// AUTH is configured but the server offers neither PLAIN nor LOGIN.
    #[error("server offers no AUTH mechanism pipemail supports (PLAIN, LOGIN){0}")]
    AuthUnsupported(String),
    /// The server refused the credentials.
    #[error("authentication failed: {0}")]
    AuthFailed(Reply),
    /// The driver could not read from or write to the socket.
    #[error("connection error: {0}")]
    Io(String),
    /// The TLS handshake failed (certificate not trusted, name mismatch, protocol error).
    #[error("TLS handshake failed: {0}")]
    Tls(String),
}

impl SessionError {
    /// True when trying again later may work (timeouts, drops, 4xx, busy server).
    pub fn is_transient(&self) -> bool {
        match self {
            Self::Timeout(_) | Self::Closed | Self::ServiceClosing(_) | Self::Io(_) => true,
            Self::Greeting(r) | Self::Helo(r) | Self::AuthFailed(r) => r.is_transient(),
            _ => false,
        }
    }
}
