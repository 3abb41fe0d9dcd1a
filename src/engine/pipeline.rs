//! Pipelining (RFC 2920): the [`PipeliningLevel`], the in-flight FIFO that matches each
//! reply to its command, and the gating rule that ends a group.
//!
//! MAIL, RCPT, RSET and BDAT chunks may stand anywhere in a group; EHLO, DATA, NOOP, QUIT,
//! STARTTLS and AUTH end it (their reply decides what comes next). Below
//! [`PipeliningLevel::CrossMessage`] nothing is written while an end of data (final dot or
//! `BDAT … LAST`) is unanswered; at [`PipeliningLevel::LockStep`] nothing at all while a
//! reply is awaited.

use std::collections::VecDeque;
use std::fmt;

use super::command::Verb;
use super::reply::Reply;

/// How far commands are pipelined once PIPELINING is advertised. The session starts at
/// `Config::pipelining_level` and only ever steps down, on evidence (see the engine docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub enum PipeliningLevel {
    /// The next envelope rides in the same write as the previous message's final dot or
    /// `BDAT … LAST`: about one round trip per message with DATA, a few per window with BDAT.
    #[default]
    CrossMessage,
    /// Sync at end of data: nothing is written after a final dot or `BDAT … LAST` until its
    /// reply arrived. MAIL, RCPT… and DATA (or `BDAT … LAST`) are still one group: about two
    /// round trips per message with DATA, one with BDAT.
    WithinMessage,
    /// One command per round trip, as without PIPELINING.
    LockStep,
}

impl PipeliningLevel {
    /// Lower-case name, for logs.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::CrossMessage => "cross-message",
            Self::WithinMessage => "within-message",
            Self::LockStep => "lock-step",
        }
    }
}

impl fmt::Display for PipeliningLevel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What an in-flight command waits for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Awaiting {
    Greeting,
    Handshake(Verb),
    Msg {
        seq: u64,
        verb: Verb,
        rcpt: usize,
    },
    /// RSET; `true` when its reply gates the group.
    Rset(bool),
    Raw(Verb),
    Quit,
}

impl Awaiting {
    /// Does a reply to this have to arrive before anything else is sent (RFC 2920 §3.1)?
    pub(super) fn is_gate(self) -> bool {
        match self {
            Self::Msg { verb, .. } | Self::Raw(verb) => verb.ends_group(),
            // RSET gates too: had the server kept the failed transaction, a MAIL pipelined
            // behind a refused RSET would get 503 and its RCPTs would join that transaction.
            Self::Rset(gated) => gated,
            Self::Greeting | Self::Handshake(_) | Self::Quit => true,
        }
    }

    /// A final dot or `BDAT … LAST`: the end of a message's data.
    pub(super) fn is_end_of_data(self) -> bool {
        matches!(
            self,
            Self::Msg {
                verb: Verb::Body | Verb::Bdat,
                ..
            } | Self::Raw(Verb::Body)
        )
    }

    /// The command, for labels (the greeting answers no command: `NOOP`).
    pub(super) fn verb(self) -> Verb {
        match self {
            Self::Greeting => Verb::Noop,
            Self::Handshake(v) | Self::Msg { verb: v, .. } | Self::Raw(v) => v,
            Self::Rset(_) => Verb::Rset,
            Self::Quit => Verb::Quit,
        }
    }

    /// Did the reply mean success for this command?
    pub(super) fn reply_ok(self, r: &Reply) -> bool {
        match self.verb() {
            _ if self == Self::Greeting => r.code == 220,
            Verb::StartTls => r.code == 220,
            Verb::Data => r.code == 354,
            Verb::Auth => r.is_positive() || r.code == 334,
            _ => r.is_positive(),
        }
    }
}

/// A reply that refuses a command for its place in the sequence, not for its content:
/// 503, or an RFC 3463 `5.5.1` (invalid command) with any 5yz code.
pub(super) fn refuses_sequence(r: &Reply) -> bool {
    r.code == 503
        || r.is_permanent()
            && r.enhanced
                .is_some_and(|e| e.class == 5 && e.subject == 5 && e.detail == 1)
}

/// One command whose reply has not arrived.
#[derive(Debug)]
pub(super) struct Pending {
    pub(super) what: Awaiting,
    /// The round trip it went out in: one more than the last round answered when written.
    pub(super) round: u64,
    /// The command as sent (only with the transcript on; secrets redacted).
    pub(super) line: Option<String>,
    /// Written while a final dot / `BDAT … LAST` was unanswered.
    pub(super) after_eod: bool,
}

/// The in-flight FIFO: replies arrive in the order commands were sent (RFC 2920 §3.1).
#[derive(Debug)]
pub(super) struct InFlight {
    fifo: VecDeque<Pending>,
    /// Commands in flight that end a group (a count, so the planner does not rescan).
    gates: usize,
    /// Ends of data in flight.
    eods: usize,
    /// The highest round whose reply has arrived.
    seen: u64,
}

impl InFlight {
    /// A FIFO waiting for the greeting.
    pub(super) fn new() -> Self {
        let mut f = Self {
            fifo: VecDeque::new(),
            gates: 0,
            eods: 0,
            seen: 0,
        };
        f.push(Awaiting::Greeting, None);
        f
    }

    pub(super) fn push(&mut self, what: Awaiting, line: Option<String>) {
        let eod = what.is_end_of_data();
        self.gates += usize::from(what.is_gate());
        let after_eod = self.eods > 0;
        self.eods += usize::from(eod);
        self.fifo.push_back(Pending {
            what,
            round: self.seen + 1,
            line,
            after_eod,
        });
    }

    /// Takes the command the next reply answers.
    pub(super) fn pop(&mut self) -> Option<Pending> {
        let p = self.fifo.pop_front()?;
        self.gates -= usize::from(p.what.is_gate());
        self.eods -= usize::from(p.what.is_end_of_data());
        self.seen = self.seen.max(p.round);
        Some(p)
    }

    pub(super) fn front(&self) -> Option<&Pending> {
        self.fifo.front()
    }

    pub(super) fn len(&self) -> usize {
        self.fifo.len()
    }

    pub(super) fn is_empty(&self) -> bool {
        self.fifo.is_empty()
    }

    /// True when every command in flight is `what`.
    pub(super) fn all(&self, what: Awaiting) -> bool {
        self.fifo.iter().all(|p| p.what == what)
    }

    pub(super) fn clear(&mut self) {
        self.fifo.clear();
        self.gates = 0;
        self.eods = 0;
    }

    /// True while an end of data is unanswered.
    pub(super) fn has_eod(&self) -> bool {
        self.eods > 0
    }

    /// Round trips waited for so far: the depth of the chain of answered replies.
    pub(super) fn rounds(&self) -> u64 {
        self.seen
    }

    /// The gating rule: may another command join the group being written?
    pub(super) fn may_extend(&self, pipelining: bool, level: PipeliningLevel) -> bool {
        debug_assert_eq!(
            self.gates,
            self.fifo.iter().filter(|p| p.what.is_gate()).count()
        );
        let gated = self.gates > 0;
        let lock_step = !pipelining && !self.fifo.is_empty();
        let end_of_data = level >= PipeliningLevel::WithinMessage && self.eods > 0;
        !(gated || lock_step || end_of_data)
    }
}
