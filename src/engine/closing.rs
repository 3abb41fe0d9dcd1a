//! How a session ends: what each message still in flight or queued is reported as.
//!
//! - **Plain EOF** (the server closed the connection without a reply that says why, or the
//!   socket failed): a message whose final dot / `BDAT … LAST` was written and not answered
//!   is `Unknown` (the server may have taken it); one not committed yet is `Deferred`.
//! - **Closing reply**: the server said 421 (after the handshake), or its last reply
//!   refused (4yz/5yz) a MAIL, RSET, DATA, NOOP… (not RCPT, an end of data or QUIT) and the
//!   connection then closed with nothing more read (Exim: `554 Too many nonmail commands`
//!   to a RSET, `503 Too many syntax or protocol errors` to a MAIL, then it drops the
//!   connection). A refused RCPT does not count: it is an ordinary answer about one
//!   recipient, and the command right behind the last RCPT is the `BDAT … LAST` that a
//!   server may execute (store the message) and then drop before replying, so that EOF is
//!   plain. No end of data ever directly follows a MAIL, RSET, NOOP or refused DATA.
//!   Replies come in the order of the commands (RFC 2920 §3.1), so every command written
//!   before the one the closing reply answered was answered too, and nothing written after
//!   it was executed. Hence: a recipient decided by a reply keeps that outcome (an end of
//!   data answered 250 is `Sent`; a MAIL or RCPT refused by the closing reply itself is
//!   refused by it, so such a message counts as an attempt and every session that returns
//!   messages has also settled one); every other recipient of a message in flight is
//!   `returned` ([`RcptOutcome::returned`](super::RcptOutcome::returned): `Deferred`, sent
//!   again by the caller without counting an attempt), and so is every message not written
//!   yet. A message whose final command is unanswered while the closing reply answers a
//!   later command cannot exist: that reply would have come first. A "joined" message (its
//!   MAIL's refusal did not decide it, see `stepdown.rs`) whose RCPT or data is unanswered
//!   is returned like the rest.
//!
//! An ungated RSET (written in the same write as the next MAIL) that gets a negative reply
//! stops the session from writing; the next reply ends it as before (the server went on:
//! what followed may have joined an open transaction, so committed messages are `Unknown`),
//! an EOF makes the RSET's reply a closing reply.

use super::error::SessionError;
use super::event::Event;
use super::outcome::{Delivery, Message, MsgState, RcptOutcome, Stage};
use super::pipeline::Awaiting;
use super::session::{Phase, Session};

impl Session {
    /// The server closed the connection (see the module docs).
    pub(super) fn on_eof(&mut self) {
        if self.phase == Phase::Closed {
            return;
        }
        let closing = self
            .last_refusal
            .take()
            .filter(|_| self.parser.buffered() == 0);
        let returns = self.messages_pending() > 0;
        if self.phase == Phase::Quitting && self.in_flight.all(Awaiting::Quit) {
            if let Some(reply) = closing.filter(|_| returns) {
                self.closing_reply = true;
                return self.close(Some(SessionError::ServiceClosing(reply)));
            }
            let err = self.quit_error.take();
            return self.close(err);
        }
        if let Some(reply) = closing {
            self.closing_reply = true;
            return self.close(Some(SessionError::ServiceClosing(reply)));
        }
        if let Some(p) = self
            .in_flight
            .front()
            .filter(|p| self.last_reply_eod_ok && p.after_eod)
        {
            self.events.push_back(Event::ClosedAfterEndOfData {
                level: self.level,
                verb: p.what.verb(),
            });
        }
        self.close(Some(SessionError::Closed));
    }

    /// Ends the session with `err` (`None`: a clean QUIT) and reports every message left.
    pub(super) fn close(&mut self, err: Option<SessionError>) {
        if self.phase == Phase::Closed {
            return;
        }
        let unsent_stage = match err.as_ref().map(SessionError::stage) {
            Some(s) if s != Stage::Connect => s,
            _ => self.handshake_stage,
        };
        // Nothing written after the closing reply's command was executed.
        let returning = self.closing_reply && matches!(self.phase, Phase::Ready | Phase::Quitting);
        self.phase = Phase::Closed;
        self.deadline = None;
        self.rset_refused = None;
        let why = err
            .as_ref()
            .map_or_else(|| "session ended".to_string(), ToString::to_string);
        while !self.active.is_empty() {
            // Known rejections stay rejections.
            self.report_envelope(0, None);
            let m = &self.active[0];
            let unreported: Vec<usize> = (0..m.to.len()).filter(|&k| !m.reported[k]).collect();
            // A refused MAIL means the server took nothing of that message.
            let committed = m.state == MsgState::Committed && !m.refused;
            let stage = if committed {
                Stage::Body
            } else if m.mail.is_none() {
                Stage::Mail
            } else if m.state == MsgState::BodyHeld {
                Stage::Data
            } else {
                Stage::Rcpt
            };
            for k in unreported {
                let (delivery, note) = if returning {
                    (
                        Delivery::Deferred,
                        format!("not executed: the server ended the session first ({why})"),
                    )
                } else if committed && !self.closing_reply {
                    (
                        Delivery::Unknown,
                        format!(
                            "delivery unknown: the message was sent but the session ended before the server's reply ({why})"
                        ),
                    )
                } else {
                    (Delivery::Deferred, format!("not delivered: {why}"))
                };
                let o = self.settle(0, k, delivery, stage);
                self.events.push_back(Event::Recipient(RcptOutcome {
                    note: Some(note),
                    returned: returning,
                    ..o
                }));
            }
            self.finish(0);
        }
        while let Some(msg) = self.retry.pop_front().or_else(|| self.queue.pop_front()) {
            let note = format!("not sent: {why}");
            if returning || self.budget_spent {
                self.return_unsent(msg, unsent_stage, &note);
            } else {
                self.fail_unsent(msg, unsent_stage, &note);
            }
        }
        self.in_flight.clear();
        self.raw.clear();
        self.events.push_back(Event::Closed(err));
    }

    /// Hands back a message that was never written (or was refused before the server took
    /// any of it): `Deferred`, `returned`.
    pub(super) fn return_unsent(&mut self, msg: Message, stage: Stage, note: &str) {
        for (index, address) in msg.to.into_iter().enumerate() {
            self.events.push_back(Event::Recipient(RcptOutcome {
                message: msg.id,
                index,
                address,
                delivery: Delivery::Deferred,
                stage,
                reply: None,
                note: Some(note.to_string()),
                returned: true,
            }));
        }
        self.events.push_back(Event::MessageDone(msg.id));
    }
}
