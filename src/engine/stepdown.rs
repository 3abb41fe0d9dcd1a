//! Evidence that the server refuses part of pipelining, and what the session does about it:
//! step down a [`PipeliningLevel`] and send the refused message again.
//!
//! - A MAIL written while an end of data (final dot, `BDAT … LAST`) was unanswered, refused
//!   with a "bad sequence" reply: the server refuses commands after the end of data (as some
//!   do since the 2023–24 SMTP smuggling advisories). Down to `WithinMessage`.
//! - A pipelined RCPT refused that way after its MAIL was accepted, or DATA / `BDAT … LAST`
//!   after a RCPT was accepted: the server does not pipeline within a message either. Down
//!   to `LockStep`; the transaction was opened, so RSET goes first.
//!
//! - A gated RSET written while an end of data was unanswered and refused that way: down to
//!   `WithinMessage`, and RSET again.
//!
//! Either way the rest of that transaction's replies are ignored, no recipient of it is
//! reported, and the message goes back to the front of the queue (`Session::retry`).

use super::command::Verb;
use super::event::{Event, StepDown};
use super::outcome::MsgState;
use super::pipeline::PipeliningLevel;
use super::reply::Reply;
use super::session::Session;

impl Session {
    /// Called for a "bad sequence" reply (see [`super::pipeline::refuses_sequence`]) to a
    /// command of message `seq`, before the reply is otherwise handled.
    pub(super) fn check_refusal(
        &mut self,
        seq: u64,
        verb: Verb,
        after_eod: bool,
        command: Option<String>,
        reply: &Reply,
    ) {
        let Some(i) = self.index_of(seq) else { return };
        let m = &self.active[i];
        if !m.pipelined || m.refused {
            return;
        }
        let to = match verb {
            Verb::Mail if after_eod => PipeliningLevel::WithinMessage,
            Verb::Rcpt if m.mail_ok() => PipeliningLevel::LockStep,
            Verb::Data | Verb::Bdat if m.accepted_any() => PipeliningLevel::LockStep,
            _ => return,
        };
        self.active[i].refused = true;
        if self.level < to {
            self.events.push_back(Event::SteppedDown(StepDown {
                from: self.level,
                to,
                verb,
                command,
                reply: reply.clone(),
            }));
            self.level = to;
        }
    }

    /// A gated RSET written while an end of data was unanswered got a "bad sequence" reply:
    /// the same refusal as for a MAIL there. Nothing followed it in that write, so the session
    /// steps down to `WithinMessage` and sends RSET again.
    pub(super) fn rset_refused_after_eod(&mut self, command: Option<String>, reply: Reply) {
        self.rset_needed = true;
        let to = PipeliningLevel::WithinMessage;
        if self.level < to {
            self.events.push_back(Event::SteppedDown(StepDown {
                from: self.level,
                to,
                verb: Verb::Rset,
                command,
                reply,
            }));
            self.level = to;
        }
    }

    /// Replies to a refused message's commands: wait for the last one, then queue it again.
    pub(super) fn on_refused_reply(&mut self, i: usize, verb: Verb, reply: &Reply) {
        match verb {
            Verb::Data if reply.code == 354 => {
                // A server that refused part of the envelope should not say 354; end that
                // data with a lone dot.
                self.active[i].hollow = true;
                self.active[i].state = MsgState::BodyHeld;
            }
            Verb::Data | Verb::Body | Verb::Bdat => {
                if verb == Verb::Bdat {
                    self.committed_octets -= self.active[i].octets;
                }
                let m = self.active.remove(i).expect("index from index_of");
                // MAIL was accepted: that transaction is open until RSET.
                self.rset_needed |= m.mail_ok();
                self.retry.push_back(m.into_message());
            }
            _ => {}
        }
    }
}
