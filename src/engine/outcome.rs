//! Per-recipient outcomes. A negative reply is an outcome, not an error.

use super::reply::Reply;

/// Identifies a message handed to [`super::Session::send`]; chosen by the caller.
pub type MessageId = u64;

/// Where in the exchange a recipient's fate was decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Stage {
    /// Connecting, greeting, EHLO: nothing of the message was sent.
    Connect,
    /// STARTTLS or the TLS handshake.
    Tls,
    /// AUTH.
    Auth,
    /// `MAIL FROM` (or a check made before it, such as SIZE).
    Mail,
    /// `RCPT TO`.
    Rcpt,
    /// `DATA` (before the body).
    Data,
    /// The body: the final dot, or `BDAT … LAST`.
    Body,
}

impl Stage {
    /// Lower-case name, as reports spell it.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Connect => "connect",
            Self::Tls => "tls",
            Self::Auth => "auth",
            Self::Mail => "mail",
            Self::Rcpt => "rcpt",
            Self::Data => "data",
            Self::Body => "body",
        }
    }
}

/// What happened to one recipient of one message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Delivery {
    /// The server accepted the recipient and then the message (2xx to the final dot / BDAT).
    Sent,
    /// A permanent (5xx) refusal, or a local check that cannot pass on a retry.
    Rejected,
    /// A transient (4xx) refusal, or the session ended before the message was committed:
    /// the server did not take it; sending again is safe.
    Deferred,
    /// The session ended after the message's final dot / `BDAT LAST` went out and before the
    /// server's reply: the server may or may not have taken it.
    Unknown,
}

/// The outcome of one recipient of one message, reported once.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RcptOutcome {
    /// The message.
    pub message: MessageId,
    /// Index of the recipient in the message's recipient list.
    pub index: usize,
    /// The recipient's address.
    pub address: String,
    /// What happened.
    pub delivery: Delivery,
    /// Where it was decided.
    pub stage: Stage,
    /// The server's reply that decided it (`None` for local decisions and dropped sessions;
    /// then `note` says why).
    pub reply: Option<Reply>,
    /// A local explanation when there is no reply, or in addition to it.
    pub note: Option<String>,
}

impl RcptOutcome {
    /// The text a report shows: the reply, else the note.
    pub fn text(&self) -> String {
        match (&self.reply, &self.note) {
            (Some(r), Some(n)) => format!("{} ({n})", r.text()),
            (Some(r), None) => r.text(),
            (None, Some(n)) => n.clone(),
            (None, None) => String::new(),
        }
    }
}
