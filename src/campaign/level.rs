//! The pipelining level a run has learned for its host (issue 11).
//!
//! Every session starts at the level the run knows for the host (all connections,
//! reconnects). It only ever goes down, on evidence from a session:
//! [`Event::SteppedDown`](crate::engine::Event::SteppedDown) (the server refused commands for
//! their place in the pipeline) lowers it at once; an
//! [`Event::ClosedAfterEndOfData`](crate::engine::Event::ClosedAfterEndOfData) (the server
//! hung up right after a positive reply to an end of data while commands were pipelined
//! behind it) is counted, and the second one lowers it to
//! [`PipeliningLevel::WithinMessage`]: once is chance. It never goes up during a run; a new
//! run, `--resume`d or not, starts at the level of its engine config
//! ([`crate::engine::Config::pipelining_level`]) and re-learns on its first messages.
//!
//! Learned the same way, without changing the level: a server that keeps a refused
//! transaction open ([`Event::KeptTransaction`](crate::engine::Event::KeptTransaction),
//! Exim). Every later session to the host starts with
//! [`Config::rset_before_mail`](crate::engine::Config::rset_before_mail): RSET before every
//! pipelined MAIL, and a cap on the refused transactions a session risks (the server counts
//! each RSET behind one as a non-mail command and drops the session past its limit).
//! Hosts that never showed it keep the full window.

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};

use crate::driver::Target;
use crate::engine::{PipeliningLevel, StepDown};

/// Why the run lowered the level, or what else a session learned about the host's
/// pipelining (`-v` evidence).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LevelReason {
    /// The server refused a command for its place in the pipeline.
    Refused(StepDown),
    /// The server closed the connection after an end of data while commands written behind
    /// it were unanswered, this many times.
    Dropped {
        /// Drops seen so far.
        drops: u32,
        /// The first unanswered command of the last drop.
        verb: crate::engine::Verb,
    },
    /// The server kept a refused transaction open
    /// ([`Event::KeptTransaction`](crate::engine::Event::KeptTransaction)): RSET goes before
    /// every pipelined MAIL, and sessions cap the refused transactions they risk. The level
    /// stays.
    KeptTransaction {
        /// The MAIL command as sent, when the transcript is on.
        command: Option<String>,
        /// The reply that showed it.
        reply: crate::engine::Reply,
    },
    /// A session stopped writing messages at its RSET budget
    /// ([`Event::RsetBudgetSpent`](crate::engine::Event::RsetBudgetSpent)) and quit; the rest
    /// goes on a new session.
    RsetBudget {
        /// Transactions refused on that session.
        refused: u32,
        /// The budget.
        budget: u32,
    },
}

/// The run lowered the pipelining level it uses for its host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LevelChange {
    /// The host.
    pub target: Target,
    /// The level before.
    pub from: PipeliningLevel,
    /// The level every new session starts at from now on.
    pub to: PipeliningLevel,
    /// The evidence.
    pub reason: LevelReason,
    /// The session that saw it sent with BDAT (for the round trips a message costs).
    pub bdat: bool,
}

impl LevelChange {
    /// "server refused pipelining after end of data: synced at end of data (2 round
    /// trips/message)", for the summary line and the warning.
    pub fn describe(&self) -> String {
        let why = match &self.reason {
            LevelReason::Refused(_) if self.to == PipeliningLevel::LockStep => {
                "server refused pipelining within a message".to_string()
            }
            LevelReason::Refused(_) => "server refused pipelining after end of data".to_string(),
            LevelReason::Dropped { drops, .. } => {
                format!("server closed the connection after end of data ({drops} times)")
            }
            LevelReason::KeptTransaction { .. } | LevelReason::RsetBudget { .. } => {
                "server keeps refused transactions open".to_string()
            }
        };
        format!("{why}: {}", level_text(self.to, self.bdat))
    }
}

/// "synced at end of data (2 round trips/message)", "lock-step (one round trip per
/// command)", "pipelined across messages".
pub fn level_text(level: PipeliningLevel, bdat: bool) -> String {
    match level {
        PipeliningLevel::CrossMessage => "pipelined across messages".into(),
        PipeliningLevel::WithinMessage if bdat => {
            "synced at end of data (1 round trip/message)".into()
        }
        PipeliningLevel::WithinMessage => "synced at end of data (2 round trips/message)".into(),
        PipeliningLevel::LockStep => "lock-step (one round trip per command)".into(),
    }
}

/// Drops after an end of data that lower the level (the first may be chance).
pub const DROPS_TO_STEP_DOWN: u32 = 2;

/// The learned level, shared by the connection tasks.
#[derive(Debug)]
pub(super) struct HostLevel {
    target: Target,
    state: Mutex<State>,
    drops: AtomicU32,
    /// A session saw the server keep a refused transaction open.
    keeps: AtomicBool,
}

