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
//!
//! Not evidence: a "bad sequence" reply to a MAIL while the server may still hold the last
//! transaction open (its end of data, or all its RCPTs, refused after MAIL was accepted).
//! Exim 4.96 keeps that transaction after `503 Valid RCPT command must precede BDAT` and
//! answers the next pipelined MAIL `503 sender already given`; the RCPTs and data written
//! behind it then join the old transaction and are delivered. Such a message is `joined`:
//! its RCPT and end-of-data replies decide its recipients, and from then on RSET precedes
//! every MAIL written behind an unanswered end of data. Only when every one of its RCPTs is
//! refused the same way is the MAIL's reply taken as the after-dot refusal above.

use super::command::Verb;
use super::event::{Event, StepDown};
use super::outcome::MsgState;
use super::pipeline::{PipeliningLevel, refuses_sequence};
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
        if !m.pipelined || m.refused || m.joined {
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

    /// Before a reply to a command of message `seq` is handled: transaction bookkeeping and
    /// the evidence checks.
    pub(super) fn before_msg_reply(
        &mut self,
        seq: u64,
        verb: Verb,
        after_eod: bool,
        command: Option<String>,
        reply: &Reply,
    ) {
        let positive = reply.is_positive();
        if positive && matches!(verb, Verb::Mail | Verb::Body | Verb::Bdat) {
            self.txn_open = false;
        }
        if !refuses_sequence(reply) {
            return;
        }
        if verb == Verb::Mail && self.txn_open {
            let msg = self.index_of(seq).map(|i| &mut self.active[i]);
            if let Some(m) = msg.filter(|m| m.pipelined && !m.refused) {
                m.joined = true;
                m.mail_line = command;
            }
            return;
        }
        self.check_refusal(seq, verb, after_eod, command, reply);
    }

    /// After a reply to RCPT number `rcpt` of message `seq` was handled: settles a `joined`
    /// message once its last RCPT is answered, and in BDAT mode asks for RSET as soon as
    /// every RCPT of a message failed (its `BDAT … LAST` will be refused, and the server may
    /// keep the transaction).
    pub(super) fn after_msg_reply(&mut self, seq: u64, verb: Verb, rcpt: usize) {
        let Some(i) = self.index_of(seq) else { return };
        let m = &self.active[i];
        if verb != Verb::Rcpt || !m.pipelined || m.refused || rcpt + 1 != m.to.len() {
            return;
        }
        let accepted = m.accepted_any();
        if m.joined && accepted {
            if !self.rset_before_mail {
                self.rset_before_mail = true;
                let reply = m.mail.clone().unwrap_or_else(|| Reply::new(503, ""));
                let command = m.mail_line.clone();
                self.events
                    .push_back(Event::KeptTransaction { command, reply });
            }
        } else if m.joined {
            let all_refused = m.rcpt.iter().flatten().all(refuses_sequence);
            if !all_refused {
                return; // the server's own answers: reported as they are
            }
            // Nothing joined the old transaction: the MAIL's reply was the refusal of a
            // command written after the end of data.
            let m = &mut self.active[i];
            m.joined = false;
            let command = m.mail_line.take();
            let Some(reply) = m.mail.clone() else { return };
            self.check_refusal(seq, Verb::Mail, true, command, &reply);
        } else if !accepted && m.mail_ok() && self.bdat_mode() {
            // A RSET already written behind it resets that transaction (see `resets.rs`).
            self.rset_needed |= !(self.rset_before_mail && m.rset_behind);
            self.txn_open = true;
            self.active[i].rset_asked = true;
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
                self.refused_txns += 1;
                // MAIL was accepted: that transaction is open until RSET.
                self.rset_needed |= m.mail_ok();
                self.txn_open |= m.mail_ok();
                self.retry.push_back(m.into_message());
            }
            _ => {}
        }
    }
}
