//! Servers that keep a refused transaction open, and what RSET costs there.
//!
//! Exim 4.96 keeps the transaction after `503 Valid RCPT command must precede BDAT`, so
//! once a session has seen that (`stepdown.rs`: the next MAIL was answered `503 sender
//! already given`), or starts knowing it (`Config::rset_before_mail`), RSET precedes every
//! MAIL written behind an unanswered end of data. Exim also counts non-mail commands (RSET,
//! NOOP, EHLO/HELO, STARTTLS…) per session and drops the connection past
//! `smtp_accept_max_nonmail` (10: `554 Too many nonmail commands`). One RSET after each
//! received message is free; so with a RSET before every MAIL, each refused transaction
//! costs one count, and the 11th drops the session.
//!
//! So such a session caps the RSETs that could be counted. A RSET written behind a
//! transaction that is unanswered or was refused may count; another RSET + MAIL is written
//! only while (transactions refused on this session + unanswered transactions with a RSET
//! already written behind them) stays below the budget: [`NONMAIL_LIMIT`] less the
//! handshake's non-mail commands (EHLO; STARTTLS and the second EHLO; HELO) less one for
//! the RSET that may follow the last refused transaction (8 with a plain EHLO). While
//! unanswered transactions fill it the session waits for their replies (its window shrinks
//! as refusals add up); once refused transactions alone reach it the session writes no
//! more messages, finishes what is in flight, quits ([`Event::RsetBudgetSpent`]) and hands
//! the messages it did not write back `returned`: the caller opens a new session for them.
//! A server never seen keeping a refused transaction open keeps the full window.

use super::event::Event;
use super::outcome::Stage;
use super::session::Session;

/// Exim's default `smtp_accept_max_nonmail`: non-mail commands a session may use.
pub(super) const NONMAIL_LIMIT: u32 = 10;

impl Session {
    /// Refused transactions (and unanswered ones with a RSET behind them) a session may
    /// have before it stops writing messages.
    pub(super) fn rset_budget(&self) -> u32 {
        NONMAIL_LIMIT.saturating_sub(1 + self.nonmail).max(1)
    }

    /// What is used of the budget.
    fn rset_budget_used(&self) -> u32 {
        let behind = self.active.iter().filter(|m| m.rset_behind).count();
        self.refused_txns
            .saturating_add(u32::try_from(behind).unwrap_or(u32::MAX))
    }

    /// BDAT mode: the messages a session asks for at once (its window, at most one more
    /// than the budget while RSET precedes every MAIL).
    pub(super) fn window_target(&self) -> usize {
        let w = self.cfg.window.max(1);
        if self.rset_before_mail {
            w.min(self.rset_budget() as usize + 1)
        } else {
            w
        }
    }

    /// May RSET + MAIL be written behind the end of data in flight now?
    pub(super) fn rset_fits(&self) -> bool {
        self.rset_budget_used() < self.rset_budget()
    }

    /// A RSET is about to be written: it follows the last message written, if that one is
    /// still unanswered.
    pub(super) fn rset_written(&mut self) {
        let last = self.next_seq.checked_sub(1);
        if let Some(m) = self.active.back_mut().filter(|m| Some(m.seq) == last) {
            m.rset_behind = true;
        }
    }

    /// Before anything more is written: true once the budget is spent. Then every message
    /// not written (queued, or refused and waiting to go again) is handed back, no RSET is
    /// written any more, and QUIT follows what is in flight.
    pub(super) fn rset_budget_spent(&mut self) -> bool {
        if !self.budget_spent {
            if !self.rset_before_mail || !self.pipelining() {
                return false;
            }
            let budget = self.rset_budget();
            if self.refused_txns < budget {
                return false;
            }
            self.budget_spent = true;
            self.quit_requested = true;
            self.events.push_back(Event::RsetBudgetSpent {
                refused: self.refused_txns,
                budget,
            });
        }
        self.rset_needed = false;
        let note = format!(
            "not sent: {} transactions refused on this session, each may cost the server's count of non-mail commands; sent on a new session",
            self.refused_txns
        );
        while let Some(msg) = self.retry.pop_front().or_else(|| self.queue.pop_front()) {
            self.return_unsent(msg, Stage::Connect, &note);
        }
        true
    }
}
