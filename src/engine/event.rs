//! What the session tells its driver and caller.

use super::command::Verb;
use super::ehlo::Capabilities;
use super::error::SessionError;
use super::outcome::{MessageId, RcptOutcome};
use super::pipeline::PipeliningLevel;
use super::reply::Reply;

/// One command and the reply it got (emitted when `Config::transcript` is on).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Exchange {
    /// The command line as sent, with secrets replaced by `****`; `.` for a message body,
    /// `BDAT n LAST` for a chunk; empty for the greeting.
    pub command: String,
    /// Which command.
    pub verb: Option<Verb>,
    /// The server's reply.
    pub reply: Reply,
    /// Did the reply mean success for this command?
    pub ok: bool,
    /// For `RCPT TO` of a message given to [`super::Session::send`]: that message and the
    /// recipient's index in its `to` list.
    pub recipient: Option<(MessageId, usize)>,
}

/// What the session tells its driver and caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// The server's 220 greeting.
    Greeting(Reply),
    /// Capabilities from EHLO (again after STARTTLS).
    Capabilities(Capabilities),
    /// The server said 220 to STARTTLS: the driver must do the TLS handshake now, then call
    /// [`Session::handle_tls_established`](super::Session::handle_tls_established). Nothing is transmitted until then.
    StartTls,
    /// Handshake done (EHLO, TLS, AUTH): messages flow from now on.
    Ready,
    /// A command and its reply (only with `Config::transcript`).
    Exchange(Exchange),
    /// The reply to a [`RawCommand`](super::RawCommand).
    RawReply(Verb, Reply),
    /// A recipient's final outcome; each recipient of each message is reported once.
    Recipient(RcptOutcome),
    /// Every recipient of this message has been reported.
    MessageDone(MessageId),
    /// The session lowered its pipelining level; messages the server refused for that reason
    /// are sent again by the session (their outcomes come later, as usual).
    SteppedDown(StepDown),
    /// The server closed the connection right after a positive reply to a final dot or
    /// `BDAT … LAST` while commands written after it were unanswered. Once is chance; a caller
    /// that sees it twice for a host should start new sessions there at
    /// [`PipeliningLevel::WithinMessage`]. Followed by [`Event::Closed`].
    ClosedAfterEndOfData {
        /// The level the session was at.
        level: PipeliningLevel,
        /// The first unanswered command written after the end of data.
        verb: Verb,
    },
    /// The server kept a refused transaction open: the next message's MAIL, pipelined behind
    /// it, got a "bad sequence" reply (Exim 4.96: `503 sender already given` after `503 Valid
    /// RCPT command must precede BDAT`) and its RCPT and data joined that transaction. From
    /// now on RSET precedes every MAIL written behind an unanswered end of data, and the
    /// session caps the RSETs the server could count as non-mail commands. A caller should
    /// start new sessions to that host with `Config::rset_before_mail`.
    KeptTransaction {
        /// The MAIL command as sent (only with `Config::transcript`).
        command: Option<String>,
        /// Its reply.
        reply: Reply,
    },
    /// With `Config::rset_before_mail` (or after [`Event::KeptTransaction`]) every refused
    /// transaction may cost a non-mail command on the server's count (Exim drops the
    /// connection past `smtp_accept_max_nonmail`, 10): this many were refused on this
    /// session, the budget. The session writes no more messages: it finishes what is in
    /// flight and quits; messages not written yet are reported `returned` (sent again on a
    /// new session, no attempt counted).
    RsetBudgetSpent {
        /// Transactions refused on this session.
        refused: u32,
        /// The budget: non-mail commands the session may still cost (the server's limit,
        /// less the handshake's EHLO/HELO/STARTTLS, less one).
        budget: u32,
    },
    /// The session is over: `None` after a clean QUIT.
    Closed(Option<SessionError>),
}

/// Why and how the session lowered its pipelining level.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StepDown {
    /// The level before.
    pub from: PipeliningLevel,
    /// The level from now on.
    pub to: PipeliningLevel,
    /// The command whose reply was the evidence.
    pub verb: Verb,
    /// That command as sent (only with `Config::transcript`).
    pub command: Option<String>,
    /// The reply that refused it.
    pub reply: Reply,
}

/// Round-trip accounting.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct RoundTrips {
    /// Round trips actually waited for: the depth of the chain of replies that later sends
    /// depended on (connection greeting included).
    pub used: u64,
    /// Round trips lock-step SMTP (with DATA) needs for the same exchanges: one per reply,
    /// and two for a `BDAT … LAST` (DATA's 354, then the final dot).
    pub lockstep: u64,
}