#[derive(Debug)]
struct State {
    level: PipeliningLevel,
    last: Option<LevelChange>,
}

impl HostLevel {
    pub(super) fn new(target: Target, start: PipeliningLevel) -> Self {
        Self {
            target,
            state: Mutex::new(State {
                level: start,
                last: None,
            }),
            drops: AtomicU32::new(0),
            keeps: AtomicBool::new(false),
        }
    }

    /// The level a new session starts at.
    pub(super) fn current(&self) -> PipeliningLevel {
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .level
    }

    /// True once a session saw the server keep a refused transaction open: every new
    /// session starts with `Config::rset_before_mail` (RSET before every pipelined MAIL,
    /// within a budget of refused transactions per session).
    pub(super) fn keeps_refused(&self) -> bool {
        self.keeps.load(Ordering::SeqCst)
    }

    /// A session saw the server keep a refused transaction open. True the first time.
    pub(super) fn kept_transaction(&self) -> bool {
        !self.keeps.swap(true, Ordering::SeqCst)
    }

    /// The last lowering, if the run lowered the level.
    pub(super) fn last_change(&self) -> Option<LevelChange> {
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .last
            .clone()
    }

    /// A session stepped down: lowers the host's level to `s.to` if that is lower. Returns
    /// the change when it lowered it (the caller tells the observer, once per level).
    pub(super) fn stepped_down(&self, s: &StepDown, bdat: bool) -> Option<LevelChange> {
        self.lower(s.to, LevelReason::Refused(s.clone()), bdat)
    }

    /// A session ended by a close after an end of data: counts it (the count is returned);
    /// the second lowers the level to `WithinMessage`.
    pub(super) fn dropped(
        &self,
        verb: crate::engine::Verb,
        bdat: bool,
    ) -> (u32, Option<LevelChange>) {
        let drops = self.drops.fetch_add(1, Ordering::SeqCst) + 1;
        if drops < DROPS_TO_STEP_DOWN {
            return (drops, None);
        }
        let reason = LevelReason::Dropped { drops, verb };
        (
            drops,
            self.lower(PipeliningLevel::WithinMessage, reason, bdat),
        )
    }

    fn lower(&self, to: PipeliningLevel, reason: LevelReason, bdat: bool) -> Option<LevelChange> {
        let mut st = self
            .state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if to <= st.level {
            return None;
        }
        let change = LevelChange {
            target: self.target.clone(),
            from: st.level,
            to,
            reason,
            bdat,
        };
        st.level = to;
        st.last = Some(change.clone());
        Some(change)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::{Reply, Verb};

    fn host() -> HostLevel {
        let t = Target::parse("mx.example.net", 25).expect("target");
        HostLevel::new(t, PipeliningLevel::CrossMessage)
    }

    #[test]
    fn a_step_down_lowers_once_and_never_raises() {
        let h = host();
        let s = StepDown {
            from: PipeliningLevel::CrossMessage,
            to: PipeliningLevel::WithinMessage,
            verb: Verb::Mail,
            command: None,
            reply: Reply::new(503, "pipelined after end of data"),
        };
        let c = h.stepped_down(&s, false).expect("lowered");
        assert_eq!(
            c.describe(),
            "server refused pipelining after end of data: synced at end of data (2 round trips/message)"
        );
        assert_eq!(h.stepped_down(&s, false), None, "a second session: no news");
        assert_eq!(h.dropped(Verb::Mail, false).1, None);
        assert_eq!(h.dropped(Verb::Mail, false).1, None, "already there");
        assert_eq!(h.current(), PipeliningLevel::WithinMessage);
    }

    #[test]
    fn a_kept_transaction_is_learned_once_and_leaves_the_level() {
        let h = host();
        assert!(!h.keeps_refused(), "hosts start with the full window");
        assert!(h.kept_transaction(), "the first session that sees it");
        assert!(!h.kept_transaction(), "no news after that");
        assert!(h.keeps_refused());
        assert_eq!(h.current(), PipeliningLevel::CrossMessage);
        assert_eq!(h.last_change(), None);
    }

    #[test]
    fn the_second_drop_lowers_the_level() {
        let h = host();
        assert_eq!(h.dropped(Verb::Mail, true), (1, None), "once is chance");
        assert_eq!(h.current(), PipeliningLevel::CrossMessage);
        let c = h.dropped(Verb::Mail, true).1.expect("twice is evidence");
        assert_eq!(c.to, PipeliningLevel::WithinMessage);
        assert_eq!(
            c.describe(),
            "server closed the connection after end of data (2 times): synced at end of data (1 round trip/message)"
        );
        assert_eq!(h.last_change(), Some(c));
    }
}
