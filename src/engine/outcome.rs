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
    /// The server never executed this recipient's commands: the session ended with a
    /// closing reply (421, or a refusal followed by the server closing the connection) to a
    /// command written before them, or the session stopped taking messages before writing
    /// them (see [`Event::RsetBudgetSpent`](super::Event::RsetBudgetSpent)). Always
    /// [`Delivery::Deferred`]; a caller that can open another session sends the message again
    /// there without counting this as an attempt.
    pub returned: bool,
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

/// A message to deliver: envelope plus content.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    /// Caller's identifier, echoed in outcomes.
    pub id: MessageId,
    /// Envelope sender (`MAIL FROM`); empty for the null reverse-path `<>`.
    pub from: String,
    /// Envelope recipients (`RCPT TO`), at least one.
    pub to: Vec<String>,
    /// The message (headers, blank line, body); any line endings, not dot-stuffed.
    pub data: Vec<u8>,
    /// DSN parameters (RFC 3461), sent only when the server advertises `DSN`.
    pub dsn: Option<DsnParams>,
}

/// Delivery Status Notification parameters of one message (RFC 3461). The session appends
/// them to MAIL and RCPT only when the server advertises `DSN`; otherwise they are dropped.
/// CR, LF and NUL are removed, so a value cannot add a command.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct DsnParams {
    /// After `MAIL FROM:<…>`, e.g. `RET=HDRS ENVID=c1.42`; empty: none.
    pub mail: String,
    /// After each `RCPT TO:<…>`, in the order of [`Message::to`], e.g.
    /// `NOTIFY=FAILURE ORCPT=rfc822;a@example.org`; a missing or empty entry: none.
    pub rcpt: Vec<String>,
}

impl Delivery {
    /// The delivery a reply means for a recipient it decided.
    fn of(reply: &Reply, positive: bool) -> Self {
        if positive {
            Self::Sent
        } else if reply.is_transient() {
            Self::Deferred
        } else {
            Self::Rejected
        }
    }
}

/// Where a message in flight stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum MsgState {
    /// MAIL/RCPT/DATA (or BDAT) sent; replies pending.
    Envelope,
    /// 354 received; body not sent yet.
    BodyHeld,
    /// Final dot or BDAT LAST handed to the driver.
    Committed,
}

/// A message in flight and the replies it got so far.
#[derive(Debug)]
pub(super) struct Msg {
    pub(super) seq: u64,
    pub(super) id: MessageId,
    pub(super) from: String,
    pub(super) to: Vec<String>,
    /// Kept until the message is resolved: a refused message is sent again.
    pub(super) data: Vec<u8>,
    /// DSN parameters to send (already dropped when the server has no DSN).
    pub(super) dsn: Option<DsnParams>,
    pub(super) state: MsgState,
    pub(super) mail: Option<Reply>,
    pub(super) rcpt: Vec<Option<Reply>>,
    pub(super) reported: Vec<bool>,
    /// Lock-step: next recipient to send.
    pub(super) next_rcpt: usize,
    /// Octets counted against the BDAT window.
    pub(super) octets: usize,
    /// No RCPT accepted (or MAIL failed): the body sent after a 354 is a lone dot.
    pub(super) hollow: bool,
    /// Its commands were pipelined (replies are then handled as a group).
    pub(super) pipelined: bool,
    /// The server refused its MAIL because it followed an end of data: the remaining
    /// replies are ignored and the message is sent again.
    pub(super) refused: bool,
    /// Its MAIL got a "bad sequence" reply while the server may still have held the last
    /// failed transaction open ("503 sender already given"): its RCPTs and data join that
    /// transaction, so their replies decide its recipients, not the MAIL's.
    pub(super) joined: bool,
    /// The MAIL command as sent, kept as evidence while `joined` (transcript only).
    pub(super) mail_line: Option<String>,
    /// BDAT mode: RSET was asked for as soon as every RCPT failed (not again at BDAT's reply).
    pub(super) rset_asked: bool,
    /// A RSET was written right behind this message's commands (see `resets.rs`).
    pub(super) rset_behind: bool,
    /// Its end of data got a positive reply: the server received the message.
    pub(super) received: bool,
}

impl Msg {
    pub(super) fn new(seq: u64, msg: Message, pipelined: bool) -> Self {
        let n = msg.to.len();
        Self {
            seq,
            id: msg.id,
            from: msg.from,
            to: msg.to,
            data: msg.data,
            dsn: msg.dsn,
            state: MsgState::Envelope,
            mail: None,
            rcpt: vec![None; n],
            reported: vec![false; n],
            next_rcpt: 0,
            octets: 0,
            hollow: false,
            pipelined,
            refused: false,
            joined: false,
            mail_line: None,
            rset_asked: false,
            rset_behind: false,
            received: false,
        }
    }

    /// The message as the caller gave it, to send again.
    pub(super) fn into_message(self) -> Message {
        Message {
            id: self.id,
            from: self.from,
            to: self.to,
            data: self.data,
            dsn: self.dsn,
        }
    }

    /// The MAIL parameters from [`DsnParams`], or `""`.
    pub(super) fn dsn_mail(&self) -> &str {
        self.dsn.as_ref().map_or("", |d| d.mail.as_str())
    }

    /// The RCPT parameters of recipient `i` from [`DsnParams`], or `""`.
    pub(super) fn dsn_rcpt(&self, i: usize) -> &str {
        self.dsn
            .as_ref()
            .and_then(|d| d.rcpt.get(i))
            .map_or("", String::as_str)
    }

    pub(super) fn mail_ok(&self) -> bool {
        self.joined || self.mail.as_ref().is_some_and(Reply::is_positive)
    }

    /// MAIL and at least one RCPT were accepted.
    pub(super) fn accepted_any(&self) -> bool {
        self.mail_ok()
            && self
                .rcpt
                .iter()
                .any(|r| r.as_ref().is_some_and(Reply::is_positive))
    }

    /// Every unreported recipient whose fate is known: all of them after a failed MAIL,
    /// each rejected RCPT, and — when `last` is given — the accepted ones by that reply.
    pub(super) fn settled(
        &self,
        last: Option<(Stage, &Reply)>,
    ) -> Vec<(usize, Delivery, Stage, Reply)> {
        let mut out = Vec::new();
        let mail_failed = self
            .mail
            .as_ref()
            .filter(|r| !self.joined && !r.is_positive());
        for (idx, r) in self.rcpt.iter().enumerate() {
            if self.reported[idx] {
                continue;
            }
            let (stage, reply, positive) = if let Some(mr) = mail_failed {
                (Stage::Mail, mr, false)
            } else {
                match r {
                    Some(r) if !r.is_positive() => (Stage::Rcpt, r, false),
                    Some(_) => match last {
                        Some((stage, lr)) => (stage, lr, lr.is_positive()),
                        None => continue,
                    },
                    None => match last {
                        // RCPT never answered separately (lock-step stop): not sent.
                        Some((stage, lr)) => (stage, lr, false),
                        None => continue,
                    },
                }
            };
            out.push((idx, Delivery::of(reply, positive), stage, reply.clone()));
        }
        out
    }
}
